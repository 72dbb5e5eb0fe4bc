// The generate and upscale forms: choices from the API's catalog (/v1/models, /v1/styles),
// requests read from the inputs, and the API's errors shown beside the input they name.

const DRAWING_TASKS = ["text-to-image", "image-to-image", "masking"];
const INTEGER_FIELDS = ["width", "height", "steps", "samples", "seed"];
const NUMBER_FIELDS = ["cfg_scale", "image_strength"];
const TEXT_FIELDS = ["prompt", "negative_prompt", "model", "sampler", "style_preset"];
// The largest seed the API takes (2^32 - 1); 0 means "the service picks one".
const MAX_SEED = 4294967295;

function option(value, label = value) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label;
  return element;
}

function fillSelect(select, options) {
  select.replaceChildren(...options);
}

/** Fill ``form``'s model choices (drawing models) and ``upscaleForm``'s (upscalers). */
export function showCatalog(form, upscaleForm, models, styles) {
  const drawing = models.filter((model) => model.tasks.some((task) => DRAWING_TASKS.includes(task)));
  const upscalers = models.filter((model) => model.tasks.includes("upscale"));
  const label = (model) => (model.tasks.includes("text-to-image") ? model.id : `${model.id} (${model.tasks.join(", ")})`);
  fillSelect(form.elements.model, drawing.map((model) => option(model.id, label(model))));
  const chosen = drawing.find((model) => model.default) || drawing[0];
  if (chosen) form.elements.model.value = chosen.id;
  fillSelect(upscaleForm.elements.model, upscalers.map((model) => option(model.id)));
  fillSelect(form.elements.style_preset, [option("", "none"), ...styles.map((style) => option(style.name))]);
}

/** Set ``form``'s sampler choices, size limits and default values from ``model``'s. */
export function applyModel(form, model) {
  const { limits, defaults } = model;
  fillSelect(form.elements.sampler, model.samplers.map((name) => option(name)));
  for (const side of ["width", "height"]) {
    const input = form.elements[side];
    input.min = limits.min_side;
    input.max = limits.max_side;
    input.step = limits.multiple;
    input.value = defaults[side];
  }
  form.elements.steps.value = defaults.steps;
  form.elements.cfg_scale.value = defaults.cfg_scale;
  form.elements.sampler.value = defaults.sampler;
  // A model without negative prompts (FLUX) refuses one: the input is off, and not sent.
  form.elements.negative_prompt.disabled = model.takes_negative_prompt === false;
}

export function randomSeed() {
  return 1 + Math.floor(Math.random() * MAX_SEED);
}

/** The request body ``form`` describes, without images: empty inputs are left to the model's defaults. */
export function readParams(form) {
  const params = {};
  for (const name of TEXT_FIELDS) {
    if (form.elements[name].disabled) continue;
    const value = form.elements[name].value.trim();
    if (value) params[name] = value;
  }
  for (const name of [...INTEGER_FIELDS, ...NUMBER_FIELDS]) {
    const input = form.elements[name];
    // Sent as typed (an out-of-range or fractional value too): the API says what is wrong with it.
    if (input.value !== "" && !input.disabled) params[name] = Number(input.value);
  }
  return params;
}

/** Put ``params`` (a gallery entry's) back into ``form``; the model's change handler runs first. */
export function fillParams(form, params) {
  if (params.model) {
    form.elements.model.value = params.model;
    form.elements.model.dispatchEvent(new Event("change"));
  }
  for (const name of [...TEXT_FIELDS, ...INTEGER_FIELDS, ...NUMBER_FIELDS]) {
    if (name !== "model" && params[name] !== undefined) form.elements[name].value = params[name];
  }
  for (const name of ["negative_prompt", "style_preset"]) {
    if (params[name] === undefined) form.elements[name].value = "";
  }
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const general = form.querySelector(".form-error");
  general.textContent = "";
  general.hidden = true;
}

/** Show ``error`` (an ApiError) beside each input it names; what names no input goes on top. */
export function showError(form, error) {
  clearErrors(form);
  const problems = error.errors.length ? error.errors : [{ field: error.field, message: error.message }];
  const unplaced = [];
  for (const problem of problems) {
    const slot = problem.field && form.querySelector(`[data-error-for="${CSS.escape(problem.field)}"]`);
    if (!slot) {
      unplaced.push(problem.message);
      continue;
    }
    slot.textContent = problem.message;
    form.elements[problem.field]?.setAttribute("aria-invalid", "true");
  }
  if (unplaced.length) {
    const general = form.querySelector(".form-error");
    general.textContent = unplaced.join(" ");
    general.hidden = false;
  }
}
