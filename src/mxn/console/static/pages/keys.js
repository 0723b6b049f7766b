// API keys: create (password again; shown once with a copy button), list with last use, revoke.
import { api } from "../lib/api.js";
import { field, h, table, when } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

export async function render() {
  const list = h("div");
  const error = h("p", { class: "error", role: "alert" });
  const shown = h("div", { "aria-live": "polite" });

  async function refresh() {
    const { data } = await api("/api/keys");
    list.replaceChildren(table([
      [t("name"), (k) => k.name || "—"],
      ["", (k) => `${k.prefix}…`],
      [t("created"), (k) => when(k.created_at)],
      [t("last_used"), (k) => when(k.last_used_at)],
      [t("state"), (k) => (k.enabled ? t("enabled") : t("revoked"))],
      ["", (k) => k.enabled ? h("button", { type: "button", class: "danger", onclick: async () => {
        await api(`/api/keys/${k.id}/revoke`, { method: "POST", body: {} });
        refresh();
      } }, t("revoke")) : ""],
    ], data));
  }

  const name = h("input", { name: "name", maxlength: 64 });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      const created = await api("/api/keys", { method: "POST", body: { name: name.value, password: password.value } });
      password.value = "";
      const copy = h("button", { type: "button", onclick: async () => {
        await navigator.clipboard.writeText(created.key);
        copy.textContent = t("copied");
      } }, t("copy"));
      shown.replaceChildren(h("div", { class: "card" }, h("p", {}, t("key_once")),
        h("p", { class: "secret", "data-testid": "new-key" }, created.key), copy));
      refresh();
    } catch (err) {
      error.textContent = err.message;
    }
  } }, h("h2", {}, t("create")), h("div", { class: "row" }, field(t("name"), name), field(t("confirm_password"), password),
    h("button", { class: "primary", type: "submit" }, t("create"))), error);
  await refresh();
  return h("div", {}, h("h1", {}, t("keys")), form, shown, list);
}
