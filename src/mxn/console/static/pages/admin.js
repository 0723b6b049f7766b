// Admin: catalogue (chips, deployments, endpoints), users, groups, codes, moderation, alerts, audit log.
import { session } from "../app.js";
import { api } from "../lib/api.js";
import { field, h, table, when } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

function confirmDialog(message) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { "aria-label": t("confirm") }, h("p", {}, message),
      h("div", { class: "row" },
        h("button", { type: "button", class: "danger", value: "yes", onclick: () => dialog.close("yes") }, t("confirm")),
        h("button", { type: "button", onclick: () => dialog.close("no") }, t("cancel"))));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "yes"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

const TABS = {
  async catalogue() {
    const [{ data: chips }, { data: models }, { data: deps }, { data: eps }] = await Promise.all(
      [api("/admin/chips"), api("/admin/models"), api("/admin/deployments"), api("/admin/endpoints")]);
    return h("div", {},
      h("h2", {}, t("chips")), table([["id", (c) => c.id], [t("name"), (c) => c.name], [t("alias"), (c) => c.alias ?? ""]], chips),
      h("h2", {}, t("models")), table([[t("model"), (m) => m.name], [t("kind"), (m) => m.kind],
        [t("context"), (m) => m.context_length], ["tokenizer", (m) => m.tokenizer ?? "—"], ["public", (m) => String(m.public)]], models),
      h("h2", {}, t("deployments")), table([[t("model"), (d) => d.name], [t("price"), (d) => `${d.price.input} / ${d.price.output}`],
        [t("moderation"), (d) => (d.moderation ? t("on") : t("off"))]], deps),
      h("h2", {}, t("endpoints")), table([["id", (e) => e.id], [t("deployments"), (e) => e.deployment],
        [t("url"), (e) => e.url ?? e.engine], [t("state"), (e) => h("span", { class: `state-${e.effective_state ?? e.state}` },
          e.effective_state ?? e.state)], [t("weight"), (e) => e.weight], [t("priority"), (e) => e.priority]], eps));
  },
  async nodes() {
    const [{ placement, data: nodes }, { data: managed }] = await Promise.all([api("/admin/nodes"), api("/admin/managed")]);
    const chips = (n) => (n.devices.length
      ? n.devices.map((d) => `${d.chip} #${d.index} ${d.name}${d.memory_mib ? ` (${Math.round(d.memory_mib / 1024)} GiB)` : ""}`)
      : Object.entries(n.resources).map(([k, v]) => `${k} ${v}`)).join(", ");
    const badge = (state) => h("span", { class: `state-${state}` }, state);
    return h("div", {},
      h("p", {}, `${t("placement")}: ${placement}`),
      table([[t("node"), (n) => n.id], [t("ip"), (n) => n.address ?? ""], [t("state"), (n) => badge(n.alive ? "running" : "stopped")],
        [t("chips"), chips], [t("replicas"), (n) => n.replicas.join(", ")]], nodes),
      h("h2", {}, t("managed")),
      table([[t("deployments"), (m) => m.deployment], [t("engine"), (m) => m.engine], [t("source"), (m) => m.source],
        [t("state"), (m) => h("span", { class: `state-${m.state}`, "data-managed": m.deployment }, m.state)],
        [t("replicas"), (m) => `${m.running}/${m.replicas}`],
        [t("instances"), (m) => h("div", {}, m.instances.map((i) => h("div", { title: i.detail ?? "" },
          `#${i.index} `, badge(i.state), ` ${i.url ?? ""}${i.detail ? ` — ${i.detail.slice(0, 80)}` : ""}`)))]], managed));
  },
  async users() {
    const [{ data: users }, { data: groups }] = await Promise.all([api("/admin/users"), api("/admin/groups")]);
    return h("div", {},
      table([["id", (u) => u.id], [t("user"), (u) => u.name], [t("role"), (u) => u.role], [t("group"), (u) => u.group],
        [t("quota"), (u) => u.quota ?? t("unlimited")], [t("state"), (u) => (u.enabled ? t("enabled") : t("revoked"))]], users),
      h("h2", {}, t("groups")),
      table([[t("name"), (g) => g.name], ["×", (g) => g.multiplier], ["rpm", (g) => g.rpm ?? "—"], ["rpd", (g) => g.rpd ?? "—"],
        ["tpm", (g) => g.tpm ?? "—"]], groups));
  },
  async codes() {
    const quota = h("input", { type: "number", name: "quota", min: 1, required: true });
    const count = h("input", { type: "number", name: "count", min: 1, max: 1000, value: 1, required: true });
    const made = h("pre", { "aria-live": "polite" });
    const { data } = await api("/admin/codes");
    return h("div", {},
      h("form", { class: "card", onsubmit: async (e) => {
        e.preventDefault();
        const r = await api("/admin/codes", { method: "POST", body: { quota: Number(quota.value), count: Number(count.value) } });
        made.textContent = r.codes.join("\n");
      } }, h("div", { class: "row" }, field(t("quota"), quota), field(t("count"), count),
        h("button", { class: "primary", type: "submit" }, t("make_codes")))), made,
      table([["id", (c) => c.id], ["", (c) => `${c.prefix}…`], [t("quota"), (c) => c.quota],
        [t("created"), (c) => when(c.created_at)], ["redeemed", (c) => when(c.redeemed_at)]], data));
  },
  async moderation(reload) {
    const [{ data: deps }, { data: rules }] = await Promise.all([api("/admin/deployments"), api("/admin/moderation")]);
    const error = h("p", { class: "error", role: "alert" });
    const toggle = (d) => h("button", { type: "button", class: d.moderation ? "danger" : "", "data-deployment": d.name,
      onclick: async () => {
        if (d.moderation && !(await confirmDialog(t("confirm_off", { cell: d.name })))) return;
        try {
          await api(`/admin/deployments/${d.id}`, { method: "PATCH", body: d.moderation ? { moderation: false, confirm: true } : { moderation: true } });
          reload();
        } catch (err) {
          error.textContent = err.message;
        }
      } }, d.moderation ? t("turn_off") : t("turn_on"));
    return h("div", {}, error,
      table([[t("deployments"), (d) => d.name], [t("moderation"), (d) => h("span", { "data-state": d.name },
        d.moderation ? t("on") : t("off"))], ["", toggle]], deps),
      h("h2", {}, t("rules")),
      table([["id", (r) => r.id], [t("scope"), (r) => r.deployment ?? t("global")], ["source", (r) => r.source],
        [t("keywords"), (r) => r.keywords.length], [t("regexes"), (r) => r.regexes.length],
        ["classifier", (r) => r.classifier?.url ?? "—"]], rules));
  },
  async alerts() {
    const { data } = await api("/admin/alerts?limit=200");
    return table([[t("time"), (a) => when(a.created_at)], [t("kind"), (a) => a.kind], [t("message_col"), (a) => a.message],
      [t("delivered"), (a) => when(a.delivered_at)]], data);
  },
  async audit() {
    const { data } = await api("/admin/audit?limit=200");
    return table([[t("time"), (a) => when(a.at)], [t("actor"), (a) => a.actor], [t("action"), (a) => a.action],
      [t("target"), (a) => a.target], [t("ip"), (a) => a.ip ?? ""]], data);
  },
};

export async function render(params) {
  if (session.me?.role !== "admin") return h("p", { class: "error" }, t("not_admin"));
  const current = TABS[params.get("tab")] ? params.get("tab") : "catalogue";
  const body = h("div");
  const load = async () => body.replaceChildren(await TABS[current](load));
  const tabs = h("div", { class: "tabs", role: "tablist" }, Object.keys(TABS).map((name) =>
    h("button", { type: "button", role: "tab", "aria-selected": name === current ? "true" : "false",
      onclick: () => { location.hash = `#/admin?tab=${name}`; } }, t(name === "users" ? "users" : name))));
  await load();
  return h("div", {}, h("h1", {}, t("admin")), tabs, body);
}
