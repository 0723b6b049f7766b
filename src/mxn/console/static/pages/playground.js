// A streaming multi-turn chat with one cell, its parameters, and each answer's metrics.
import { streamChat } from "../lib/api.js";
import { metricsLine, paramsForm } from "../lib/chatview.js";
import { field, h } from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { cells } from "./models.js";

export async function render(params) {
  const all = (await cells()).filter((c) => c.kind !== "embedding");
  const choose = h("select", { name: "cell", "aria-label": t("model") },
    all.map((c) => h("option", { value: c.id, selected: c.id === params.get("cell") }, `${c.root} @ ${c.chip_name}`)));
  const system = h("textarea", { name: "system", rows: 2 });
  const form = paramsForm();
  const log = h("div", { class: "messages", "aria-live": "polite", "data-testid": "messages" });
  const input = h("textarea", { name: "message", rows: 3, required: true });
  const send = h("button", { class: "primary", type: "submit" }, t("send"));
  const stop = h("button", { type: "button", disabled: true }, t("stop"));
  const error = h("p", { class: "error", role: "alert" });
  let history = [];
  let controller = null;

  async function ask(e) {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    error.textContent = "";
    input.value = "";
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "msg user" }, h("b", {}, `${t("you")}: `), text));
    const answer = h("span", { "data-testid": "answer" });
    log.append(h("div", { class: "msg assistant" }, h("b", {}, `${choose.value}: `), answer));
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...history];
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    let reply = "";
    try {
      const cell = all.find((c) => c.id === choose.value);
      const m = await streamChat(choose.value, { messages, ...form.read() }, (d) => {
        reply += d;
        answer.textContent = reply;
        log.scrollTop = log.scrollHeight;
      }, controller.signal);
      history.push({ role: "assistant", content: reply });
      log.append(metricsLine(m, cell.price));
    } catch (err) {
      error.textContent = err.message;
      history.pop();
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
      input.focus();
    }
  }
  stop.addEventListener("click", () => controller?.abort());
  const clear = h("button", { type: "button", onclick: () => { history = []; log.replaceChildren(); } }, t("clear"));
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask(e); });
  return h("div", {}, h("h1", {}, t("playground")),
    h("div", { class: "chat" },
      h("aside", {}, field(t("model"), choose), field(t("system"), system), form.el),
      h("section", {}, log,
        h("form", { onsubmit: ask }, field(t("message"), input), error, h("div", { class: "row" }, send, stop, clear)))));
}
