// The server's own numbers: GET /metrics (Prometheus' text format) read and summarised for one model.
import { getText } from "./api.js";

// name -> [{labels, value}] for every sample line
export function parsePrometheus(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    if (!samples.has(match[1])) samples.set(match[1], []);
    samples.get(match[1]).push({ labels, value: Number(match[4]) });
  }
  return samples;
}

function sum(samples, name, keep = () => true) {
  return (samples.get(name) || []).filter((s) => keep(s.labels)).reduce((total, s) => total + s.value, 0);
}

// A histogram's quantile as Prometheus' histogram_quantile estimates it: linear within the bucket
// that holds the rank; null without observations.
export function histogramQuantile(samples, name, q, keep = () => true) {
  const byBound = new Map();
  for (const s of samples.get(`${name}_bucket`) || []) {
    if (!keep(s.labels)) continue;
    const bound = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byBound.set(bound, (byBound.get(bound) || 0) + s.value);
  }
  const buckets = [...byBound.entries()].sort((a, b) => a[0] - b[0]);
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (total === 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return lower; // past the last finite bound: its bound, as Prometheus says
      return lower + ((bound - lower) * (rank - below)) / Math.max(count - below, 1e-12);
    }
    lower = bound;
    below = count;
  }
  return lower;
}

function ms(seconds) {
  return seconds === null ? "-" : `${(1000 * seconds).toFixed(seconds < 0.01 ? 1 : 0)} ms`;
}

function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

// The rows the page shows, for one model (every model's when none is chosen): [id, label, text]
export function summarise(samples, model) {
  const mine = (labels) => !model || labels.model === model;
  const percentiles = (name) => [0.5, 0.9, 0.99].map((q) => ms(histogramQuantile(samples, name, q, mine))).join(" ");
  const lookups = sum(samples, "slipstream_prefix_cache_lookups_total", mine);
  const hits = sum(samples, "slipstream_prefix_cache_hits_total", mine);
  const generation = (labels) => /completions|generate|chat|infill/.test(labels.route || "");
  return [
    ["requests", "requests (all routes)", String(sum(samples, "slipstream_requests_total"))],
    ["generations", "completion requests", String(sum(samples, "slipstream_requests_total", generation))],
    ["ttft", "time to first token p50/90/99", percentiles("slipstream_time_to_first_token_seconds")],
    ["itl", "inter-token p50/90/99", percentiles("slipstream_inter_token_seconds")],
    ["rows", "batch rows decoding", String(sum(samples, "slipstream_batch_rows", mine))],
    ["queue", "requests queued", String(sum(samples, "slipstream_queue_depth", mine))],
    ["hits", "prefix-cache hits / lookups", `${hits} / ${lookups}`],
    ["reused", "prompt tokens reused", String(sum(samples, "slipstream_prefix_cache_reused_tokens_total", mine))],
    ["cache-bytes", "prefix cache holds", bytes(sum(samples, "slipstream_prefix_cache_bytes", mine))],
    ["tokens", "tokens generated", String(sum(samples, "slipstream_completion_tokens_total", mine))],
    ["cancelled", "cancelled generations", String(sum(samples, "slipstream_cancelled_requests_total", mine))],
  ];
}

export class MetricsView {
  constructor(rows, status, model, allowed) {
    this.rows = rows;
    this.status = status;
    this.model = model; // () => the model chosen now
    this.allowed = allowed; // () => whether to ask (a keyed server without a key: not yet)
    this.busy = false;
  }

  async refresh() {
    if (this.busy) return;
    if (!this.allowed()) {
      this.status.textContent = "/metrics needs the API key";
      return;
    }
    this.busy = true;
    try {
      const samples = parsePrometheus(await getText("/metrics"));
      this.rows.replaceChildren(
        ...summarise(samples, this.model()).map(([id, label, text]) => {
          const row = document.createElement("tr");
          const name = document.createElement("td");
          const value = document.createElement("td");
          name.textContent = label;
          value.textContent = text;
          value.id = `m-${id}`;
          row.append(name, value);
          return row;
        }),
      );
      this.status.textContent = `refreshed ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      this.status.textContent = `/metrics: ${error.message}`;
    } finally {
      this.busy = false;
    }
  }

  start(everyMs) {
    this.refresh();
    setInterval(() => {
      if (!document.hidden) this.refresh();
    }, everyMs);
  }
}
