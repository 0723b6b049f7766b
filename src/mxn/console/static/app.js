// The console: a hash router over page modules, the signed-in user, the language switch.
import { api } from "./lib/api.js";
import { h } from "./lib/dom.js";
import { lang, switchLang, t } from "./lib/i18n.js";

const PAGES = {
  login: () => import("./pages/login.js"),
  models: () => import("./pages/models.js"),
  playground: () => import("./pages/playground.js"),
  compare: () => import("./pages/compare.js"),
  keys: () => import("./pages/keys.js"),
  usage: () => import("./pages/usage.js"),
  profile: () => import("./pages/profile.js"),
  admin: () => import("./pages/admin.js"),
};
const NAV = ["models", "playground", "compare", "keys", "usage", "profile"];

export const session = { me: null };

export function go(page, params = {}) {
  const q = new URLSearchParams(params).toString();
  location.hash = `#/${page}${q ? "?" + q : ""}`;
}

function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  return { page: PAGES[path] ? path : "models", params: new URLSearchParams(query || "") };
}

async function loadMe() {
  const me = await api("/api/session");
  session.me = me.user ? me : null;
}

function header(page) {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  const nav = document.getElementById("nav");
  const items = session.me ? [...NAV, ...(session.me.role === "admin" ? ["admin"] : [])] : [];
  nav.replaceChildren(...items.map((p) =>
    h("a", { href: `#/${p}`, class: p === page ? "active" : "", "aria-current": p === page ? "page" : null }, t(p))));
  document.getElementById("lang").textContent = t("lang");
  document.getElementById("who").textContent = session.me ? session.me.user : "";
  const out = document.getElementById("logout");
  out.hidden = !session.me;
  out.textContent = t("logout");
}

let rendering = 0;
async function render() {
  const mine = ++rendering;
  let { page, params } = route();
  if (!session.me && page !== "login") page = "login";
  header(page);
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, t("loading")));
  const module = await PAGES[page]();
  if (mine !== rendering) return;
  document.title = `${t(page)} · mxn`;
  const view = await module.render(params);
  if (mine !== rendering) return;
  main.replaceChildren(view);
}

document.getElementById("lang").addEventListener("click", () => { switchLang(); render(); });
document.getElementById("logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST", body: {} });
  session.me = null;
  go("login");
  render();
});
window.addEventListener("hashchange", render);

export async function signedIn() {
  await loadMe();
  const back = route();
  go(back.page === "login" ? "models" : back.page);
  render();
}

await loadMe();
render();
