// How the page talks to the server: the same origin, the key (when the server has keys) in a header,
// never in a URL, and kept in this tab's sessionStorage only (gone when the tab closes).
const KEY = "slipstream.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The server's own words for a refusal (OpenAI's {"error": {"message"}}), else the status line.
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status}: ${body.error.message || body.error}`;
  } catch (_) {
    // not JSON: the status says enough
  }
  return `${response.status} ${response.statusText}`;
}

export class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Who can be told what went wrong: a refused key said as such, anything else with what was asked.
export function describe(error, what) {
  if (error instanceof Refused && error.status === 401) return `The server refused the key (${error.message})`;
  return `${what}: ${error.message}`;
}

async function get(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!response.ok) throw new Refused(response.status, await errorMessage(response));
  return response;
}

export async function getJSON(path) {
  return (await get(path)).json();
}

export async function getText(path) {
  return (await get(path)).text();
}
