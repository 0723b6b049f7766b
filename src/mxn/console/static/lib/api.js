// Calls the console makes: JSON over the session cookie (the cookie is HttpOnly; JS never sees it).
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// One streamed chat completion to a cell. `onText(delta)` per piece; resolves to its metrics.
export async function streamChat(cell, body, onText, signal) {
  const [model, chip] = cell.split("@");
  const started = performance.now();
  let first = null, usage = null, blocked = false, finish = null, chars = 0;
  const r = await fetch(`/maas/${encodeURIComponent(model)}/${encodeURIComponent(chip)}/chat/completions`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, model, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i).trim();
        buf = buf.slice(i + 2);
        if (!event.startsWith("data:")) continue;
        const data = event.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(502, chunk);
        if (chunk.usage) usage = chunk.usage;
        if (chunk.blocked) blocked = true;
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        if (choice.finish_reason) finish = choice.finish_reason;
        const text = choice.delta?.content;
        if (text) {
          if (first === null) first = performance.now();
          chars += text.length;
          onText(text);
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
    finish = "stopped";
  }
  const end = performance.now();
  const completion = usage?.completion_tokens ?? null;
  const decodeSeconds = first !== null ? (end - first) / 1000 : null;
  return {
    ttft_ms: first !== null ? first - started : null,
    prompt_tokens: usage?.prompt_tokens ?? null,
    completion_tokens: completion,
    tokens_per_s: completion && decodeSeconds ? completion / decodeSeconds : null,
    seconds: (end - started) / 1000,
    blocked,
    finish,
    chars,
  };
}

// What an answer costs at a cell's prices (per 1M tokens).
export function cost(price, m) {
  if (!price || m.prompt_tokens === null) return null;
  return (m.prompt_tokens * price.input + (m.completion_tokens || 0) * price.output) / 1e6;
}

export function fmt(n, digits = 1) {
  return n === null || n === undefined || Number.isNaN(n) ? "—" : Number(n).toFixed(digits);
}
