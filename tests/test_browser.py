"""The reference web client (`/`), driven in Debian's headless Chromium through Playwright.

Two people open the demo plan in two browsers; each edits an item inline and the other sees
the change within a second of the server acknowledging it. The test saves a screenshot of
the demo plan to .data/artifacts/web-client.png and its tmp dir (and to docs/web-client.png,
the README's, with MAPSTREAM_UPDATE_SCREENSHOT=1).

Only the browser tests need Chromium; they are skipped, with the reason, when it is absent
(`./dev test` installs it where the machine allows). `playwright install` is never used: it
would download a browser.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from server.demo import BUYER, DEMO_PLAN_ID, SELLER, ensure_demo
from server.plans import PlanService
from server.store import Store
from server.tokens import issue
from server.web_client import WEB_DIR
from tests.support import ROOT, auth, token

SCREENSHOT = ROOT / "docs" / "web-client.png"
ARTIFACT = ROOT / ".data" / "artifacts" / "web-client.png"
LIVE_MS = 1000  # the issue's bar: the other page shows an edit within a second of its ack
SLOW_MS = 15_000  # anything else (page load, socket up, audit projection) just has to happen


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
async def demo(store: Store) -> str:
    """The demo plan of `./dev serve`, in the session database."""
    await ensure_demo(PlanService(store), datetime.now(UTC).date())
    return DEMO_PLAN_ID


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    if path is None:
        reason = (
            "Chromium is not installed (no /usr/bin/chromium): the web client's browser tests "
            "need Debian's `chromium` package (`apt-get install chromium`, which ./dev test "
            "does when it runs as root)"
        )
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=path)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Browser, base_url: str, errors: list[str] | None = None) -> Page:
    """A fresh browser context (its own sessionStorage) on the client; script errors and
    console errors (a refused request, a Content-Security-Policy violation) go to `errors`."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        page.on(
            "console",
            lambda msg: errors.append(f"{page.url}: {msg.text}") if msg.type == "error" else None,
        )
    await page.goto(f"{base_url}/")
    return page


async def sign_in(page: Page, user_token: str, plan_id: str) -> None:
    await page.fill("#login-token", user_token)
    await page.fill("#login-plan", plan_id)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=SLOW_MS)


async def edit_item(page: Page, item_id: str, *, milestone: bool = False, **fields: str) -> None:
    """Open the inline editor on an action item (or milestone), change fields, save, and wait
    for the server's ack (the editor closes once every command of the save is acknowledged)."""
    if milestone:
        row = page.locator(f'[data-milestone-id="{item_id}"]')
        await row.locator(".ms-head button.edit").click()
    else:
        row = page.locator(f'[data-item-id="{item_id}"]')
        await row.locator("button.edit").click()
    form = row.locator("form.editor")
    for name, value in fields.items():
        field = form.locator(f'[name="{name}"]')
        if await field.evaluate("el => el.tagName") == "SELECT":
            await field.select_option(value)
        else:
            await field.fill(value)
    await form.locator("button[type=submit]").click()
    try:  # polled every 20 ms, so the one-second window of the other page starts at the ack
        await page.wait_for_function(
            "() => !document.querySelector('form.editor')", polling=20, timeout=SLOW_MS
        )
    except PlaywrightTimeout:
        refusal = await form.locator(".editor-error").text_content()
        raise AssertionError(f"the save was not acknowledged: {refusal!r}") from None


async def shows_within(page: Page, selector: str, text: str | None, ms: int = LIVE_MS) -> None:
    """Wait until `selector` is there with the text `text` (any text: None), checking every
    20 ms (Playwright's `expect` backs off to a check per second: too coarse for 1 s)."""
    try:
        await page.wait_for_function(
            """([selector, text]) => {
                const el = document.querySelector(selector);
                return el !== null && (text === null || el.textContent === text);
            }""",
            arg=[selector, text],
            polling=20,
            timeout=ms,
        )
    except PlaywrightTimeout:
        shown = await page.locator(selector).all_text_contents()
        raise AssertionError(f"{selector} shows {shown!r}, not {text!r}, after {ms} ms") from None


async def plan_state(http: httpx.AsyncClient, plan_id: str) -> dict[str, Any]:
    r = await http.get(f"/plans/{plan_id}", headers=auth(SELLER))
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()["state"]
    return state


def later(iso: str, days: int) -> str:
    return (date.fromisoformat(iso) + timedelta(days=days)).isoformat()


