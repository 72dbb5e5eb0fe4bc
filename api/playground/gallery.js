// This browser's results. localStorage keeps each job's id and parameters, not its images:
// image URLs are presigned and expire, so each job is read again (GET /v1/jobs/{id}) for fresh
// ones when the gallery is shown. A job past its retention reads 404: its entry stays, marked
// expired, so its parameters can still be reused.

import { ApiError, callApi } from "./api.js";
import { curlSnippet, pythonSnippet } from "./snippets.js";

const STORAGE = "latentq.gallery";
const MAX_ENTRIES = 50; // localStorage is a few MB for the whole origin

export function loadEntries() {
  try {
    const entries = JSON.parse(localStorage.getItem(STORAGE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch {
    return []; // a corrupt store is dropped rather than breaking the page
  }
}

function storeEntries(entries) {
  localStorage.setItem(STORAGE, JSON.stringify(entries.slice(0, MAX_ENTRIES)));
}

/** Record a submitted job: ``kind`` generate|upscale, its ``params`` and which image fields it sent. */
export function addEntry(job, kind, params, imageFields) {
  const entry = { id: job.id, kind, params, imageFields, created_at: job.created_at };
  storeEntries([entry, ...loadEntries().filter((other) => other.id !== job.id)]);
  return entry;
}

export function removeEntry(id) {
  storeEntries(loadEntries().filter((entry) => entry.id !== id));
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function button(label, action) {
  const node = element("button", { type: "button" }, label);
  node.addEventListener("click", action);
  return node;
}

/** Put ``text`` on the clipboard. navigator.clipboard exists on secure origins only (https,
 * localhost); a service reached over plain http on its network copies through a selected
 * textarea instead. */
async function writeClipboard(text) {
  if (navigator.clipboard) return navigator.clipboard.writeText(text);
  const area = element("textarea", { readonly: "", class: "offscreen" }, text);
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy");
}

async function copy(text, node) {
  await writeClipboard(text);
  const label = node.textContent;
  node.textContent = "Copied";
  setTimeout(() => (node.textContent = label), 1200);
}

function describe(entry, job) {
  const params = entry.params;
  const seeds = job?.images?.map((image) => image.seed).join(", ");
  const size = job?.images?.[0] ? `${job.images[0].width}×${job.images[0].height}` : "";
  const parts = [params.model, size, params.steps && `${params.steps} steps`, params.sampler,
    params.cfg_scale !== undefined && `cfg ${params.cfg_scale}`, seeds && `seed ${seeds}`,
    params.style_preset, entry.imageFields.includes("mask_image") ? "inpainting" : "",
    entry.imageFields.includes("init_image") ? "image-to-image" : ""];
  return parts.filter(Boolean).join(" · ");
}

function imagesOf(entry, job) {
  const figure = element("div", { class: "entry-images" });
  if (!job) return figure;
  job.images.forEach((image, index) => {
    // A presigned URL is on the S3 endpoint's origin, where `download` is ignored: the link opens
    // the image, with no referrer, for the browser's own save.
    const link = element("a", { href: image.url, download: `${job.id}-${index}`, target: "_blank", rel: "noopener" });
    link.append(element("img", { src: image.url, alt: entry.params.prompt || "result", width: image.width, height: image.height }));
    figure.append(link);
  });
  return figure;
}

function statusOf(lookup) {
  if (lookup.job) return lookup.job.error ? `${lookup.job.status}: ${lookup.job.error.message}` : lookup.job.status;
  return lookup.expired ? "expired" : `not loaded: ${lookup.problem}`;
}

/** One gallery card: the job's images and parameters, with its actions. ``lookup``: readJob's. */
export function renderEntry(entry, lookup, { onReuse, onRemove }) {
  const job = lookup.job;
  const card = element("article", { class: "entry", "data-job-id": entry.id });
  const status = job ? job.status : lookup.expired ? "expired" : "unknown";
  card.append(imagesOf(entry, job));
  const caption = element("div", { class: "entry-caption" });
  caption.append(element("p", { class: "entry-prompt" }, entry.params.prompt || `upscale to ${entry.params.width || "2×"}`));
  caption.append(element("p", { class: "entry-params" }, describe(entry, job)));
  caption.append(element("p", { class: `entry-status status-${status}` }, statusOf(lookup)));
  const actions = element("div", { class: "entry-actions" });
  if (entry.kind === "generate") actions.append(button("Reuse these parameters", () => onReuse(entry, job)));
  job?.images?.forEach((image, index) => {
    actions.append(element("a", { class: "button", href: image.url, download: `${job.id}-${index}`, target: "_blank", rel: "noopener" }, `Download ${index + 1}`));
  });
  const curl = button("Copy as curl", () => copy(curlSnippet(entry.kind, entry.params, entry.imageFields), curl));
  const python = button("Copy as Python", () => copy(pythonSnippet(entry.kind, entry.params, entry.imageFields), python));
  actions.append(curl, python, button("Remove", () => onRemove(entry)));
  caption.append(actions);
  card.append(caption);
  return card;
}

/** Read ``entry``'s job again for fresh image URLs: {job}, {expired} once it is gone (404), or
 * {problem} (the key is missing, the rate limit is hit, ...), so one failure spares the others. */
export async function readJob(entry) {
  try {
    return { job: await callApi("GET", `/v1/jobs/${encodeURIComponent(entry.id)}`) };
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return { expired: true };
    return { problem: error.message };
  }
}
