// The page: pick an image, choose options, submit, follow progress, compare before/after, download.
import { ApiError, apiKey, getResult, submitRestore } from "./api.js";
import { setupCompare } from "./compare.js";
import { FIELDS, applyOptions, loadOptions } from "./options.js";
import { clearErrors, describe, showProblem } from "./problems.js";
import { follow } from "./progress.js";
import { remember, rememberThumbnail, renderRecent } from "./recent.js";

const $ = (selector) => document.querySelector(selector);
const form = $("#restore-form");
const FORM_FIELDS = ["api_key", "image", ...FIELDS];
const authOn = document.documentElement.dataset.auth === "on";
const compare = setupCompare($("#compare"));
const inputs = new Map(); // job id -> object URL of the image submitted from this tab (the "before")
let image = null;
let imageUrl = null;
let retryOptions = false; // the discovery endpoint refused us (401): ask again once a key is entered

// ------------------------------------------------------------------------------------------ API key

for (const el of document.querySelectorAll(".auth-only")) el.hidden = !authOn;
$("#api_key").value = apiKey.get();
$("#api_key").addEventListener("change", async (event) => {
  apiKey.set(event.target.value.trim());
  $("#api_key-error").textContent = "";
  event.target.removeAttribute("aria-invalid");
  if (retryOptions) await initOptions();
  refreshRecent();
});

// ------------------------------------------------------------------------------------------ options

async function initOptions() {
  try {
    const { options, source, retry } = await loadOptions();
    applyOptions(form, options);
    retryOptions = Boolean(retry);
    form.dataset.optionsSource = source;
    showFidelity();
  } catch (error) {
    $("#form-error").textContent = `Could not load the options: ${error.message}`;
  }
}
const showFidelity = () => ($("#fidelity-value").textContent = Number($("#fidelity").value).toFixed(2));
$("#fidelity").addEventListener("input", showFidelity);
for (const name of FIELDS) {
  form.elements.namedItem(name)?.addEventListener("input", (event) => (event.target.dataset.dirty = "1"));
}

/** Only what the person changed: unset fields take the server's defaults (which may follow the weights). */
function chosenFields() {
  const fields = {};
  for (const name of FIELDS) {
    const el = form.elements.namedItem(name);
    if (el?.dataset.dirty && el.value !== "") fields[name] = el.value;
  }
  return fields;
}

// ------------------------------------------------------------------------------------------ the image

function useImage(file) {
  if (!file) return;
  image = file;
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = URL.createObjectURL(file);
  const preview = $("#preview");
  preview.onload = () => {
    $("#image-status").textContent =
      `${file.name || "pasted image"}: ${preview.naturalWidth}×${preview.naturalHeight}, ${kb(file.size)}`;
  };
  preview.onerror = () => {
    $("#image-status").textContent = `${file.name || "pasted file"}, ${kb(file.size)} (no preview)`;
  };
  preview.src = imageUrl;
  preview.alt = "The chosen image";
  preview.hidden = false;
  $("#image-status").textContent = `${file.name || "pasted image"}, ${kb(file.size)}`;
  $("#image-error").textContent = "";
  $("#image").removeAttribute("aria-invalid");
}
const kb = (bytes) => (bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`);

$("#image").addEventListener("change", (event) => useImage(event.target.files[0]));
const dropzone = $("#dropzone");
for (const type of ["dragenter", "dragover"]) {
  dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) dropzone.addEventListener(type, () => dropzone.classList.remove("over"));
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  useImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])][0];
  if (file) {
    event.preventDefault();
    useImage(file);
  }
});

// ------------------------------------------------------------------------------------------ progress

function showProgress({ status, progress, via }) {
  if (via) {
    $("#status-box").dataset.via = via;
    return;
  }
  const bar = $("#progress");
  if (progress && typeof progress.fraction === "number") bar.value = progress.fraction;
  if (status === "succeeded") bar.value = 1;
  let text = status ? status[0].toUpperCase() + status.slice(1) : $("#status-text").textContent;
  if (status === "running" && progress?.stage) {
    text = `Running: ${progress.stage.replaceAll("_", " ")}`;
    if (progress.total) text += `, step ${progress.step} of ${progress.total}`;
  } else if (status === "queued") text = "Queued, waiting for a worker…";
  $("#status-text").textContent = text;
}

async function showResult(job, beforeUrl) {
  const blob = await getResult(job.id);
  const url = URL.createObjectURL(blob);
  rememberThumbnail(job.id, url);
  const { width, height } = job.result;
  compare.show(beforeUrl, url, width, height);
  const download = $("#download");
  download.href = url;
  download.download = `${job.id}.${job.params.output_format}`;
  const took = job.timings?.total ? `, ${job.timings.total.toFixed(1)} s` : "";
  $("#result-info").textContent = `${width}×${height} ${job.params.output_format.toUpperCase()}${took} (job ${job.id})`;
}

// ------------------------------------------------------------------------------------------ submit

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form);
  $("#job-error").textContent = "";
  if (authOn) apiKey.set($("#api_key").value.trim());
  if (!image) {
    $("#image-error").textContent = "Choose, drop or paste an image first.";
    $("#image").setAttribute("aria-invalid", "true");
    $("#image").focus();
    return;
  }
  const button = $("#submit");
  button.disabled = true;
  $("#progress").value = 0;
  $("#status-text").textContent = "Uploading…";
  try {
    const job = await submitRestore(image, chosenFields());
    remember(job.id);
    inputs.set(job.id, imageUrl);
    imageUrl = URL.createObjectURL(image); // the job keeps its URL; the form gets a fresh one
    $("#status-box").dataset.job = job.id;
    showProgress(job);
    const done = await follow(job.id, showProgress);
    if (done.status === "succeeded") {
      await showResult(done, inputs.get(job.id));
      $("#status-text").textContent = "Done.";
    } else {
      const why = done.error ? `${done.error.message} (${done.error.code})` : done.status;
      $("#job-error").textContent = `The job ${done.status}: ${why}`;
    }
  } catch (error) {
    $("#status-text").textContent = "Not submitted.";
    if (error instanceof ApiError) showProblem(form, error.problem, FORM_FIELDS);
    else $("#form-error").textContent = `Could not reach the server: ${error.message}`;
  } finally {
    button.disabled = false;
    refreshRecent();
  }
});

// ------------------------------------------------------------------------------------------ recent jobs

async function openJob(job) {
  $("#job-error").textContent = "";
  if (job.status !== "succeeded") {
    $("#status-text").textContent = `Job ${job.id} is ${job.status}.`;
    return;
  }
  try {
    await showResult(job, inputs.get(job.id) || null);
    $("#compare").scrollIntoView({ block: "nearest" });
  } catch (error) {
    $("#job-error").textContent = error instanceof ApiError ? describe(error.problem) : error.message;
  }
}

function refreshRecent() {
  if (authOn && !apiKey.get()) {
    $("#recent-source").textContent = "Enter your API key to see your jobs.";
    return Promise.resolve();
  }
  return renderRecent($("#recent"), $("#recent-source"), openJob).catch((error) => {
    $("#recent-source").textContent = `Could not load recent jobs: ${error.message}`;
  });
}

await initOptions();
refreshRecent();
document.body.dataset.ready = "1";
