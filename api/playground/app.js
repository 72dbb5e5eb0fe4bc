// The playground's controller: wires the key, the forms, the job's live progress and the gallery.

import { ApiError, callApi, followEvents, savedKey, saveKey } from "./api.js";
import { applyModel, clearErrors, fillParams, randomSeed, readParams, showCatalog, showError } from "./form.js";
import { addEntry, loadEntries, readJob, removeEntry, renderEntry } from "./gallery.js";
import { MaskEditor, readAsBase64 } from "./mask.js";

const $ = (selector) => document.querySelector(selector);
const form = $("#generate-form");
const upscaleForm = $("#upscale-form");
// lookups: each gallery job as last read ({job} | {expired} | {problem}), by id.
// stream: the AbortController of the event stream the progress panel follows.
const state = { models: [], running: null, stream: null, lookups: new Map() };
const mask = new MaskEditor({
  imageCanvas: $("#init-canvas"), maskCanvas: $("#mask-canvas"), brush: $("#brush"), eraser: $("#eraser"),
});

function setKeyStatus(text) {
  $("#key-status").textContent = text;
}

/** Read the catalog with the saved key; fill the forms and the gallery. */
async function loadCatalog() {
  if (!savedKey()) {
    setKeyStatus("Paste an API key to start.");
    return;
  }
  try {
    const [models, styles] = await Promise.all([callApi("GET", "/v1/models"), callApi("GET", "/v1/styles")]);
    state.models = models.data;
    showCatalog(form, upscaleForm, state.models, styles.data);
    chosenModelChanged();
    setKeyStatus("Key saved in this browser.");
    await refreshGallery();
  } catch (error) {
    setKeyStatus(error instanceof ApiError ? `${error.message}` : String(error));
  }
}

function chosenModelChanged() {
  const model = state.models.find((candidate) => candidate.id === form.elements.model.value);
  if (model) applyModel(form, model);
}

function initImageChanged(hasImage) {
  $("#mask-tools").hidden = !hasImage;
  // The output takes the init image's size: width and height are not sent (the API refuses them).
  for (const name of ["width", "height"]) form.elements[name].disabled = hasImage;
  form.elements.image_strength.disabled = !hasImage;
}

/** Show ``job`` (final) in the result panel and in the gallery. */
function showResult(job) {
  state.lookups.set(job.id, { job });
  const entry = loadEntries().find((candidate) => candidate.id === job.id);
  $("#result").replaceChildren(...(entry ? [renderEntry(entry, { job }, entryActions)] : []));
  showGallery();
}

function onJobEvent(event) {
  const status = $("#job-status");
  if (event.type === "queued") status.textContent = "Queued…";
  else if (event.type === "started") status.textContent = "Running…";
  else if (event.type === "progress") {
    const { step, total_steps: total } = event.data;
    $("#progress").value = step / total;
    status.textContent = `Step ${step} of ${total}`;
  } else if (event.type === "preview") {
    const preview = $("#preview");
    preview.src = `data:image/jpeg;base64,${event.data.jpeg}`;
    preview.hidden = false;
  }
}

/** Follow a submitted job to its end, with its progress, previews and a cancel button. A newer
 * submit takes the panel over: the older job's stream is closed (the job itself runs on). */
async function runJob(job) {
  state.stream?.abort();
  const stream = (state.stream = new AbortController());
  state.running = job.id;
  $("#progress-panel").hidden = false;
  $("#progress").value = 0;
  $("#preview").hidden = true;
  $("#job-status").textContent = "Queued…";
  $("#cancel").disabled = false;
  try {
    const ended = (await followEvents(job.id, onJobEvent, stream.signal)).data;
    if (ended.status === "succeeded") $("#progress").value = 1;
    $("#job-status").textContent = ended.error ? `${ended.status}: ${ended.error.message}` : ended.status;
    showResult(ended);
  } catch (error) {
    if (error.name !== "AbortError") $("#job-status").textContent = `Lost the job's events: ${error.message}`;
  } finally {
    if (state.stream === stream) {
      state.running = null;
      $("#cancel").disabled = true;
    }
  }
}

async function cancelJob() {
  if (!state.running) return;
  $("#cancel").disabled = true;
  try {
    await callApi("POST", `/v1/jobs/${encodeURIComponent(state.running)}/cancel`);
  } catch (error) {
    $("#job-status").textContent = error.message; // e.g. job_finished: it ended meanwhile
  }
}

