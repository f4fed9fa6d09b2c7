// problem+json -> plain words next to the field it concerns (the API's `errors[].loc` names the field).
const FIELD_BY_CODE = {
  unauthorized: "api_key",
  invalid_image: "image",
  image_too_large: "image",
  unsupported_media_type: "image",
  payload_too_large: "image",
};

/** One sentence a person can read: "Missing or invalid API key (401): invalid API key." */
export function describe(problem) {
  const title = problem.title || "Error";
  const detail = problem.detail && problem.detail !== title ? `: ${problem.detail}` : "";
  return `${title} (${problem.status})${detail}`;
}

/** [[fieldName|null, message], ...] for a problem document, given the names of the form's fields. */
export function placeProblem(problem, fieldNames) {
  const placed = [];
  for (const entry of problem.errors || []) {
    const loc = Array.isArray(entry.loc) ? entry.loc : [entry.loc];
    const field = [...loc].reverse().find((part) => fieldNames.includes(String(part)));
    if (field !== undefined) placed.push([String(field), entry.msg || entry.message || describe(problem)]);
  }
  if (placed.length) return placed;
  const byCode = FIELD_BY_CODE[problem.code] || (problem.status === 401 ? "api_key" : null);
  return [[byCode, describe(problem)]];
}

export function clearErrors(root) {
  for (const el of root.querySelectorAll(".error")) el.textContent = "";
  for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Write each message into `#<field>-error` (or `#form-error`), mark the field invalid, focus the first. */
export function showProblem(root, problem, fieldNames) {
  let first = null;
  for (const [field, message] of placeProblem(problem, fieldNames)) {
    const slot = root.querySelector(field ? `#${field}-error` : "#form-error") || root.querySelector("#form-error");
    slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
    const input = field && root.querySelector(`#${field}`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first ??= input;
    }
  }
  first?.focus();
}
