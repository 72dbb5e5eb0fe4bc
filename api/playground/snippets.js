// "Copy as curl" and "Copy as Python": the request a gallery entry made, as a command to rerun.
// Images are not kept in the gallery (localStorage is small), so snippets read them from files
// named after their field (init_image -> init.png; the SDK takes a path and sends it as base64);
// the key comes from $LATENTQ_API_KEY, never from the page.

const IMAGE_FILES = { init_image: "init.png", mask_image: "mask.png", image: "image.png" };
const PATHS = { generate: "/v1/generate", upscale: "/v1/upscale" };

function placeholder(field) {
  return `@@${field}@@`;
}

function withPlaceholders(params, imageFields) {
  const shown = { ...params };
  for (const field of imageFields) shown[field] = placeholder(field);
  return shown;
}

/** A curl command that submits ``params`` (plus ``imageFields`` read from files) to ``kind``'s route. */
export function curlSnippet(kind, params, imageFields = []) {
  let json = JSON.stringify(withPlaceholders(params, imageFields), null, 2).replaceAll("'", "'\\''");
  for (const field of imageFields) {
    json = json.replace(`"${placeholder(field)}"`, `"'"$(base64 -w0 ${IMAGE_FILES[field]})"'"`);
  }
  return [
    `curl -sS -X POST '${location.origin}${PATHS[kind]}' \\`,
    `  -H "Authorization: Bearer $LATENTQ_API_KEY" \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  -d '${json}'`,
  ].join("\n");
}

function pythonValue(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null) return "None";
  return JSON.stringify(value); // strings and numbers: JSON's spelling is Python's
}

/** Python with the latentq SDK that runs the same job and saves its images. */
export function pythonSnippet(kind, params, imageFields = []) {
  const args = Object.entries(params).map(([name, value]) => `    ${name}=${pythonValue(value)},`);
  for (const field of imageFields) args.push(`    ${field}=${JSON.stringify(IMAGE_FILES[field])},`);
  return [
    "import os\n\nfrom latentq_client import Client\n",
    `client = Client(${JSON.stringify(location.origin)}, api_key=os.environ["LATENTQ_API_KEY"])`,
    `job = client.${kind}(`,
    ...args,
    ")",
    'job.save("out/")',
  ].join("\n");
}
