// The form's choices, bounds and defaults: from the discovery endpoint (GET /v1/models) when the server has
// one, otherwise from the upload schema in /openapi.json (always served, generated from the same
// RestoreParams the server validates with), so the page never hard-codes the API's vocabulary.
import { getJSON, getOptional } from "./api.js";

export const FIELDS = [
  "task", "upscale", "fidelity", "steps", "sampler", "seed",
  "cfg_scale", "color_fix", "output_format", "prompt", "negative_prompt",
];

function resolve(spec, schema) {
  // Follow $ref / allOf / anyOf far enough to find enum, bounds and default (nullable fields: the non-null arm).
  if (!schema || typeof schema !== "object") return {};
  if (schema.$ref) {
    const target = schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node?.[key], spec);
    return { ...resolve(spec, target), ...withoutRef(schema) };
  }
  const arms = schema.anyOf || schema.oneOf || schema.allOf;
  if (arms) {
    const merged = Object.assign({}, ...arms.filter((a) => a.type !== "null").map((a) => resolve(spec, a)));
    return { ...merged, ...withoutKeys(schema, ["anyOf", "oneOf", "allOf"]) };
  }
  if (schema.const !== undefined && !schema.enum) return { ...schema, enum: [schema.const] };
  return schema;
}
const withoutKeys = (obj, keys) => Object.fromEntries(Object.entries(obj).filter(([k]) => !keys.includes(k)));
const withoutRef = (obj) => withoutKeys(obj, ["$ref"]);

/** {field: {choices?, min?, max?, default?}} from the OpenAPI document. */
export function fromOpenAPI(spec) {
  const content = spec?.paths?.["/v1/restore"]?.post?.requestBody?.content || {};
  const media = content["multipart/form-data"] || Object.values(content)[0];
  const body = resolve(spec, media?.schema);
  const out = {};
  for (const [name, raw] of Object.entries(body.properties || {})) {
    const s = resolve(spec, raw);
    out[name] = {
      choices: s.enum,
      min: s.minimum ?? s.exclusiveMinimum,
      max: s.maximum ?? s.exclusiveMaximum,
      maxLength: s.maxLength,
      default: s.default,
    };
  }
  return out;
}

/** A list of names from ["a", ...], [{name: "a"}, ...] or {a: ..., ...} (e.g. sampler -> its hyper-parameters). */
function names(list) {
  if (Array.isArray(list)) return list.map((x) => (typeof x === "object" ? x.name ?? x.id : x));
  if (list && typeof list === "object") return Object.keys(list);
  return undefined;
}

function bounds(limit) {
  if (Array.isArray(limit)) return { min: limit[0], max: limit[1] };
  if (limit && typeof limit === "object") {
    return { min: limit.min ?? limit.minimum ?? limit.ge, max: limit.max ?? limit.maximum ?? limit.le };
  }
  return {};
}

const PLURAL = { task: "tasks", sampler: "samplers", color_fix: "color_fixes", output_format: "output_formats" };

/** The discovery document's model entry (the first weights version listed) and its version/preset. */
export function modelOf(doc) {
  const candidates = [doc, ...(doc?.models || doc?.data || doc?.versions || [])];
  return candidates.find((c) => c && (c.tasks || c.samplers || c.defaults)) || {};
}

/** The same shape from a discovery document. Limits and choices may sit on the model or on the document. */
export function fromModels(doc) {
  const model = modelOf(doc);
  const defaults = model.defaults || {};
  const limits = { ...(doc?.limits || doc?.bounds || {}), ...(model.limits || model.bounds || {}) };
  const choices = { ...(doc?.choices || {}), ...(model.choices || {}) };
  const out = {};
  for (const name of FIELDS) {
    const entry = { default: defaults[name], ...bounds(limits[name]) };
    if (PLURAL[name]) entry.choices = names(model[PLURAL[name]]) ?? names(choices[name]);
    out[name] = entry;
  }
  return out;
}

/** Merge: discovery values win where present, the schema fills the rest. */
export function merge(primary, fallback) {
  const out = {};
  for (const name of new Set([...Object.keys(fallback), ...Object.keys(primary)])) {
    const a = primary[name] || {};
    const b = fallback[name] || {};
    out[name] = Object.fromEntries(
      [...new Set([...Object.keys(a), ...Object.keys(b)])].map((k) => [k, a[k] ?? b[k]]),
    );
  }
  return out;
}

/** Load the vocabulary; `source` says where it came from (shown on the page, useful in tests). */
export async function loadOptions() {
  const spec = await getJSON("/openapi.json");
  const schema = fromOpenAPI(spec);
  let models = null;
  try {
    models = await getOptional("/v1/models");
  } catch (error) {
    // e.g. 401 before a key is entered: the schema has everything the form needs; retry once there is a key
    return { options: schema, source: "openapi", retry: error.status === 401 };
  }
  if (!models) return { options: schema, source: "openapi", retry: false };
  const { version = null, preset = null } = modelOf(models);
  return { options: merge(fromModels(models), schema), source: "models", model: { version, preset } };
}

/**
 * Fill selects and bounds; set each field the person has not touched to its default. A field that has focus
 * counts as touched: options reload when a key is entered, and a default written into a field mid-edit would
 * merge with what is being typed ("50" + "2" -> "502").
 */
export function applyOptions(form, options) {
  for (const name of FIELDS) {
    const el = form.elements.namedItem(name);
    const o = options[name];
    if (!el || !o) continue;
    const kept = el.dataset.dirty || el === document.activeElement;
    if (el.tagName === "SELECT") {
      const chosen = el.value;
      el.replaceChildren(...(o.choices || []).map((c) => new Option(c, c)));
      if (kept && (o.choices || []).includes(chosen)) el.value = chosen;
    } else {
      if (o.min !== undefined) el.min = o.min;
      if (o.max !== undefined) el.max = o.max;
      if (o.maxLength !== undefined) el.maxLength = o.maxLength;
    }
    if (!kept && o.default !== undefined && o.default !== null) el.value = o.default;
  }
}
