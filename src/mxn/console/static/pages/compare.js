// M×N compare: one prompt to 2–6 cells at once; answers stream side by side with live metrics.
import { fmt, streamChat } from "../lib/api.js";
import { metricsLine, paramsForm } from "../lib/chatview.js";
import { field, h } from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { cells } from "./models.js";

export async function render(params) {
  const all = (await cells()).filter((c) => c.kind !== "embedding");
  const wanted = new Set((params.get("cells") || "").split(",").filter(Boolean));
  const boxes = all.map((c) => h("input", { type: "checkbox", name: "cell", value: c.id, checked: wanted.has(c.id) }));
  const picker = h("fieldset", { class: "checks" }, h("legend", {}, t("pick_cells")),
    all.map((c, i) => h("label", {}, boxes[i], `${c.root} @ ${c.chip_name}`)));
  const prompt = h("textarea", { name: "prompt", rows: 3, required: true });
  const form = paramsForm();
  const panes = h("div", { class: "compare", "aria-live": "polite" });
  const run = h("button", { class: "primary", type: "submit" }, t("run"));
  const stop = h("button", { type: "button", disabled: true }, t("stop"));
  const error = h("p", { class: "error", role: "alert" });
  let controller = null;

  async function go(e) {
    e.preventDefault();
    const chosen = all.filter((c, i) => boxes[i].checked);
    if (chosen.length < 2 || chosen.length > 6) {
      error.textContent = t("choose_2_6");
      return;
    }
    error.textContent = "";
    controller = new AbortController();
    run.disabled = true;
    stop.disabled = false;
    const body = { messages: [{ role: "user", content: prompt.value }], ...form.read() };
    panes.replaceChildren();
    await Promise.all(chosen.map(async (cell) => {
      const answer = h("div", { class: "answer", "data-testid": "answer" });
      const live = h("div", { class: "metrics" });
      const status = h("div");
      panes.append(h("article", { class: "pane", "data-cell": cell.id }, h("h2", {}, `${cell.root} @ ${cell.chip_name}`),
        answer, live, status));
      const started = performance.now();
      let first = null, text = "", pieces = 0;
      try {
        const m = await streamChat(cell.id, body, (d) => {
          first ??= performance.now();
          text += d;
          pieces += 1; // about one token per streamed piece, until the usage chunk gives the exact count
          answer.textContent = text;
          const secs = (performance.now() - first) / 1000;
          live.textContent = `${t("ttft")}: ${fmt(first - started, 0)} ms · ~${pieces} ${t("tokens")} · ` +
            `~${fmt(secs > 0 ? (pieces - 1) / secs : null)} ${t("tps")}`;
        }, controller.signal);
        live.replaceWith(metricsLine(m, cell.price));
      } catch (err) {
        status.replaceChildren(h("span", { class: "error" }, err.message));
      }
    }));
    controller = null;
    run.disabled = false;
    stop.disabled = true;
  }
  stop.addEventListener("click", () => controller?.abort());
  return h("div", {}, h("h1", {}, t("compare")),
    h("form", { onsubmit: go }, picker, field(t("prompt"), prompt),
      h("details", {}, h("summary", {}, "Parameters"), form.el), error, h("div", { class: "row" }, run, stop)),
    panes);
}
