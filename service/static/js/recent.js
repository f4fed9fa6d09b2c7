// The caller's recent jobs with thumbnails: from GET /v1/jobs when the server lists jobs, otherwise the jobs
// this browser tab submitted (kept in sessionStorage).
import { getJob, getOptional, getResult } from "./api.js";

const STORE = "diffbir.recentJobs";
const LIMIT = 12;
const thumbs = new Map(); // job id -> object URL, so re-rendering does not fetch results again

export function remember(id) {
  const ids = [id, ...known().filter((x) => x !== id)].slice(0, LIMIT);
  sessionStorage.setItem(STORE, JSON.stringify(ids));
}

function known() {
  try {
    const ids = JSON.parse(sessionStorage.getItem(STORE) || "[]");
    return Array.isArray(ids) ? ids.filter((x) => typeof x === "string") : [];
  } catch {
    return [];
  }
}

function listOf(doc) {
  const list = Array.isArray(doc) ? doc : doc?.jobs || doc?.data || doc?.items || doc?.results;
  return Array.isArray(list) ? list : null;
}

/** [{id, status, ...job}] newest first, and where the list came from ("server" or "browser"). */
export async function loadRecent() {
  let listed = null;
  try {
    listed = listOf(await getOptional(`/v1/jobs?limit=${LIMIT}`));
  } catch {
    listed = null; // e.g. 401 without a key: fall back to what this tab knows
  }
  if (listed) return { jobs: listed.slice(0, LIMIT), source: "server" };
  const jobs = [];
  for (const id of known()) {
    try {
      jobs.push(await getJob(id));
    } catch {
      /* expired, or another key's job: leave it out */
    }
  }
  return { jobs, source: "browser" };
}

export async function thumbnail(job) {
  if (job.status !== "succeeded") return null;
  if (!thumbs.has(job.id)) thumbs.set(job.id, URL.createObjectURL(await getResult(job.id)));
  return thumbs.get(job.id);
}

export function rememberThumbnail(id, url) {
  thumbs.set(id, url);
}

/** Render the list; `onOpen(job)` runs when a person picks an entry. */
export async function renderRecent(list, sourceEl, onOpen) {
  const { jobs, source } = await loadRecent();
  sourceEl.textContent = jobs.length
    ? source === "server"
      ? "Your latest jobs on this server."
      : "Jobs submitted from this browser tab."
    : "No jobs yet.";
  const items = await Promise.all(
    jobs.map(async (job) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      let url = null;
      try {
        url = await thumbnail(job);
      } catch {
        url = null;
      }
      if (url) {
        const img = document.createElement("img");
        img.src = url;
        img.alt = "";
        button.append(img);
      } else {
        const empty = document.createElement("span");
        empty.className = "thumb-empty";
        empty.textContent = job.status;
        button.append(empty);
      }
      const meta = document.createElement("span");
      meta.className = "meta";
      const when = job.created_at ? new Date(job.created_at).toLocaleTimeString() : "";
      meta.textContent = `${job.params?.task ?? ""} ${job.status} ${when}`.trim();
      button.append(meta);
      button.setAttribute("aria-label", `Job ${job.id}, ${job.status}${when ? `, ${when}` : ""}`);
      button.addEventListener("click", () => onOpen(job));
      li.append(button);
      return li;
    }),
  );
  list.replaceChildren(...items);
}
