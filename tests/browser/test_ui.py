"""The UI in a real headless Chromium (Debian's ``chromium``, driven by Playwright's Python package;
no browser is downloaded), against the real local control plane, a real operator and workers, and
the server started in this process as in ``tests/test_server.py``.

A missing ``/usr/bin/chromium`` fails these tests (``make test`` installs it): no skip hides it.
Screenshots go to ``tests/browser/artifacts/`` (docs/ui.md shows copies).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Dialog, Page, async_playwright

from kubestep import KubestepClient

from ..harness import E2E, until_phase
from ..test_server import NOBODY, Accounts, Served

pytestmark = pytest.mark.skipif(E2E, reason="runs the server in this process, and operators of its own")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
WAIT_MS = 60_000


def _chromium() -> str:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)"
    return CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        await b.close()


class Dialogs:
    """Every dialog the page opens: confirmations are accepted, anything else is recorded."""

    def __init__(self, page: Page) -> None:
        self.seen: list[tuple[str, str]] = []
        page.on("dialog", self._on)

    async def _on(self, dialog: Dialog) -> None:
        self.seen.append((dialog.type, dialog.message))
        if dialog.type == "confirm":
            await dialog.accept()
        else:
            await dialog.dismiss()


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(url)
    await page.locator("#token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#sign-in").wait_for(state="hidden", timeout=WAIT_MS)


def shot(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def publish(*names: str) -> None:
    """Copies screenshots into docs/ui/, where docs/ui.md shows them."""
    docs = Path(__file__).parents[2] / "docs" / "ui"
    docs.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(shot(name), docs / name)


async def test_list_live_timeline_and_cancel_with_reason(
    serve: Any, accounts: Accounts, admin: KubestepClient, workers: Any, browser: Browser, run_namespace: str
) -> None:
    workers()
    served: Served = await serve(run_namespace)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    dialogs = Dialogs(page)
    await sign_in(page, f"{served.url}/?namespace={run_namespace}", accounts.canceller)
    await page.locator("#live").get_by_text("live").wait_for(timeout=WAIT_MS)
    # The token is in no place a script can read.
    assert await page.evaluate("document.cookie") == ""
    assert await page.evaluate("window.localStorage.length + window.sessionStorage.length") == 0

    # Runs started after the page opened appear and progress without a reload.
    done = (await admin.start("steps", {"count": 3, "seconds": 1}, run_timeout_seconds=120)).id
    long = (await admin.start("until-cancelled", {"seconds": 0.5}, run_timeout_seconds=600)).id
    row = page.locator(f"tr[data-name='{done}']")
    await row.wait_for(timeout=WAIT_MS)
    await row.locator(".phase-Completed").wait_for(timeout=WAIT_MS)
    await page.locator(f"tr[data-name='{long}'] .phase-Running").wait_for(timeout=WAIT_MS)
    assert await page.locator("#cancel-selected").is_visible()  # this token may patch runs
    await page.screenshot(path=shot("runs.png"), full_page=True)

    # The finished run's page: a bar per step.
    await page.locator(f"tr[data-name='{done}'] a").click()
    await page.locator("#run-phase", has_text="Completed").wait_for(timeout=WAIT_MS)
    await page.locator("#timeline .bar").nth(2).wait_for(timeout=WAIT_MS)
    assert await page.locator("#timeline .bar-run").count() == 3

    # The long run: cancel it through the form, with a reason, and watch it end Cancelled.
    await page.goto(f"{served.url}/runs/{run_namespace}/{long}")
    await page.locator("#timeline .bar").first.wait_for(timeout=WAIT_MS)
    assert await page.locator("#timeline .line-deadline").count() == 1
    await page.locator("#cancel-reason").fill("runaway spend, stopped from the UI")
    await page.locator("#cancel-grace").fill("5")
    await page.get_by_role("button", name="Cancel run").click()
    await page.locator("#run-phase", has_text="Cancelled").wait_for(timeout=WAIT_MS)
    await page.locator("#cancel-info .reason", has_text="runaway spend, stopped from the UI").wait_for(timeout=WAIT_MS)
    assert await page.locator("#timeline .line-cancel").count() == 1
    assert ("confirm", f"Cancel run {long}?") in dialogs.seen
    # No cancel-audit policy here: who asked is not known, and the page does not pretend it is.
    who = await page.locator("#cancel-info .who").inner_text()
    assert who.startswith("an unknown user (the cancel-audit policy is off; written by kubestep-server)"), who
    # Its oldest steps were archived as it ran (journal ConfigMaps), which this token may not read: the
    # page says the steps it shows are only the newest, instead of showing them as the whole history.
    archived = sum(ref.steps for ref in (await admin.get_execution(long)).status.journal or [])
    note = page.locator("#steps-note")
    if archived:
        await note.wait_for(timeout=WAIT_MS)
        assert "whole history could not be read" in await note.inner_text()
    else:  # cancelled before any record left status: all of them are on the page
        assert await note.is_hidden()
    await page.screenshot(path=shot("run.png"), full_page=True)
    run = await admin.get_execution(long)
    assert run.status.phase == "Cancelled"
    assert run.cancellation is not None and run.cancellation.message == "runaway spend, stopped from the UI"

    publish("runs.png", "run.png")


async def test_a_reader_sees_no_cancel_and_a_refusal_is_shown(
    serve: Any, accounts: Accounts, admin: KubestepClient, browser: Browser, run_namespace: str
) -> None:
    served: Served = await serve(run_namespace)
    name = (await admin.start("nobody-serves-this", {"n": 1})).id
    page = await browser.new_page()
    await sign_in(page, f"{served.url}/runs/{run_namespace}/{name}", accounts.reader)
    await page.locator("#run-name", has_text=name).wait_for(timeout=WAIT_MS)
    assert not await page.locator("#cancel-form").is_visible()
    # Another namespace: the apiserver's own refusal, as text.
    await page.goto(f"{served.url}/runs/kube-system/{name}")
    problem = page.locator("#problem")
    await problem.wait_for(timeout=WAIT_MS)
    assert "403" in await problem.inner_text()
    assert "forbidden" in (await problem.inner_text()).lower()
    # A way out of a refusal: back to the list, or another token.
    assert await page.locator("#back-to-list").is_visible()
    assert await page.locator("#switch-token").is_visible()
    await page.screenshot(path=shot("refused.png"), full_page=True)
    publish("refused.png")
    await page.locator("#switch-token").click()
    await page.locator("#sign-in").wait_for(timeout=WAIT_MS)  # the cookie is gone: sign in again


async def test_search_then_bulk_cancel_a_selection_and_a_filter_with_a_reason(
    serve: Any, accounts: Accounts, admin: KubestepClient, browser: Browser, run_namespace: str
) -> None:
    """The list served from the shared cache: search narrows it, ticked runs are cancelled with one
    reason behind a confirmation, then every run matching the search; each run is cancelled with
    the signed-in token, and the list shows them end without a reload."""
    served: Served = await serve(run_namespace, cache_namespaces=(run_namespace,))
    for name in ("bulk-a-1", "bulk-a-2", "bulk-b-1"):
        await admin.start(NOBODY, {"n": 1}, name=name)
    for name in ("bulk-a-1", "bulk-a-2", "bulk-b-1"):
        await until_phase(admin, name, "Queued", timeout=60)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    dialogs = Dialogs(page)
    await sign_in(page, f"{served.url}/?namespace={run_namespace}", accounts.canceller)
    await page.locator("tr[data-name='bulk-b-1'] .phase-Queued").wait_for(timeout=WAIT_MS)

    await page.locator("#search").fill("bulk-a")
    await page.get_by_role("button", name="Show").click()
    await page.locator("tr[data-name='bulk-b-1']").wait_for(state="detached", timeout=WAIT_MS)
    await page.locator("tr[data-name='bulk-a-2']").wait_for(timeout=WAIT_MS)
    assert "search=bulk-a" in page.url

    # Without a reason the confirmation is not even asked.
    await page.locator("tr[data-name='bulk-a-1'] input[type=checkbox]").check()
    await page.get_by_role("button", name="Cancel selected").click()
    assert dialogs.seen == []
    await page.locator("#bulk-reason").fill("stopped in bulk from the UI")
    await page.get_by_role("button", name="Cancel selected").click()
    await page.locator("#bulk-summary", has_text="1 of 1 cancelled").wait_for(timeout=WAIT_MS)
    assert dialogs.seen[-1] == (
        "confirm",
        f"Cancel 1 run(s) in {run_namespace}?\nReason: stopped in bulk from the UI",
    )
    await page.locator("tr[data-name='bulk-a-1'] .phase-Cancelled").wait_for(timeout=WAIT_MS)
    assert await page.locator("tr[data-name='bulk-a-2'] .phase-Queued").count() == 1

    await page.get_by_role("button", name="Cancel all matching").click()
    await page.locator("tr[data-name='bulk-a-2'] .phase-Cancelled").wait_for(timeout=WAIT_MS)
    assert "matching search=bulk-a?" in dialogs.seen[-1][1]
    await page.screenshot(path=shot("bulk.png"), full_page=True)
    publish("bulk.png")

    one = await admin.get_execution("bulk-a-1")
    assert one.cancellation is not None and one.cancellation.message == "stopped in bulk from the UI"
    assert (await admin.get_execution("bulk-a-2")).status.phase == "Cancelled"
    assert (await admin.get_execution("bulk-b-1")).status.phase == "Queued"  # not matched, not touched
    assert not [d for d in dialogs.seen if d[0] != "confirm"], dialogs.seen


async def test_user_strings_render_inert(
    serve: Any, accounts: Accounts, admin: KubestepClient, workers: Any, browser: Browser, run_namespace: str
) -> None:
    workers(module="tests.workflows")
    served: Served = await serve(run_namespace)
    name = (await admin.start("echo", {"text": XSS})).id
    await until_phase(admin, name, "Completed", timeout=60)
    queued = (await admin.start("nobody-serves-this", {"text": XSS})).id
    await admin.cancel_execution(queued, reason=XSS)
    page = await browser.new_page()
    dialogs = Dialogs(page)
    await sign_in(page, f"{served.url}/?namespace={run_namespace}", accounts.canceller)
    await page.locator(f"tr[data-name='{name}']").wait_for(timeout=WAIT_MS)
    await page.goto(f"{served.url}/runs/{run_namespace}/{name}")
    await page.locator("#steps pre", has_text="<script>").wait_for(timeout=WAIT_MS)
    assert XSS in await page.locator("#input").inner_text()
    assert XSS in await page.locator("#result").inner_text()
    await page.goto(f"{served.url}/runs/{run_namespace}/{queued}")
    await page.locator("#cancel-info .reason", has_text="<img src=x").wait_for(timeout=WAIT_MS)
    assert await page.locator("#cancel-info .reason").inner_text() == XSS
    assert await page.locator("img").count() == 0
    assert await page.locator("main script").count() == 0
    assert not [d for d in dialogs.seen if d[0] != "confirm"], dialogs.seen


async def test_a_cross_site_form_post_is_refused(
    serve: Any, accounts: Accounts, admin: KubestepClient, browser: Browser, run_namespace: str
) -> None:
    served: Served = await serve(run_namespace)
    name = (await admin.start("nobody-serves-this", {"n": 1})).id
    target = f"{served.url}/api/v1/executions/{name}/cancel?namespace={run_namespace}"
    attacks = {
        # What a cross-site form can send: no custom header, a form content type (or text/plain
        # shaped as JSON).
        "/plain": f'<form method="post" enctype="text/plain" action="{target}">'
        f'<input name=\'{{"reason":"csrf","x":"\' value=\'"}}\'></form>',
        "/urlencoded": f'<form method="post" action="{target}"><input name="reason" value="csrf"></form>',
    }

    async def page_of(request: web.Request) -> web.Response:
        body = attacks[request.path] + '<script src="/go.js"></script>'
        return web.Response(text=body, content_type="text/html")

    async def go(request: web.Request) -> web.Response:
        return web.Response(text="document.forms[0].submit();", content_type="application/javascript")

    evil = web.Application()
    evil.router.add_get("/plain", page_of)
    evil.router.add_get("/urlencoded", page_of)
    evil.router.add_get("/go.js", go)
    other = TestServer(evil, host="127.0.0.1")  # another origin: another port
    await other.start_server()
    try:
        page = await browser.new_page()
        await sign_in(page, f"{served.url}/?namespace={run_namespace}", accounts.canceller)
        for path in attacks:
            async with page.expect_response(lambda r: "/cancel" in r.url, timeout=WAIT_MS) as answer:
                await page.goto(str(other.make_url(path)))
            response = await answer.value
            assert response.status in (401, 403, 415), response.status
    finally:
        await other.close()
    run = await admin.get_execution(name)
    assert not run.cancel_requested
    # The same request from the UI's own origin, with the header, is accepted: the refusals above
    # were the CSRF rules, not a broken route.
    await page.goto(f"{served.url}/?namespace={run_namespace}")
    status = await page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", credentials: "same-origin",
             headers: {"Content-Type": "application/json", "X-Kubestep-CSRF": "1"}, body: "{}"})).status""",
        target,
    )
    assert status == 200
    assert (await admin.get_execution(name)).cancel_requested