async def test_web_client_is_served_without_a_token_and_needs_nothing_from_elsewhere(
    base_url: str,
):
    async with httpx.AsyncClient(base_url=base_url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert '<script type="module" src="/web/app.js">' in page.text
        # every module the client imports is served, as JavaScript
        sources = sorted(p.name for p in WEB_DIR.glob("*.js"))
        assert "app.js" in sources
        for name in sources:
            r = await http.get(f"/web/{name}")
            assert r.status_code == 200, name
            assert "javascript" in r.headers["content-type"]
            for imported in re.findall(r'from "\./([\w.-]+)"', r.text):
                assert imported in sources, (name, imported)
        css = await http.get("/web/style.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        missing = await http.get("/web/nothing-here.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        escape = await http.get("/web/../app.py")
        assert escape.status_code == 404
    for path in WEB_DIR.iterdir():  # no CDN, no build step: everything is local
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", text)


async def test_two_pages_see_each_others_edits_live(
    browser: Browser, base_url: str, demo: str, tmp_path: Path, http: httpx.AsyncClient
):
    errors: list[str] = []
    seller = await open_page(browser, base_url, errors)
    buyer = await open_page(browser, base_url, errors)
    try:
        await sign_in(seller, token(SELLER), demo)
        await sign_in(buyer, token(BUYER), demo)
        for page in (seller, buyer):
            await expect(page.locator("#plan-title")).to_have_text(
                "Contoso x Northwind: analytics platform evaluation"
            )
            await expect(page.locator("#plan-health")).to_have_text(
                re.compile("on track|at risk|stalled"), timeout=SLOW_MS
            )
            # presence: both people are shown on both pages
            for user in (SELLER, BUYER):
                await expect(page.locator(f'#presence [data-user="{user}"]')).to_have_count(
                    1, timeout=SLOW_MS
                )
        await expect(seller.locator(".milestone")).to_have_count(10)
        # health colours: the questionnaire is 2 days overdue, so its milestone is at risk
        await expect(seller.locator('[data-item-id="dpq"]')).to_have_class(
            re.compile(r"\bhealth-at_risk\b")
        )
        await expect(seller.locator('[data-milestone-id="security"]')).to_have_class(
            re.compile(r"\bhealth-at_risk\b")
        )
        await expect(seller.locator('[data-milestone-id="discovery"]')).to_have_class(
            re.compile(r"\bhealth-done\b")
        )
        await expect(seller.locator('[data-milestone-id="legal"]')).to_have_class(
            re.compile(r"\bhealth-on_track\b")
        )
        await expect(seller.locator("#audit-rows .audit-row").first).to_be_visible(timeout=SLOW_MS)
        shot = await seller.screenshot()
        # the artifact of every run; the README's copy only when asked (it changes each run)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_bytes(shot)
        (tmp_path / "web-client.png").write_bytes(shot)
        if os.environ.get("MAPSTREAM_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.write_bytes(shot)

        # the seller renames an item; the title is shown as text, never as markup
        title = f'Provision the PoC workspace <b>now</b> & "today" {uuid.uuid4().hex[:6]}'
        await edit_item(seller, "poc-env", title=title)
        await shows_within(buyer, '[data-item-id="poc-env"] .item-title', title)
        assert await buyer.locator('[data-item-id="poc-env"] b').count() == 0

        # and back: the buyer moves their own item on and reschedules it, with a reason
        due = later((await plan_state(http, demo))["action_items"]["poc-data"]["due"], 9)
        await edit_item(buyer, "poc-data", status="in_progress", due=due, reason="IT needs a week")
        await shows_within(seller, '[data-item-id="poc-data"] .item-status', "in progress")
        await shows_within(seller, f'[data-item-id="poc-data"] .item-due[data-due="{due}"]', None)

        # the audit trail panel shows both edits, with the reason for the new date
        trail = seller.locator("#audit-rows")
        await expect(trail).to_contain_text(f"'{title}'", timeout=SLOW_MS)
        await expect(trail).to_contain_text("IT needs a week", timeout=SLOW_MS)

        # presence follows the item someone is editing
        await buyer.locator('[data-item-id="redlines"] button.edit').click()
        viewer = seller.locator('[data-item-id="redlines"] .item-viewers .avatar')
        await expect(viewer).to_have_count(1, timeout=SLOW_MS)
        await buyer.keyboard.press("Escape")
        await expect(viewer).to_have_count(0, timeout=SLOW_MS)
        assert errors == []
    finally:
        await seller.context.close()
        await buyer.context.close()


async def test_a_refused_edit_is_explained_and_changes_nothing(
    browser: Browser, base_url: str, demo: str, http: httpx.AsyncClient
):
    page = await open_page(browser, base_url)
    try:
        await sign_in(page, token(SELLER), demo)
        state = await plan_state(http, demo)
        before = state["version"]
        row = page.locator('[data-item-id="roi"]')
        await row.locator("button.edit").click()
        await row.locator('[name="due"]').fill(later(state["action_items"]["roi"]["due"], 3))
        await row.locator("button[type=submit]").click()  # no reason given for the new date
        await expect(row.locator(".editor-error")).to_contain_text("Say why the date moves")
        await row.locator('[name="title"]').fill("   ")
        await row.locator('[name="reason"]').fill("CFO is away")
        await row.locator("button[type=submit]").click()  # the server refuses an empty title
        await expect(row.locator(".editor-error")).to_contain_text("`title` must not be empty")
        after = (await plan_state(http, demo))["version"]
        assert after == before
    finally:
        await page.context.close()


async def test_a_milestone_is_renamed_reassigned_rescheduled_and_completed_inline(
    browser: Browser, base_url: str, demo: str, http: httpx.AsyncClient
):
    page = await open_page(browser, base_url)
    try:
        await sign_in(page, token(SELLER), demo)
        due = later((await plan_state(http, demo))["milestones"]["procurement"]["due"], 5)
        await edit_item(
            page,
            "procurement",
            milestone=True,
            title="Vendor onboarding and PO",
            owner="carl",
            due=due,
            reason="PO approval needs the CFO",
            status="done",
        )
        card = page.locator('[data-milestone-id="procurement"]')
        await expect(card.locator(".ms-title")).to_have_text("Vendor onboarding and PO")
        await expect(card.locator(".ms-status")).to_have_text("done")
        await expect(card.locator(".ms-owner")).to_contain_text("Carl CFO")
        await expect(card.locator(".ms-due")).to_have_attribute("data-due", due)
        m = (await plan_state(http, demo))["milestones"]["procurement"]
        assert (m["title"], m["owner"], m["due"], m["status"]) == (
            "Vendor onboarding and PO",
            "carl",
            due,
            "done",
        )
        assert m["slips"][-1]["reason"] == "PO approval needs the CFO"
    finally:
        await page.context.close()


async def test_an_invite_link_signs_a_buyer_in_with_the_invited_role(
    browser: Browser, base_url: str, demo: str, http: httpx.AsyncClient
):
    r = await http.post(
        f"/plans/{demo}/invites", json={"side": "buyer", "role": "viewer"}, headers=auth(SELLER)
    )
    assert r.status_code == 201, r.text
    page = await open_page(browser, base_url)
    try:
        await page.goto(f"{base_url}/#invite={r.json()['code']}")
        await page.fill("#invite-name", "Vera Viewer")
        await page.fill("#invite-email", "vera.viewer@contoso.example")
        await page.click("#invite-form button[type=submit]")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=SLOW_MS)
        await expect(page.locator(".orgs")).to_contain_text("you are Vera Viewer, buyer viewer")
        await expect(page.locator(".milestone")).to_have_count(10)
        assert await page.locator("button.edit").count() == 0  # a viewer edits nothing
        assert "invite=" not in page.url  # the one-time code leaves the address bar
        stored: Any = await page.evaluate("sessionStorage.getItem('mapstream.token')")
        assert isinstance(stored, str) and stored.count(".") == 2
        await page.reload()  # the tab remembers the token and the plan
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=SLOW_MS)
        await expect(page.locator(".orgs")).to_contain_text("you are Vera Viewer, buyer viewer")
    finally:
        await page.context.close()


async def test_a_bad_token_or_a_foreign_plan_is_explained(
    browser: Browser, base_url: str, demo: str
):
    page = await open_page(browser, base_url)
    try:
        forged = issue(SELLER, "another-secret-that-this-server-never-had-0123", 3600)
        await page.fill("#login-token", forged)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#login-error")).to_contain_text(
            "Your token was refused", timeout=SLOW_MS
        )
        await page.fill("#login-token", token("stranger@elsewhere.example"))
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#plan-head .error")).to_contain_text(
            f"no plan '{demo}' that you can see", timeout=SLOW_MS
        )
    finally:
        await page.context.close()
