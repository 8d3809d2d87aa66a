// One streaming completion, as an editor plugin asks for it: POST /v1/completions with stream and
// usage, read as server-sent events; the text handed over as it arrives, the timings measured here.
import { authHeaders, errorMessage, Refused } from "./api.js";

export async function streamCompletion(body, signal, onText) {
  const started = performance.now();
  const response = await fetch("/v1/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw new Refused(response.status, await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let firstText = null;
  let usage = null;
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Refused(500, `the stream ended in an error: ${chunk.error.message}`);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.text) {
            if (firstText === null) firstText = performance.now();
            onText(choice.text);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  const ended = performance.now();
  return { started, firstText, ended, usage, finish };
}

// What the stats line shows: time to first token, tokens per second after it, prompt tokens reused.
export function timings(result) {
  const tokens = result.usage ? result.usage.completion_tokens : 0;
  const decodeSeconds = result.firstText === null ? 0 : (result.ended - result.firstText) / 1000;
  return {
    ttftMs: result.firstText === null ? null : result.firstText - result.started,
    tokensPerSecond: tokens > 1 && decodeSeconds > 0 ? (tokens - 1) / decodeSeconds : null,
    promptTokens: result.usage ? result.usage.prompt_tokens : null,
    cachedTokens: result.usage && result.usage.prompt_tokens_details ? result.usage.prompt_tokens_details.cached_tokens : null,
    completionTokens: tokens,
  };
}
