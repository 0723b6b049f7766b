// The model square: models down, chips across; a cell opens its API example.
import { api } from "../lib/api.js";
import { h } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

export async function cells() {
  const { data } = await api("/v1/models");
  return data.filter((m) => m.chip);
}

function examples(cell) {
  const base = `${location.origin}/maas/${cell.root}/${cell.chip}`;
  const curl = `curl ${base}/chat/completions \\
  -H "Authorization: Bearer $MXN_API_KEY" -H "Content-Type: application/json" \\
  -d '{"model": "${cell.root}", "messages": [{"role": "user", "content": "你好"}], "stream": true}'`;
  const py = `from openai import OpenAI

client = OpenAI(base_url="${base}", api_key="sk-...")
r = client.chat.completions.create(model="${cell.root}", messages=[{"role": "user", "content": "你好"}])
print(r.choices[0].message.content)`;
  const lc = `from langchain_openai import ChatOpenAI

llm = ChatOpenAI(base_url="${base}", api_key="sk-...", model="${cell.root}")
print(llm.invoke("你好").content)`;
  return h("section", { class: "card", id: "example", "aria-live": "polite" },
    h("h2", {}, `${t("example")} ${cell.id}`),
    h("p", {}, `${t("base_url")}: `, h("code", {}, base)),
    h("h3", {}, "curl"), h("pre", {}, curl),
    h("h3", {}, "Python (openai)"), h("pre", {}, py),
    h("h3", {}, "LangChain"), h("pre", {}, lc),
    cell.kind !== "embedding"
      ? h("p", {}, h("a", { class: "button", href: `#/playground?cell=${encodeURIComponent(cell.id)}` }, t("playground")))
      : null);
}

export async function render() {
  const all = await cells();
  const models = [...new Set(all.map((c) => c.root))];
  const chips = [...new Map(all.map((c) => [c.chip, c.chip_name])).entries()];
  const at = new Map(all.map((c) => [`${c.root}@${c.chip}`, c]));
  const detail = h("div");
  const grid = h("div", { class: "table-wrap" }, h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("model")), h("th", { scope: "col" }, t("context")),
      chips.map(([id, name]) => h("th", { scope: "col", title: id }, name)))),
    h("tbody", {}, models.map((m) => {
      const any = all.find((c) => c.root === m);
      return h("tr", {}, h("th", { scope: "row" }, m), h("td", {}, any.context_length),
        chips.map(([chip]) => {
          const c = at.get(`${m}@${chip}`);
          if (!c) return h("td", {}, "");
          return h("td", { class: "cell" }, h("button", { type: "button", class: "link", "data-cell": c.id,
            onclick: () => detail.replaceChildren(examples(c)) },
          h("span", { class: `state-${c.state}` }, `● ${c.state}`), h("br"),
          h("span", { class: "muted" }, `${c.price.input} / ${c.price.output}`)));
        }));
    }))));
  return h("div", {}, h("h1", {}, t("models")),
    h("p", { class: "muted" }, `${models.length} × ${chips.length} · ${t("price")}`), grid, detail);
}
