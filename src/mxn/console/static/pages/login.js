import { signedIn } from "../app.js";
import { api } from "../lib/api.js";
import { field, h } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

export function render() {
  const name = h("input", { name: "user", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      await api("/api/login", { method: "POST", body: { name: name.value, password: password.value } });
      await signedIn();
    } catch (err) {
      error.textContent = err.status === 401 ? t("bad_login") : err.message;
    }
  } },
  h("h1", {}, t("login")), field(t("user"), name), field(t("password"), password), error,
  h("button", { class: "primary", type: "submit" }, t("login")));
  setTimeout(() => name.focus());
  return form;
}
