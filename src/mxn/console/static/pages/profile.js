// The user's profile: group, quota balance, limits, and redeeming a code.
import { session } from "../app.js";
import { api } from "../lib/api.js";
import { field, h, table, when } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

export async function render() {
  const me = await api("/api/me");
  session.me = me;
  const balance = h("dd", { "data-testid": "quota" }, me.quota ?? t("unlimited"));
  const code = h("input", { name: "code", required: true, autocomplete: "off" });
  const result = h("p", { role: "status" });
  const { data: alerts } = await api("/api/alerts");
  return h("div", {}, h("h1", {}, t("profile")),
    h("dl", { class: "card" }, h("dt", {}, t("user")), h("dd", {}, me.user), h("dt", {}, t("role")), h("dd", {}, me.role),
      h("dt", {}, t("group")), h("dd", {}, me.group), h("dt", {}, t("quota")), balance,
      h("dt", {}, t("limits")), h("dd", {}, Object.entries(me.limits).map(([k, v]) => `${k} ${v}`).join(" · ") || "—")),
    h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const r = await api("/api/codes/redeem", { method: "POST", body: { code: code.value.trim() } });
        result.className = "ok";
        result.textContent = `${t("redeemed")} ${r.redeemed}`;
        balance.textContent = r.quota ?? t("unlimited");
        code.value = "";
      } catch (err) {
        result.className = "error";
        result.textContent = err.message;
      }
    } }, h("h2", {}, t("redeem")), h("div", { class: "row" }, field(t("code"), code),
      h("button", { class: "primary", type: "submit" }, t("redeem"))), result),
    h("h2", {}, t("alerts")),
    table([[t("time"), (a) => when(a.created_at)], [t("kind"), (a) => a.kind], [t("message_col"), (a) => a.message]], alerts));
}
