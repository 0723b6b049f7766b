"""The web console in a real browser (Debian's chromium driven by Playwright) against a real `mxn serve`.

Every page is screenshotted at 1280 and 390 px wide into build/screenshots/, and the browser's console must
stay free of errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import ROOT, Server, first_start_key, mxn, start_serve, start_upstream, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "build" / "screenshots"
CATALOG = """
chips:
  - {{id: nvidia, name: NVIDIA}}
  - {{id: biren, name: Biren, alias: "accelerator E"}}
models:
  - {{name: qwen-chat, context_length: 4096, tokenizer: "tiktoken:cl100k_base"}}
  - {{name: glm-chat, context_length: 2048, tokenizer: "tiktoken:cl100k_base"}}
deployments:
  - {{model: qwen-chat, chip: nvidia, price: {{input: 1.0, output: 2.0}}, endpoints: [{{url: "{fast}"}}]}}
  - {{model: qwen-chat, chip: biren, price: {{input: 0.5, output: 1.0}}, endpoints: [{{url: "{slow}"}}]}}
  - {{model: glm-chat, chip: nvidia, endpoints: [{{url: "{fast}"}}]}}
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("console")
    fast = start_upstream(tmp, "sse", "--delay", "0.02")
    slow = start_upstream(tmp, "sse", "--delay", "0.05")
    (tmp / "catalog.yaml").write_text(CATALOG.format(fast=fast.url, slow=slow.url))
    db = f"sqlite+aiosqlite:///{tmp / 'mxn.db'}"
    proc = start_serve(
        tmp / "serve.log", db, "--catalog", str(tmp / "catalog.yaml"), env={"MXN_ADMIN_KEY": "sk-admin-console"}
    )
    password = re.search(r"password:\s+(\S+)", proc.output())
    assert password
    try:
        yield Server(proc.url, first_start_key(proc.output()), "sk-admin-console", db, proc, {}), password.group(1)
    finally:
        proc.stop()
        fast.stop()
        slow.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Tab:
    """A page that records the browser console's errors and takes screenshots at both widths."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.base = base

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def open(self, route: str) -> Page:
        self.page.goto(f"{self.base}/console/#/{route}")
        return self.page

    def shots(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SHOTS / f"{name}-1280.png", full_page=True)
        self.page.set_viewport_size({"width": 390, "height": 844})
        self.page.wait_for_timeout(150)
        # Usable on a phone: nothing wider than the screen makes the whole page scroll sideways.
        overflow = self.page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 392, f"{name} is {overflow}px wide at 390px"
        self.page.screenshot(path=SHOTS / f"{name}-390.png", full_page=True)
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors


@pytest.fixture(scope="module")
def tab(console: tuple[Server, str], browser: Browser) -> Iterator[Tab]:
    server, password = console
    t = Tab(browser, server.url)
    page = t.open("models")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    t.shots("login")
    # Keyboard only: the name field has focus; Tab to the password; Enter submits.
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Model square")).to_be_visible()
    yield t
    t.close()


def test_root_redirects_to_the_console_and_assets_are_local(console: tuple[Server, str]) -> None:
    server, _ = console
    r = httpx.get(server.url + "/", follow_redirects=True)
    assert r.status_code == 200 and str(r.url).endswith("/console/")
    assert "http" not in re.sub(r'href="/|src="/', "", r.text).replace("http-equiv", "")  # no CDN
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_model_square_and_api_example(tab: Tab, console: tuple[Server, str]) -> None:
    server, _ = console
    page = tab.open("models")
    expect(page.locator("table.grid th[scope=col]", has_text="accelerator E")).to_be_visible()
    page.locator("[data-cell='qwen-chat@biren']").click()
    example = page.locator("#example")
    expect(example).to_contain_text(f"{server.url}/maas/qwen-chat/biren")
    expect(example).to_contain_text("from langchain_openai import ChatOpenAI")
    tab.shots("models")
    page.get_by_role("button", name="中文").click()
    expect(page.get_by_role("heading", name="模型广场")).to_be_visible()
    tab.shots("models-zh")
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("heading", name="Model square")).to_be_visible()


def test_create_a_key_and_see_it_once(tab: Tab, console: tuple[Server, str]) -> None:
    server, password = console
    page = tab.open("keys")
    page.get_by_label("Name").fill("from-console")
    page.get_by_label("Password (again)").fill(password)
    page.get_by_role("button", name="Create", exact=True).click()
    shown = page.get_by_test_id("new-key")
    expect(shown).to_have_text(re.compile(r"^sk-[A-Za-z0-9]{40,}$"))
    key = shown.inner_text()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    tab.shots("keys")
    # The key works, and it is never shown again.
    assert httpx.get(server.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    page.reload()
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="from-console"))
    expect(row).to_be_visible()
    assert key not in page.content()
    row.get_by_role("button", name="Revoke").click()
    expect(row.get_by_role("cell", name="revoked")).to_be_visible()
    assert httpx.get(server.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 401


def test_streaming_chat_in_the_playground(tab: Tab) -> None:
    page = tab.open("playground?cell=qwen-chat%40nvidia")
    page.get_by_label("System prompt").fill("You are terse.")
    page.get_by_label("temperature").fill("0.3")
    page.get_by_label("Message").fill("hello from the console")
    page.get_by_role("button", name="Send").click()
    answer = page.get_by_test_id("answer").last
    expect(answer).to_have_text("echo(2): hello from the console")
    metrics = page.get_by_test_id("metrics").last
    expect(metrics).to_contain_text("TTFT")
    expect(metrics.locator("[data-metric=tokens]")).to_have_text(re.compile(r"tokens: \d+ \+ \d+"))
    expect(metrics.locator("[data-metric=cost]")).to_have_text(re.compile(r"cost: 0\.0000\d+"))
    # A second turn carries the history (the fake upstream counts the messages it got).
    page.get_by_label("Message").fill("and again")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_test_id("answer").last).to_have_text("echo(4): and again")
    tab.shots("playground")


def test_compare_two_cells_side_by_side(tab: Tab) -> None:
    page = tab.open("compare")
    page.get_by_label("qwen-chat @ NVIDIA").check()
    page.get_by_label("qwen-chat @ accelerator E").check()
    page.get_by_label("Prompt").fill("which chip is faster")
    page.get_by_role("button", name="Run").click()
    for cell in ("qwen-chat@nvidia", "qwen-chat@biren"):
        pane = page.locator(f"article[data-cell='{cell}']")
        expect(pane.get_by_test_id("answer")).to_have_text("echo(1): which chip is faster")
        expect(pane.get_by_test_id("metrics")).to_contain_text("tokens/s")
        expect(pane.locator("[data-metric=ttft]")).to_have_text(re.compile(r"TTFT: \d+ ms"))
    tab.shots("compare")


def test_usage_chart_and_table(tab: Tab) -> None:
    page = tab.open("usage")
    rows = page.get_by_test_id("usage-table").locator("tbody tr")

    def four_rows() -> bool:  # usage is written in batches: the last answers may land a moment later
        expect(rows.first).to_be_visible()
        if rows.count() >= 4:
            return True
        page.reload()
        return False

    wait_for(four_rows, 20, "two playground turns and two compare answers in the table")
    expect(page.locator("figure[data-chart] canvas").first).to_be_visible()
    expect(page.get_by_role("cell", name="biren").first).to_be_visible()
    tab.shots("usage")


def test_profile_page(tab: Tab) -> None:
    page = tab.open("profile")
    expect(page.get_by_test_id("quota")).to_have_text("unlimited")
    tab.shots("profile")


def test_admin_pages_and_disabling_moderation_asks_first(tab: Tab, console: tuple[Server, str]) -> None:
    server, _ = console
    page = tab.open("admin")
    for name in ("catalogue", "nodes", "users", "codes", "alerts", "audit", "moderation"):
        page.get_by_role("tab", name=re.compile(name, re.I)).click()
        expect(page.get_by_role("tab", name=re.compile(name, re.I))).to_have_attribute("aria-selected", "true")
        page.wait_for_load_state("networkidle")
        tab.shots(f"admin-{name}")
    button = page.locator("button[data-deployment='glm-chat@nvidia']")
    button.click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("[data-state='glm-chat@nvidia']")).to_have_text("on")
    button.click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page.locator("[data-state='glm-chat@nvidia']")).to_have_text("off")
    with server.admin() as admin:
        dep = next(d for d in admin.get("/admin/deployments").json()["data"] if d["name"] == "glm-chat@nvidia")
        assert dep["moderation"] is False
        event = admin.get("/admin/audit", params={"action": "moderation.off"}).json()["data"][0]
        assert event["actor"] == "user:admin" and event["target"] == f"dep_id={dep['id']}"
    page.locator("button[data-deployment='glm-chat@nvidia']").click()  # back on: no question asked
    expect(page.locator("[data-state='glm-chat@nvidia']")).to_have_text("on")


def test_nodes_tab_shows_chips_and_managed_replicas(tab: Tab, console: tuple[Server, str]) -> None:
    """This machine's node with its CPU, and a managed deployment whose engine is not installed here: its replica
    shows as unhealthy, saying why."""
    server, _ = console
    mxn("deploy", "/models/tiny.gguf", "--chip", "cpu", "--engine", "llamacpp", database_url=server.database_url)
    try:
        with server.admin() as admin:

            def failed_to_start() -> bool:  # the controller's first attempt (it looks every 2 s)
                managed = admin.get("/admin/managed").json()["data"]
                return bool(managed and managed[0]["instances"] and managed[0]["instances"][0]["detail"])

            wait_for(failed_to_start, 30, "a replica that cannot start")
        page = tab.open("admin?tab=nodes")
        expect(page.get_by_role("cell", name=re.compile(r"cpu #0"))).to_be_visible()
        expect(page.locator("[data-managed='tiny.gguf@cpu']")).to_have_text("deploying")
        expect(page.get_by_text(re.compile(r"#0 unhealthy .*cannot start"))).to_be_visible(timeout=15_000)
        tab.shots("admin-nodes-managed")
    finally:
        mxn("undeploy", "tiny.gguf@cpu", "--wait", "30", database_url=server.database_url)


def test_a_user_redeems_a_code_then_logs_out(console: tuple[Server, str], browser: Browser) -> None:
    server, _ = console
    mxn(
        "users",
        "create",
        "carol",
        "--password-stdin",
        "--quota",
        "100",
        database_url=server.database_url,
        stdin="carol-password\n",
    )
    with server.admin() as admin:
        (code,) = admin.post("/admin/codes", json={"quota": 500, "count": 1}).json()["codes"]
    t = Tab(browser, server.url)
    page = t.open("profile")
    page.get_by_label("User name").fill("carol")
    page.get_by_label("Password").fill("carol-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Profile")).to_be_visible()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)  # not an admin
    expect(page.get_by_test_id("quota")).to_have_text("100")
    page.get_by_label("Code").fill(code)
    page.get_by_role("button", name="Redeem a code").click()
    expect(page.get_by_test_id("quota")).to_have_text("600")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "mxn_session"]  # the session is gone
    t.close()
