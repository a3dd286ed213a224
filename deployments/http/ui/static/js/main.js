// The page's start: read the API's OpenAPI document (its limits shape every control), ask for an API
// key when the service wants one, and wire the four tabs. <body data-ready> marks the page usable.

import { api, apiKey } from "./api.js";
import { setupBatch } from "./batch.js";
import { setupGenerate } from "./generate.js";
import { setupInfer } from "./infer.js";
import { setupModel } from "./model.js";
import { loadOpenApi, needsKey } from "./schema.js";
import { setupTabs } from "./tabs.js";

/** The API key form: shown when the document has the bearer scheme, or when a call gets a 401. */
function setupKey(required) {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const error = document.getElementById("api-key-error");
  const status = document.getElementById("api-key-status");
  const problem = (message) => {
    form.hidden = false;
    status.textContent = "";
    error.textContent = message;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  };
  window.addEventListener("api-key-needed", () => {
    apiKey.set("");  // a refused key is not sent again
    problem("The API refused the request: it needs a valid API key.");
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return problem("Enter a key first.");
    apiKey.set(key);
    error.textContent = "";
    input.removeAttribute("aria-invalid");
    try {
      await api("api/v1/models");  // any /api/v1 call checks the key
      input.value = "";
      status.textContent = "Key accepted.";
    } catch (failure) {
      if (failure.status !== 401) problem(failure.message);  // a 401 has already said so
    }
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    apiKey.set("");
    error.textContent = "";
    status.textContent = "Key forgotten.";
  });
  if (required) {
    form.hidden = false;
    if (apiKey.get()) status.textContent = "A key is set for this tab.";
    else input.focus();
  }
}

async function main() {
  let openapi;
  try {
    openapi = await loadOpenApi();
  } catch (error) {
    document.getElementById("page-error").textContent =
      `The page could not read the API's description (openapi.json): ${error.message}. Reload when the service is up.`;
    return;
  }
  setupKey(needsKey(openapi));
  let model = null;  // the served model's summary, once a call has succeeded
  const ctx = {
    openapi,
    async modelInfo() {
      if (!model) model = await api("api/v1/models").then((r) => r.models[0] || null, () => null);
      return model;
    },
    inputSize: async () => (await ctx.modelInfo())?.input_size?.[0] ?? 64,
  };
  const panel = (name) => document.getElementById(`panel-${name}`);
  const useMap = setupInfer(panel("infer"), ctx);
  let select = null;
  setupGenerate(panel("generate"), { ...ctx, sendToInfer: (map) => { useMap(map); select("infer"); } });
  setupBatch(panel("batch"), ctx);
  const loadModel = setupModel(panel("model"), ctx);
  select = setupTabs(document.querySelector("[role=tablist]"), (name) => name === "model" && loadModel());
  document.body.dataset.ready = "true";
}

main();
