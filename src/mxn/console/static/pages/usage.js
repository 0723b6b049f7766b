// Usage: tokens, requests and cost per day (uPlot, vendored), totals per model and chip, the records, CSV.
import { api } from "../lib/api.js";
import { h, table, when } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

function perDay(rows) {
  const days = new Map();
  for (const r of rows) {
    const day = r.created_at.slice(0, 10);
    const d = days.get(day) ?? { tokens: 0, requests: 0, cost: 0 };
    d.tokens += r.prompt_tokens + r.completion_tokens;
    d.requests += 1;
    d.cost += r.cost;
    days.set(day, d);
  }
  const keys = [...days.keys()].sort();
  return { names: keys, rows: keys.map((k) => days.get(k)) };
}

function totals(rows, by) {
  const out = new Map();
  for (const r of rows) {
    const d = out.get(r[by]) ?? { name: r[by], requests: 0, tokens: 0, cost: 0 };
    d.requests += 1;
    d.tokens += r.prompt_tokens + r.completion_tokens;
    d.cost += r.cost;
    out.set(r[by], d);
  }
  return [...out.values()].sort((a, b) => b.tokens - a.tokens);
}

// One bar per name (a day, a model, a chip), from zero up.
function chart(title, names, y, color) {
  const x = names.map((_, i) => i);
  const box = h("figure", { class: "card chart", "data-chart": title }, h("figcaption", {}, title));
  // Drawn once the figure is in the page, at its width, and redrawn when that changes.
  requestAnimationFrame(() => {
    const plot = new window.uPlot({
      width: box.clientWidth - 32, height: 200,
      scales: { x: { time: false, range: [-0.5, names.length - 0.5] }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{ splits: () => x, values: () => names }, { size: 60 }],
      series: [{}, { label: title, stroke: color, fill: color + "55", paths: window.uPlot.paths.bars({ size: [0.6, 40] }) }],
    }, [x, y], box);
    new ResizeObserver(() => plot.setSize({ width: box.clientWidth - 32, height: 200 })).observe(box);
  });
  return box;
}

export async function render() {
  const { data: rows } = await api("/api/usage?since=30d");
  const days = perDay(rows);
  const byTotals = (by) => table([[by === "model" ? t("model") : t("chip"), (d) => d.name], [t("requests"), (d) => d.requests],
    [t("tokens"), (d) => d.tokens], [t("cost"), (d) => d.cost]], totals(rows, by));
  return h("div", {}, h("h1", {}, t("usage")),
    h("p", {}, h("a", { class: "button", href: "/api/usage?since=30d&format=csv", download: "usage.csv" }, t("export_csv"))),
    rows.length ? h("div", { class: "charts" },
      chart(t("tokens_per_day"), days.names, days.rows.map((d) => d.tokens), "#1f6feb"),
      chart(t("requests_per_day"), days.names, days.rows.map((d) => d.requests), "#1a7f37"),
      chart(t("cost_per_day"), days.names, days.rows.map((d) => d.cost), "#bf8700")) : h("p", { class: "muted" }, t("nothing")),
    h("div", { class: "charts" }, ["model", "chip"].map((by) => {
      const sums = totals(rows, by);
      return h("section", {}, h("h2", {}, t(`by_${by}`)),
        rows.length ? chart(`${t("tokens")} · ${t(`by_${by}`)}`, sums.map((d) => d.name), sums.map((d) => d.tokens), "#8250df")
          : null,
        byTotals(by));
    })),
    h("h2", {}, t("requests")),
    h("div", { "data-testid": "usage-table" }, table([[t("time"), (r) => when(r.created_at)], [t("model"), (r) => r.model],
      [t("chip"), (r) => r.chip], [t("tokens"), (r) => `${r.prompt_tokens} + ${r.completion_tokens}`],
      [t("ttft"), (r) => (r.ttft_ms === null ? "—" : `${Math.round(r.ttft_ms)} ms`)], [t("status"), (r) => r.status],
      [t("cost"), (r) => r.cost]], rows.slice(0, 200))));
}