async def test_the_budget_shown_is_active_time_only(serve: Any, browser: Browser, run_namespace: str) -> None:
    """The budget counts only active running time and starts again after every wait: the UI shows the
    current segment's use (from ``status.deadline`` or ``budgetRemainingSeconds``), never wall time
    since the run started. The page's own module, run in the browser on made-up runs at a fixed now."""
    served: Served = await serve(run_namespace)
    page = await browser.new_page()
    await page.goto(f"{served.url}/")
    shown = await page.evaluate(
        """async () => {
          const { budget } = await import('/static/common.js');
          const now = Date.parse('2026-12-02T12:00:00Z');
          const run = (status, finished = false) =>
            ({ run_timeout_seconds: 100, finished, status: { started_at: '2026-12-01T12:00:00Z', ...status } });
          const used = (r) => { const b = budget(r, now); return b === null ? null : Math.round(b.used); };
          return {
            running: used(run({ phase: 'Running', deadline: '2026-12-02T12:01:10Z' })),
            requeued: used(run({ phase: 'Queued', budget_remaining_seconds: 25 })),
            waiting: used(run({ phase: 'Waiting' })),
            completed: used(run({ phase: 'Completed', reason: 'Succeeded' }, true)),
            timedOut: used(run({ phase: 'Cancelled', reason: 'RunTimeout' }, true)),
            overdue: used(run({ phase: 'Cancelling', deadline: '2026-12-02T11:59:00Z' })),
          };
        }"""
    )
    # Started a day ago: wall time would say 100 of 100 for every one of them.
    assert shown == {"running": 30, "requeued": 75, "waiting": 0, "completed": None, "timedOut": 100, "overdue": 100}
