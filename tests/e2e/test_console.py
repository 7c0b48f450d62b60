"""The web console (``/ui``) in a real browser: Debian's Chromium driven by Playwright.

Against real ``lstm-serve serve`` processes with the bundled models. Screenshots of every
page at 1280 and 390 pixels wide go to ``$LSTM_SERVE_ARTIFACTS/console`` (default
``tests/artifacts/console``, git-ignored).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Request,
    Response,
    sync_playwright,
)

from tests.e2e.cluster import running_cluster
from tests.e2e.server import REPO, Server, running_server
from tests.redis_process import RedisDatabases

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("LSTM_SERVE_ARTIFACTS", REPO / "tests" / "artifacts")) / "console"
PAGES = ("overview", "models", "forecast", "text", "sessions")
WIDTHS = (1280, 390)
WAIT_MS = 30_000
"""How long to wait for something the page is about to show (a wait, not an assertion)."""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make services installs Debian's package)")
        pytest.skip("chromium is not installed (make services installs Debian's package)")
    with sync_playwright() as p:
        # Debian's Chromium, never a downloaded build; no sandbox when running as root.
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server({"LSTM_SERVE_REQUEST_LOG": "false"}, tmp_path_factory.mktemp("logs")) as s:
        yield s


@dataclass
class Watched:
    """A page and everything that went wrong on it: console errors, uncaught exceptions,
    failed requests, HTTP errors, and any request to another host."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)

    def clean(self, allowed: tuple[str, ...] = ()) -> None:
        left = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not left, left


