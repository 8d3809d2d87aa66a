// The playground: completions at each pause as an editor plugin asks for them (debounced, the one in
// flight cancelled at the next keystroke), shown as ghost text; the server's numbers beside them.
import { apiKey, describe, getJSON, Refused, setApiKey } from "./api.js";
import { streamCompletion, timings } from "./completion.js";
import { GhostEditor } from "./editor.js";
import { MetricsView } from "./metrics.js";

const DEBOUNCE_MS = 250; // about what editor plugins wait after the last keystroke
const METRICS_EVERY_MS = 2000;

const $ = (id) => document.getElementById(id);
const ui = {
  editorRoot: $("editor"),
  model: $("model"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  keyField: $("key-field"),
  key: $("api-key"),
  fimNote: $("fim-note"),
  status: $("status"),
  ttft: $("ttft"),
  rate: $("rate"),
  cached: $("cached"),
};

let keysRequired = false;
let cards = new Map(); // model id -> its /v1/models entry
let inflight = null; // the AbortController of the completion in flight
let timer = null;
let metrics = null; // the /metrics view, once the page knows whether it needs a key
let refusedKey = null; // the key the server refused last: not sent again until another is given

function say(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function state(name) {
  ui.editorRoot.dataset.state = name;
}

// the completion in flight, if any, aborted (the server sees its client go and stops generating)
function cancel() {
  clearTimeout(timer);
  if (!inflight) return false;
  inflight.abort();
  inflight = null;
  return true;
}

const editor = new GhostEditor(ui.editorRoot, {
  onEdit() {
    state(cancel() ? "cancelled" : "typing");
    timer = setTimeout(complete, DEBOUNCE_MS);
  },
  onDismiss(why) {
    cancel();
    state("dismissed");
    say(why);
  },
});

function numberOf(input, fallback) {
  const value = Number(input.value);
  return Number.isFinite(value) && input.value !== "" ? value : fallback;
}

async function complete() {
  const model = ui.model.value;
  if (!model) {
    say(keysRequired && !apiKey() ? "This server needs an API key: enter it above." : "No model to ask.", true);
    return;
  }
  if (editor.hasSelection || (!editor.prefix && !editor.suffix)) return;
  const body = {
    model,
    prompt: editor.prefix,
    max_tokens: Math.round(numberOf(ui.maxTokens, 64)),
    temperature: numberOf(ui.temperature, 0),
  };
  const card = cards.get(model);
  if (card && card.fim) body.suffix = editor.suffix; // the code after the cursor, where the model fills in the middle
  const controller = new AbortController();
  inflight = controller;
  editor.startGhost();
  state("waiting");
  ui.editorRoot.dataset.requests = String(Number(ui.editorRoot.dataset.requests) + 1);
  say("asking...");
  try {
    const result = await streamCompletion(body, controller.signal, (text) => {
      if (inflight !== controller) return;
      state("streaming");
      editor.appendGhost(text);
    });
    if (inflight !== controller) return;
    inflight = null;
    show(timings(result), result.finish);
    state("done");
    metrics.refresh();
  } catch (error) {
    if (controller.signal.aborted) return; // typing on, Escape, the cursor moved: said where it happened
    if (inflight === controller) inflight = null;
    editor.clearGhost();
    state("error");
    say(describe(error, "The request failed"), true);
  }
}

function show(t, finish) {
  ui.ttft.textContent = t.ttftMs === null ? "-" : `${t.ttftMs.toFixed(0)} ms`;
  ui.rate.textContent = t.tokensPerSecond === null ? "-" : t.tokensPerSecond.toFixed(1);
  ui.cached.textContent = t.cachedTokens === null ? "-" : `${t.cachedTokens} of ${t.promptTokens}`;
  say(`${t.completionTokens} tokens, finished: ${finish || "?"}` + (editor.ghost ? " - Tab accepts, Esc dismisses" : ""));
}

async function loadModels() {
  ui.model.replaceChildren();
  cards = new Map();
  if (keysRequired && !apiKey()) {
    say("This server needs an API key: enter it above (kept in this tab only).", true);
    return;
  }
  try {
    const list = await getJSON("/v1/models");
    for (const card of list.data) {
      cards.set(card.id, card);
      const option = document.createElement("option");
      option.value = card.id;
      const notes = [card.precision, `${card.context_length} ctx`, ...(card.fim ? ["fills in the middle"] : []), ...(card.ready ? [] : [card.status])];
      option.textContent = `${card.id} (${notes.join(", ")})`;
      ui.model.append(option);
    }
    modelChosen();
    say(list.data.length ? "Ready: type, and pause." : "The server serves no model.", !list.data.length);
  } catch (error) {
    const refused = error instanceof Refused && error.status === 401;
    if (refused) refusedKey = apiKey();
    say(describe(error, "/v1/models"), true);
  }
}

function modelChosen() {
  const card = cards.get(ui.model.value);
  ui.fimNote.hidden = !(card && card.fim);
}

async function start() {
  const config = await getJSON("/playground/config");
  keysRequired = config.keys_required;
  ui.keyField.hidden = !keysRequired;
  ui.key.value = apiKey();
  metrics = new MetricsView($("metrics-rows"), $("metrics-status"), () => ui.model.value, () => !keysRequired || (apiKey() !== "" && apiKey() !== refusedKey));
  const keyGiven = () => {
    if (ui.key.value.trim() === apiKey()) return;
    setApiKey(ui.key.value.trim());
    loadModels();
    metrics.refresh();
  };
  ui.key.addEventListener("change", keyGiven);
  ui.key.addEventListener("keydown", (event) => {
    if (event.key === "Enter") keyGiven();
  });
  ui.model.addEventListener("change", () => {
    modelChosen();
    metrics.refresh();
  });
  await loadModels();
  metrics.start(METRICS_EVERY_MS);
  editor.textarea.focus();
  editor.textarea.setSelectionRange(editor.value.length, editor.value.length);
}

start().catch((error) => say(`The page could not start: ${error.message}`, true));
