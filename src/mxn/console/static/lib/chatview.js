import { cost, fmt } from "./api.js";
import { h } from "./dom.js";
import { t } from "./i18n.js";

// One line of an answer's metrics: tokens, TTFT, tokens/s, cost.
export function metricsLine(m, price) {
  const c = cost(price, m);
  return h("div", { class: "metrics", "data-testid": "metrics" },
    h("span", { "data-metric": "tokens" }, `${t("tokens")}: ${m.prompt_tokens ?? "—"} + ${m.completion_tokens ?? "—"}`),
    h("span", { "data-metric": "ttft" }, `${t("ttft")}: ${fmt(m.ttft_ms, 0)} ms`),
    h("span", { "data-metric": "tps" }, `${t("tps")}: ${fmt(m.tokens_per_s)}`),
    h("span", { "data-metric": "cost" }, `${t("cost")}: ${c === null ? "—" : c.toFixed(6)}`),
    m.blocked ? h("span", { class: "error" }, t("blocked")) : null);
}

// Sampling parameters as a form; `read()` gives the request fields that were filled in.
export function paramsForm() {
  const specs = [
    ["temperature", 0, 2, 0.01], ["top_p", 0, 1, 0.01], ["top_k", -1, 1000, 1], ["max_tokens", 1, 32768, 1],
    ["presence_penalty", -2, 2, 0.1], ["frequency_penalty", -2, 2, 0.1], ["repetition_penalty", 0.1, 2, 0.01],
  ];
  const inputs = Object.fromEntries(specs.map(([name, min, max, step]) =>
    [name, h("input", { type: "number", name, min, max, step, placeholder: "default" })]));
  const stop = h("input", { name: "stop", placeholder: "###" });
  const el = h("fieldset", { class: "params" }, h("legend", {}, "Parameters"),
    specs.map(([name]) => h("label", {}, h("span", {}, t(name)), inputs[name])),
    h("label", {}, h("span", {}, t("stop_seq")), stop));
  function read() {
    const out = {};
    for (const [name, input] of Object.entries(inputs)) if (input.value !== "") out[name] = Number(input.value);
    const stops = stop.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (stops.length) out.stop = stops;
    return out;
  }
  return { el, read };
}