def watch(browser: Browser, server_url: str, width: int, key: str | None = None) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": 900})
    if key is not None:
        context.add_init_script(f"sessionStorage.setItem('lstm-serve-key', {key!r})")
    page = context.new_page()
    origin = urlsplit(server_url).netloc
    w = Watched(page, origin)

    def on_console(m: ConsoleMessage) -> None:
        if m.type == "error":
            w.errors.append(f"console: {m.text}")

    def on_page_error(e: Error) -> None:
        w.errors.append(f"pageerror: {e}")

    def on_failed(r: Request) -> None:
        w.errors.append(f"failed: {r.url} {r.failure}")

    def on_response(r: Response) -> None:
        if r.status >= 400:
            w.errors.append(f"http {r.status}: {r.url}")

    def on_request(r: Request) -> None:
        url = urlsplit(r.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != origin:
            w.errors.append(f"external request: {r.url}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    page.on("request", on_request)
    return w


def open_page(w: Watched, url: str, name: str) -> None:
    w.page.goto(f"{url}/ui#{name}")
    ready = {
        "overview": "() => document.getElementById('plot-sessions').data?.[0]?.x.length > 2",
        "models": "() => document.querySelectorAll('#models-list .js-plotly-plot').length >= 3",
        "forecast": "() => document.getElementById('fc-start').options.length > 300",
        "text": "() => document.getElementById('tx-model').options.length > 0",
        "sessions": "() => document.getElementById('ss-table').dataset.count !== undefined",
    }[name]
    w.page.wait_for_function(ready, timeout=WAIT_MS)


def trace_lengths(page: Page, plot_id: str) -> dict[str, int]:
    lengths: dict[str, int] = page.evaluate(
        "(id) => Object.fromEntries(document.getElementById(id).data"
        ".map(t => [t.name, t.y.filter(v => v !== null).length]))",
        plot_id,
    )
    return lengths


# -- every page, both widths -------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_loads_clean_and_fits(browser: Browser, server: Server, width: int) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    w = watch(browser, server.url, width)
    for name in PAGES:
        open_page(w, server.url, name)
        assert w.page.is_visible(f"#page-{name}")
        overflow = w.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{name} at {width}px scrolls sideways by {overflow}px"
        w.page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    w.clean()
    w.page.context.close()


# -- overview ------------------------------------------------------------------------------


def test_overview_plots_gain_points_while_a_client_steps(browser: Browser, server: Server) -> None:
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            sid = c.post("/v1/sessions", json={"model": "temps_gru", "version": 1}).json()["id"]
            while not stop.is_set():
                c.post(f"/v1/sessions/{sid}/step", json={"inputs": [[10.0, 4.0]]})
            c.delete(f"/v1/sessions/{sid}")

    w = watch(browser, server.url, 1280)
    open_page(w, server.url, "overview")
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        step_route = "/v1/sessions/{session_id}/step"
        w.page.wait_for_function(
            """(route) => {
                const rps = document.getElementById('plot-rps').data.find(t => t.name === route);
                const batch = document.getElementById('plot-batch').data
                    .find(t => t.name === 'temps_gru:1');
                return rps && rps.y.filter(v => v > 0).length >= 3
                    && batch && batch.y.filter(v => v >= 1).length >= 3;
            }""",
            arg=step_route,
            timeout=WAIT_MS,
        )
        before = trace_lengths(w.page, "plot-latency")
        w.page.wait_for_function(
            "(n) => document.getElementById('plot-latency').data[0].y"
            ".filter(v => v !== null).length > n",
            arg=before["p50"],
            timeout=WAIT_MS,
        )
        assert trace_lengths(w.page, "plot-queue")["p99"] >= 1
        assert trace_lengths(w.page, "plot-sessions")["active"] >= 3
        assert "Ready" in w.page.inner_text("#health")
    finally:
        stop.set()
        thread.join(15)
    w.clean()
    w.page.context.close()


# -- forecast playground -------------------------------------------------------------------


def test_forecast_draws_each_streamed_day_and_the_rollout(browser: Browser, server: Server) -> None:
    days, rollout, start = 10, 5, 30
    w = watch(browser, server.url, 1280)
    open_page(w, server.url, "forecast")
    w.page.select_option("#fc-model", "temps_gru@1")
    w.page.select_option("#fc-start", str(start))
    w.page.fill("#fc-days", str(days))
    w.page.fill("#fc-rollout", str(rollout))
    w.page.click("#fc-run")
    w.page.wait_for_function(
        "() => document.getElementById('fc-summary').textContent.includes('roll-out')",
        timeout=WAIT_MS,
    )
    for plot in ("fc-plot-0", "fc-plot-1"):
        lengths = trace_lengths(w.page, plot)
        assert lengths["actual"] == days
        assert lengths["predicted (one day ahead)"] == days
        assert lengths["roll-out"] == rollout
    # What the page drew is what the API answers for the same real days.
    sample = httpx.get(f"{server.url}/v1/models/temps_gru/sample").json()
    rows = sample["values"][start : start + days]
    drawn = w.page.evaluate("() => document.getElementById('fc-plot-0').data[1].y")
    with httpx.Client(base_url=server.url, timeout=10) as c:
        sid = c.post("/v1/sessions", json={"model": "temps_gru", "version": 1}).json()["id"]
        outputs = c.post(f"/v1/sessions/{sid}/step", json={"inputs": rows}).json()["outputs"]
        rolled = c.post(f"/v1/sessions/{sid}/generate", json={"steps": rollout}).json()
        c.delete(f"/v1/sessions/{sid}")
    assert drawn == pytest.approx([o[0] for o in outputs], abs=1e-4)
    drawn_rollout = w.page.evaluate("() => document.getElementById('fc-plot-0').data[2].y")
    assert drawn_rollout == pytest.approx([o[0] for o in rolled["outputs"]], abs=1e-4)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    w.page.screenshot(path=str(ARTIFACTS / "forecast-streamed-1280.png"), full_page=True)
    w.clean()
    w.page.context.close()


def test_forecast_from_pasted_csv(browser: Browser, server: Server) -> None:
    w = watch(browser, server.url, 390)
    open_page(w, server.url, "forecast")
    w.page.select_option("#fc-model", "temps_gru@1")
    w.page.select_option("#fc-source", "csv")
    w.page.fill("#fc-csv", "temp_min,temp_max\n1,5\n2,6\n3,7\n2.5,8\n")
    w.page.fill("#fc-days", "4")
    w.page.fill("#fc-rollout", "3")
    w.page.click("#fc-run")
    w.page.wait_for_function(
        "() => document.getElementById('fc-summary').textContent.includes('roll-out')",
        timeout=WAIT_MS,
    )
    lengths = trace_lengths(w.page, "fc-plot-0")  # temp_max: the header's second column
    assert (lengths["actual"], lengths["predicted (one day ahead)"], lengths["roll-out"]) == (
        4,
        4,
        3,
    )
    actual = w.page.evaluate("() => document.getElementById('fc-plot-0').data[0].y")
    assert actual == [5, 6, 7, 8]
    w.clean()
    w.page.context.close()


# -- text playground -----------------------------------------------------------------------


def test_text_playground_streams_what_generate_gives(browser: Browser, server: Server) -> None:
    options: dict[str, Any] = {"context": "class ", "steps": 40, "temperature": 0.8, "seed": 7}
    w = watch(browser, server.url, 1280)
    open_page(w, server.url, "text")
    w.page.fill("#tx-prompt", options["context"])
    w.page.fill("#tx-steps", str(options["steps"]))
    w.page.fill("#tx-temperature", str(options["temperature"]))
    w.page.fill("#tx-seed", str(options["seed"]))
    w.page.click("#tx-run")
    w.page.wait_for_function(
        "() => document.getElementById('tx-output').dataset.state === 'done'", timeout=WAIT_MS
    )
    streamed = w.page.evaluate(
        "() => [...document.querySelectorAll('#tx-output .tok')].map(s => s.textContent).join('')"
    )
    expected = httpx.post(
        f"{server.url}/v1/models/pydoc_char_lstm/generate", json=options, timeout=30
    ).json()["text"]
    assert streamed == expected
    assert len(streamed) == options["steps"]
    w.page.hover("#tx-output .tok[data-step='3']")
    assert w.page.locator("#tx-step table.top tr").count() == 5  # that step's top tokens
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    w.page.screenshot(path=str(ARTIFACTS / "text-streamed-1280.png"), full_page=True)
    w.clean()
    w.page.context.close()


# -- sessions ------------------------------------------------------------------------------


def test_sessions_page_forks_and_deletes(browser: Browser, server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        sid = c.post("/v1/sessions", json={"model": "weather_lstm"}).json()["id"]
        c.post(f"/v1/sessions/{sid}/step", json={"inputs": [[0.0, 10.0, 4.0, 3.0]] * 3})
        before = {s["id"] for s in c.get("/v1/sessions").json()["sessions"]}
        w = watch(browser, server.url, 390)
        open_page(w, server.url, "sessions")
        row = w.page.locator(f"#ss-table tr[data-id='{sid}']")
        assert row.locator("td.steps").inner_text() == "3"
        row.locator("button[data-action='fork']").click()
        w.page.wait_for_function(
            "(n) => Number(document.getElementById('ss-table').dataset.count) === n",
            arg=len(before) + 1,
            timeout=WAIT_MS,
        )
        after = {s["id"]: s for s in c.get("/v1/sessions").json()["sessions"]}
        (forked,) = set(after) - before
        assert after[forked]["steps"] == 3 and after[forked]["model"] == "weather_lstm"
        assert w.page.locator(f"#ss-table tr[data-id='{forked}']").count() == 1

        row.locator("button[data-action='delete']").click()
        w.page.wait_for_function(
            "(n) => Number(document.getElementById('ss-table').dataset.count) === n",
            arg=len(before),
            timeout=WAIT_MS,
        )
        assert c.get(f"/v1/sessions/{sid}").status_code == 404
        assert c.get(f"/v1/sessions/{forked}").status_code == 200
        c.delete(f"/v1/sessions/{forked}")
    w.clean()
    w.page.context.close()


# -- keyboard ------------------------------------------------------------------------------


def focused(page: Page) -> str:
    text: str = page.evaluate(
        "() => { const e = document.activeElement; return e.id || e.textContent.trim(); }"
    )
    return text


@pytest.mark.parametrize("width", WIDTHS)
def test_keyboard_alone_reaches_every_page_and_runs_a_generation(
    browser: Browser, server: Server, width: int
) -> None:
    w = watch(browser, server.url, width)
    open_page(w, server.url, "overview")
    page = w.page
    page.keyboard.press("Tab")
    assert focused(page) == "Skip to content"
    seen = []
    for _ in range(len(PAGES)):
        page.keyboard.press("Tab")
        seen.append(focused(page))
        outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", f"no visible focus on {seen[-1]}"
    assert seen == ["Overview", "Models", "Forecast", "Text", "Sessions"]
    page.keyboard.press("Shift+Tab")  # back to "Text"
    page.keyboard.press("Enter")
    page.wait_for_function("() => !document.getElementById('page-text').hidden", timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.getElementById('tx-model').options.length > 0", timeout=WAIT_MS
    )
    # Tab through the form to the Generate button and press it.
    for _ in range(20):
        page.keyboard.press("Tab")
        if focused(page) == "tx-run":
            break
    assert focused(page) == "tx-run"
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('tx-output').dataset.state === 'done'", timeout=WAIT_MS
    )
    # The output takes focus next; arrow keys walk the steps.
    page.keyboard.press("Tab")
    assert focused(page) == "tx-output"
    page.keyboard.press("ArrowLeft")
    assert page.locator("#tx-output .tok.active").count() == 1
    w.clean()
    w.page.context.close()


# -- API keys on ---------------------------------------------------------------------------

KEY = "console-test-key-1"


def test_console_with_api_keys(browser: Browser, tmp_path: Path) -> None:
    env = {"LSTM_SERVE_API_KEYS": f"{KEY},other-key", "LSTM_SERVE_REQUEST_LOG": "false"}
    with running_server(env, tmp_path) as keyed:
        # The JSON routes pass the gate like every /v1 route; the page itself needs no key.
        assert httpx.get(f"{keyed.url}/v1/metrics").status_code == 401
        assert httpx.get(f"{keyed.url}/v1/models/temps_gru/sample").status_code == 401
        assert httpx.get(f"{keyed.url}/ui").status_code == 200
        auth = {"Authorization": f"Bearer {KEY}"}
        metrics = httpx.get(f"{keyed.url}/v1/metrics", headers=auth).json()
        assert metrics["ready"]["status"] == "ready"
        assert any(f["name"] == "lstm_serve_requests" for f in metrics["metrics"])
        no_sample = httpx.get(f"{keyed.url}/v1/models/pydoc_char_lstm/sample", headers=auth)
        assert no_sample.status_code == 404
        assert no_sample.json()["code"] == "model_not_found"

        w = watch(browser, keyed.url, 1280)
        w.page.goto(f"{keyed.url}/ui#forecast")
        w.page.wait_for_selector("#key-form", state="visible", timeout=WAIT_MS)
        w.page.fill("#key-input", "wrong")
        w.page.keyboard.press("Enter")
        w.page.wait_for_function(
            "() => document.getElementById('key-error').textContent.includes('refused')",
            timeout=WAIT_MS,
        )
        w.page.fill("#key-input", KEY)
        w.page.keyboard.press("Enter")
        w.page.wait_for_function(
            "() => document.getElementById('fc-start').options.length > 300", timeout=WAIT_MS
        )
        assert w.page.evaluate("() => sessionStorage.getItem('lstm-serve-key')") == KEY
        # HTTP with the bearer key, the stream over the bearer.<key> subprotocol.
        w.page.select_option("#fc-model", "weather_lstm@1")
        w.page.fill("#fc-days", "5")
        w.page.fill("#fc-rollout", "2")
        w.page.click("#fc-run")
        w.page.wait_for_function(
            "() => document.getElementById('fc-summary').textContent.includes('roll-out')",
            timeout=WAIT_MS,
        )
        assert trace_lengths(w.page, "fc-plot-0")["predicted (one day ahead)"] == 5
        sessions = httpx.get(f"{keyed.url}/v1/sessions", headers=auth).json()["sessions"]
        assert len(sessions) == 1 and sessions[0]["steps"] == 5
        other = {"Authorization": "Bearer other-key"}
        assert httpx.get(f"{keyed.url}/v1/sessions", headers=other).json()["sessions"] == []
        # A reload keeps the key (this tab's session storage): no prompt again.
        w.page.reload()
        open_page(w, keyed.url, "sessions")
        assert w.page.is_hidden("#key-form")
        assert w.page.locator("#ss-table tbody tr[data-id]").count() == 1
        # The only failures were the key probes: the first load without a key, the wrong key.
        probes = [e for e in w.errors if e.startswith("http 401") and e.endswith("/v1/models")]
        assert len(probes) == 2
        w.clean(allowed=("401",))
        w.page.context.close()


# -- a replica set behind nginx ------------------------------------------------------------


@pytest.mark.redis
def test_console_over_replicas_behind_nginx(
    browser: Browser, tmp_path: Path, redis_databases: RedisDatabases
) -> None:
    """Two replicas sharing Redis behind ``deploy/nginx.conf``: the page, its polling, the
    forecast stream (WebSocket through nginx) and the sessions page, whichever replica
    answers each request."""
    with redis_databases.database() as url, running_cluster(url, tmp_path, 2) as cluster:
        w = watch(browser, cluster.url, 1280)
        open_page(w, cluster.url, "overview")
        replicas = set()
        for _ in range(4):
            replicas.add(httpx.get(f"{cluster.url}/v1/metrics").json()["replica"])
        assert len(replicas) == 2  # nginx spreads the polls over both
        open_page(w, cluster.url, "forecast")
        w.page.select_option("#fc-model", "weather_lstm@1")
        w.page.fill("#fc-days", "6")
        w.page.fill("#fc-rollout", "3")
        w.page.click("#fc-run")
        w.page.wait_for_function(
            "() => document.getElementById('fc-summary').textContent.includes('roll-out')",
            timeout=WAIT_MS,
        )
        assert trace_lengths(w.page, "fc-plot-1")["predicted (one day ahead)"] == 6
        open_page(w, cluster.url, "sessions")
        assert w.page.locator("#ss-table tbody tr[data-id]").count() == 1
        w.page.screenshot(path=str(ARTIFACTS / "sessions-nginx-1280.png"))
        w.clean()
        w.page.context.close()