/** Submit to ``kind``'s route; on an error answer show it on ``target`` and return null. */
async function submit(kind, target, params, images) {
  try {
    const job = await callApi("POST", `/v1/${kind}`, { ...params, ...images, preview: kind === "generate" ? true : undefined });
    addEntry(job, kind, params, Object.keys(images));
    state.lookups.set(job.id, { job });
    showGallery();
    return job;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(target, error);
    return null;
  }
}

/** Clear what the previous submit showed: its errors on ``target`` and its result. */
function startSubmit(event, target) {
  event.preventDefault();
  clearErrors(target);
  $("#result").replaceChildren();
}

async function generate(event) {
  startSubmit(event, form);
  const params = readParams(form);
  const images = {};
  if (mask.hasImage()) {
    images.init_image = mask.initBase64;
    if (mask.isPainted()) {
      params.mask_source = "MASK_IMAGE_WHITE";
      images.mask_image = mask.maskBase64();
    }
  }
  const job = await submit("generate", form, params, images);
  if (job) await runJob(job);
}

async function upscale(event) {
  startSubmit(event, upscaleForm);
  const file = upscaleForm.elements.image.files[0];
  const params = { model: upscaleForm.elements.model.value };
  if (upscaleForm.elements.width.value !== "") params.width = Number(upscaleForm.elements.width.value);
  const images = file ? { image: await readAsBase64(file) } : {};
  const job = await submit("upscale", upscaleForm, params, images);
  if (job) await runJob(job);
}

const entryActions = {
  onReuse(entry, job) {
    showTab("generate");
    fillParams(form, entry.params);
    // The seed the service reported reproduces the image, also where the request said 0 (random).
    const seed = job?.images?.[0]?.seed;
    if (seed !== undefined) form.elements.seed.value = seed;
    form.scrollIntoView({ behavior: "smooth" });
  },
  onRemove(entry) {
    removeEntry(entry.id);
    state.lookups.delete(entry.id);
    showGallery();
  },
};

/** Show the gallery as last read. */
function showGallery() {
  const unread = { problem: "enter the API key" };
  const cards = loadEntries().map((entry) => renderEntry(entry, state.lookups.get(entry.id) || unread, entryActions));
  $("#gallery").replaceChildren(...cards);
}

// Gallery jobs read at once: a full gallery (50) takes a few of the key's requests at a time, not
// a burst of its rate limit.
const GALLERY_READS_AT_ONCE = 4;

/** Read every gallery job again (fresh image URLs), then show them. */
async function refreshGallery() {
  const entries = loadEntries();
  for (let start = 0; start < entries.length; start += GALLERY_READS_AT_ONCE) {
    const batch = entries.slice(start, start + GALLERY_READS_AT_ONCE);
    const lookups = await Promise.all(batch.map(readJob));
    batch.forEach((entry, index) => state.lookups.set(entry.id, lookups[index]));
  }
  showGallery();
}

function showTab(name) {
  for (const [tab, panel] of [["generate", form], ["upscale", upscaleForm]]) {
    panel.hidden = tab !== name;
    $(`#tab-${tab}`).setAttribute("aria-selected", String(tab === name));
  }
}

function wire() {
  $("#api-key").value = savedKey();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey($("#api-key").value.trim());
    loadCatalog();
  });
  $("#forget-key").addEventListener("click", () => {
    saveKey("");
    $("#api-key").value = "";
    setKeyStatus("Key forgotten.");
  });
  $("#tab-generate").addEventListener("click", () => showTab("generate"));
  $("#tab-upscale").addEventListener("click", () => showTab("upscale"));
  form.elements.model.addEventListener("change", chosenModelChanged);
  $("#dice").addEventListener("click", () => (form.elements.seed.value = randomSeed()));
  form.elements.init_image.addEventListener("change", async () => {
    const file = form.elements.init_image.files[0];
    const slot = form.querySelector('[data-error-for="init_image"]');
    slot.textContent = "";
    mask.unload();
    try {
      if (file) await mask.load(file);
    } catch {
      slot.textContent = "This file is not an image this browser can read.";
    }
    initImageChanged(mask.hasImage());
  });
  $("#clear-mask").addEventListener("click", () => mask.clear());
  $("#remove-init").addEventListener("click", () => {
    form.elements.init_image.value = "";
    mask.unload();
    initImageChanged(false);
  });
  $("#cancel").addEventListener("click", cancelJob);
  form.addEventListener("submit", generate);
  upscaleForm.addEventListener("submit", upscale);
}

wire();
showGallery();
loadCatalog();
