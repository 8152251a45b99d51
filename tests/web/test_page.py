"""The web chat page in Chromium (Debian's, driven by Playwright for Python) against a real `agentctl serve` whose
model is the project's simulator."""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from agentctl.simulator.process import RunningSimulator
from server.web.routes import ASSETS_PATH, PAGE_CSP, PAGE_PATH, STATIC_DIR
from tests.chat.conftest import Conversation, serve_with_model
from tests.cli.budgets import set_budget
from tests.support import ApiClient, CuttingProxy, unique_email
from tests.web.conftest import AXE, DESKTOP, PHONE, SCREENSHOTS, Tab

pytestmark = pytest.mark.slow
PASSWORD = ApiClient.password


def sign_up(page: Page, email: str | None = None) -> str:
    email = email or unique_email("web")
    page.get_by_role("button", name="New here? Create an account").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#sessions li")).to_have_count(1)
    return email


def send(page: Page, text: str, *, accepted: bool = True) -> None:
    """Type ``text`` and press Enter; ``accepted``: until its answer has started on the page."""
    answers = page.locator("article.assistant").count()
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")
    if accepted:
        expect(page.locator("article.assistant")).to_have_count(answers + 1)


def last_answer(page: Page):
    return page.locator("article.assistant").last


def wait_words(page: Page, count: int) -> None:
    """Until the streaming answer shows more than ``count`` words."""
    page.wait_for_function(
        "n => (document.querySelector('article.assistant .markdown')?.textContent || '').split(' ').length > n",
        arg=count,
    )


def wait_done(page: Page, status: str = "done", timeout: float = 30_000) -> None:
    expect(last_answer(page)).to_have_attribute("data-status", status, timeout=timeout)


def history_reader(api: ApiClient, page: Page) -> Callable[[], list[dict]]:
    """Reads the page's chat as the server recorded it, through the JSON API with the page's own session."""
    session_id = page.evaluate("localStorage.getItem('agentctl.session')")
    email = (page.locator("#who").text_content() or "").removeprefix("Signed in as ")  # in the drawer on phones
    token = api.login(email)["access_token"]
    session_token = api.request("POST", f"/auth/session/{session_id}/token", token=token).json()["token"]
    return lambda: api.request("GET", "/chatbot/messages", token=session_token["access_token"]).json()["messages"]


def history_answer(api: ApiClient, page: Page) -> str:
    """The last answer as the server recorded it."""
    messages = history_reader(api, page)()
    return next(m["content"] for m in reversed(messages) if m["role"] == "assistant")


def assert_shown_once_as_recorded(page: Page, api: ApiClient, *, words: int) -> None:
    """One answer on the page, the whole of it: what the server recorded, ``words`` long."""
    expect(page.locator("article.assistant")).to_have_count(1)
    shown = " ".join(last_answer(page).locator(".markdown").inner_text().split())
    assert shown == " ".join(history_answer(api, page).split())
    assert len(shown.split()) == words


def test_sign_up_then_an_answer_streams_as_markdown_with_its_usage(new_tab, web_server: ApiClient) -> None:
    """Sign up in the page, send with Enter (Shift+Enter is a newline), watch the answer stream and end."""
    tab: Tab = new_tab()
    page = tab.open()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    sign_up(page)
    box = page.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    assert box.input_value() == "first line\nsecond line"
    box.press("Enter")
    expect(page.locator("article.user .plain").last).to_have_text("first line\nsecond line")
    wait_done(page)
    answer = last_answer(page)
    assert answer.locator(".markdown").inner_text().strip().startswith("first line")
    answer.locator(".usage summary").click()
    expect(answer.locator(".usage dl")).to_contain_text("Tokens out")
    assert answer.locator(".usage dd").nth(1).inner_text().isdigit()
    assert tab.errors == []


def test_a_scripted_tool_call_shows_inline_and_ask_human_is_answered_in_the_input(
    new_tab, simulator: RunningSimulator
) -> None:
    simulator.configure(
        {
            "script": [
                {"match": "multiply", "tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
                {
                    "match": "plan a trip",
                    "tool_calls": [{"name": "ask_human", "arguments": {"question": "Which city?"}}],
                },
            ]
        }
    )
    page = new_tab().open()
    sign_up(page)
    send(page, "please multiply six by seven")
    wait_done(page)
    tool = last_answer(page).locator("details.tool[data-tool='calculator']")
    expect(tool).to_be_visible()
    expect(tool.locator(".tool-status")).to_have_text(" done")
    tool.locator("summary").click()
    expect(tool.locator(".tool-result")).to_contain_text("42")
    expect(last_answer(page).locator(".markdown")).to_contain_text("42")

    send(page, "plan a trip for me")
    expect(last_answer(page).locator(".question")).to_contain_text("Which city?")
    expect(page.get_by_label("Message", exact=True)).to_have_attribute("placeholder", "Answer the agent's question")
    wait_done(page)
    send(page, "Lisbon")
    wait_done(page)
    expect(last_answer(page).locator(".markdown")).to_contain_text("Lisbon")


def test_stop_mid_answer_keeps_the_partial_answer(new_tab, simulator: RunningSimulator) -> None:
    """Esc stops the answer (the Stop button's action); the partial answer stays, marked stopped."""
    simulator.configure({"tokens_per_second": 20, "answer_tokens": 200})
    page = new_tab().open()
    sign_up(page)
    send(page, "tell me a long story")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    wait_words(page, 8)
    page.keyboard.press("Escape")
    wait_done(page, "stopped")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    partial = last_answer(page).locator(".markdown").inner_text()
    assert 8 <= len(partial.split()) < 150
    expect(last_answer(page).locator(".note")).to_have_text("Stopped.")


def test_reload_mid_answer_then_the_answer_completes_exactly_once(
    new_tab, simulator: RunningSimulator, web_server: ApiClient
) -> None:
    simulator.configure({"tokens_per_second": 40, "answer_tokens": 120})
    page = new_tab().open()
    sign_up(page)
    send(page, "an answer worth keeping")
    wait_words(page, 10)
    page.reload()
    page.wait_for_function("() => document.documentElement.dataset.ready === 'true'")
    expect(page.locator("#app-view")).to_be_visible()  # still signed in: the refresh cookie survived the reload
    wait_done(page)
    expect(page.locator("article.user")).to_have_count(1)
    expect(page.locator("article.assistant")).to_have_count(1)
    shown = last_answer(page).locator(".markdown").inner_text()
    recorded = history_answer(web_server, page)
    assert " ".join(shown.split()) == " ".join(recorded.split())
    assert len(recorded.split()) == 120
    # After it ended, a reload shows it once, from the history.
    page.reload()
    page.wait_for_function("() => document.documentElement.dataset.ready === 'true'")
    expect(page.locator("article.assistant")).to_have_count(1)
    assert " ".join(last_answer(page).locator(".markdown").inner_text().split()) == " ".join(recorded.split())


def test_a_lost_network_mid_answer_resumes_where_it_stopped(
    new_tab, simulator: RunningSimulator, web_server: ApiClient
) -> None:
    """The page talks through a proxy that cuts its first answer stream part-way, as a lost network does: the page
    rejoins with Last-Event-ID and the answer ends whole, once."""
    simulator.configure({"tokens_per_second": 30, "answer_tokens": 90})
    proxy = CuttingProxy(web_server.server.port, cut_request=b"GET /api/v1/chatbot/runs/", cut_after=4000)
    try:
        tab: Tab = new_tab(base_url=proxy.base_url)
        page = tab.open()
        rejoins: list[str] = []
        page.on(
            "request",
            lambda request: (
                rejoins.append(request.headers.get("last-event-id", "")) if request.url.endswith("/stream") else None
            ),
        )
        tab.context.set_offline(True)
        expect(page.locator("#offline")).to_be_visible()
        tab.context.set_offline(False)
        expect(page.locator("#offline")).to_be_hidden()
        sign_up(page)
        send(page, "keep going while the network drops")
        wait_done(page)
        assert proxy.cuts == 1
        assert len(rejoins) == 2, rejoins
        assert rejoins[0] == ""  # the first follow starts at the beginning, the rejoin after the last event seen
        assert rejoins[1].rpartition(":")[2].isdigit(), rejoins
        assert_shown_once_as_recorded(page, web_server, words=90)
    finally:
        proxy.close()


def test_an_answer_that_finished_while_the_page_was_away_is_there(
    new_tab, simulator: RunningSimulator, web_server: ApiClient
) -> None:
    """A tab that sleeps, or a laptop whose network goes, loses its stream mid-answer and cannot follow again; the run
    goes on and ends on the server meanwhile. When the page is back it shows the whole answer, once. (The browser's
    offline mode keeps open streams open, so a proxy cuts the stream while the page is offline.)"""
    simulator.configure({"tokens_per_second": 30, "answer_tokens": 90})
    proxy = CuttingProxy(web_server.server.port, cut_request=b"GET /api/v1/chatbot/runs/", cut_after=4000)
    try:
        tab: Tab = new_tab(base_url=proxy.base_url)
        page = tab.open()
        sign_up(page)
        send(page, "finish this while I am away")
        wait_words(page, 5)
        tab.context.set_offline(True)  # the stream is cut a moment later; following again fails while offline
        read_history = history_reader(web_server, page)
        deadline = time.monotonic() + 20
        while not [message for message in read_history() if message["role"] == "assistant"]:  # it ends meanwhile
            assert time.monotonic() < deadline, "the answer never ended on the server"
            time.sleep(0.2)
        assert proxy.cuts == 1
        shown_while_away = len(last_answer(page).locator(".markdown").inner_text().split())
        assert shown_while_away < 90, "the page received the whole answer while away: nothing was tested"
        tab.context.set_offline(False)
        wait_done(page)
        assert_shown_once_as_recorded(page, web_server, words=90)
    finally:
        proxy.close()


def test_sessions_new_switch_rename_delete(new_tab) -> None:
    page = new_tab().open()
    sign_up(page)
    send(page, "alpha question")
    wait_done(page)
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#sessions li")).to_have_count(2)
    expect(page.locator("article")).to_have_count(0)
    send(page, "bravo question")
    wait_done(page)
    # Each chat is named after its first message; back to the first one: only its messages.
    expect(page.locator("#sessions .session-open")).to_have_text(["bravo question", "alpha question"])
    page.get_by_role("button", name="alpha question", exact=True).click()
    expect(page.locator("article.user .plain")).to_have_text(["alpha question"])
    expect(page.locator("#session-title")).to_have_text("alpha question")
    page.get_by_role("button", name="Rename chat alpha question").click()
    page.get_by_role("textbox", name="Name").fill("Renamed chat")
    page.get_by_role("button", name="Rename", exact=True).click()
    expect(page.locator("#session-title")).to_have_text("Renamed chat")
    expect(page.get_by_role("button", name="Renamed chat", exact=True)).to_have_attribute("aria-current", "page")
    page.get_by_role("button", name="Delete chat Renamed chat").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator("#sessions li")).to_have_count(1)
    expect(page.locator("article.user .plain")).to_have_text(["bravo question"])


def test_memory_panel_lists_searches_and_forgets(new_tab, web_server: ApiClient) -> None:
    email, user_token = web_server.new_user()
    conversation = Conversation(web_server, user_token=user_token)
    facts = ["My name is Ada.", "I live in Lisbon.", "I like green tea."]
    assert conversation.send(" ".join(facts)).status_code == 200
    deadline = time.monotonic() + 30
    while len(web_server.request("GET", "/memories", token=user_token).json()["memories"]) < 3:
        assert time.monotonic() < deadline, "the memories were never written"
        time.sleep(0.2)
    page = new_tab().open()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Memory").click()
    dialog = page.get_by_role("dialog", name="What the agent remembers about you")
    expect(dialog.locator("li")).to_have_count(3)
    dialog.get_by_role("button", name="Forget: I live in Lisbon.").click()
    expect(dialog.locator("li")).to_have_count(2)
    expect(dialog).not_to_contain_text("Lisbon")
    dialog.get_by_label("Search memories").fill("tea")
    dialog.get_by_role("button", name="Search").click()
    expect(dialog.locator("li").first).to_contain_text("green tea")
    dialog.get_by_label("Search memories").fill("")
    dialog.get_by_role("button", name="Search").click()
    expect(dialog.locator("li")).to_have_count(2)
    dialog.get_by_role("button", name="Forget everything").click()
    page.get_by_role("button", name="Cancel").click()  # the confirmation can be refused
    expect(dialog.locator("li")).to_have_count(2)
    dialog.get_by_role("button", name="Forget everything").click()
    page.locator("#confirm-ok").click()
    expect(dialog.locator("#memory-status")).to_have_text("Forgot 2 memories.")
    expect(dialog.locator("li")).to_have_count(0)
    assert web_server.request("GET", "/memories", token=user_token).json()["memories"] == []


def open_keys(page: Page) -> Locator:
    """The API keys screen, opened from the sidebar (a drawer on a phone)."""
    opener = page.get_by_role("button", name="API keys")
    if not opener.is_visible():
        page.get_by_role("button", name="Chats").click()
    try:
        opener.click(timeout=5000)
    except PlaywrightTimeoutError:  # the drawer was closing as it was looked at (a loaded machine): open it again
        page.get_by_role("button", name="Chats").click()
        opener.click()
    dialog = page.get_by_role("dialog", name="API keys")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    return dialog


def close_keys(page: Page) -> None:
    page.get_by_role("button", name="Close API keys").click()
    expect(page.get_by_role("dialog", name="API keys")).to_be_hidden()


def test_api_keys_created_shown_once_used_and_revoked_on_a_phone(new_tab, web_server: ApiClient) -> None:
    """Drives Debian's Chromium (Playwright) on the phone viewport: sign up, create a chat key in the keys screen,
    copy it (the real clipboard), see it once; the test then calls the same server's OpenAI-compatible /v1/models with
    it through httpx, the list shows when it was last used, and once revoked in the page the key is refused. A name of
    only spaces gets the server's reason in plain words."""
    tab: Tab = new_tab(viewport=PHONE)
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=tab.base_url)
    page = tab.open()
    sign_up(page)
    dialog = open_keys(page)
    expect(dialog.locator("#keys-status")).to_have_text("You have no API keys.")
    expect(dialog.get_by_role("checkbox", name="Chat")).to_be_checked()
    expect(dialog.get_by_role("checkbox", name="Memories")).not_to_be_checked()

    dialog.get_by_label("Name", exact=True).fill("   ")
    dialog.get_by_role("button", name="Create key").click()
    # The server's refusal, in words: its own sentence, or the page's rule when it answers with a validator's terms.
    expect(dialog.get_by_role("alert")).to_have_text(re.compile(r"^Name: [^`]*(spaces|white space)[^`]*\.$"))
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    expect(dialog.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(dialog.locator("li")).to_have_count(0)

    dialog.get_by_label("Name", exact=True).fill("deploy bot")
    dialog.get_by_role("button", name="Create key").click()
    shown = dialog.get_by_role("textbox", name="Your new key")
    expect(shown).to_be_focused()
    expect(shown).to_have_attribute("readonly", "")
    key = shown.input_value()
    assert re.fullmatch(r"agentctl_[A-Za-z0-9_-]{43}", key), key
    expect(dialog.locator("#key-created")).to_contain_text("it will not be shown again")
    expect(dialog.locator("#key-error")).to_be_empty()
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.locator("#key-copy-status")).to_have_text("Copied.")
    assert page.evaluate("() => navigator.clipboard.readText()") == key
    expect(dialog.locator("li")).to_have_count(1)
    check_page(page, "phone keys")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-keys-phone.png")

    # Shown once: closed and opened again, the key is nowhere in the page; the list names it by its prefix.
    close_keys(page)
    dialog = open_keys(page)
    expect(dialog.locator("#key-created")).to_be_hidden()
    row = dialog.locator("li")
    expect(row).to_have_count(1)
    prefix = key[: len("agentctl_") + 8]
    expect(row.locator(".key-prefix")).to_have_text(f"{prefix}…")
    expect(row).to_contain_text("deploy bot")
    facts = row.locator(".key-facts")
    assert facts.locator("dt").all_inner_texts() == ["Scopes", "Created", "Last used", "Expires"]
    scopes, created, last_used, expires = facts.locator("dd").all_inner_texts()
    assert (scopes, last_used, expires) == ("chat", "never", "never")
    assert created
    in_a_field = "k => [...document.querySelectorAll('input')].some(i => i.value === k)"
    assert page.evaluate(in_a_field, key) is False
    assert key not in page.content()

    models = f"{web_server.server.base_url}/v1/models"
    used = httpx.get(models, headers={"Authorization": f"Bearer {key}"})
    assert used.status_code == 200, used.text
    assert used.json()["data"]
    close_keys(page)
    dialog = open_keys(page)
    last_used = dialog.locator("li .key-facts dd").nth(2)
    expect(last_used.locator("time")).to_have_count(1)
    assert last_used.inner_text() != "never"

    revoke = dialog.get_by_role("button", name=f"Revoke key deploy bot ({prefix}…)")
    revoke.click()
    page.get_by_role("button", name="Cancel").click()  # the confirmation can be refused
    expect(dialog.locator("li")).to_have_count(1)
    revoke.click()
    expect(page.locator("#confirm-text")).to_contain_text("Programs using it stop working at once.")
    page.get_by_role("button", name="Revoke", exact=True).click()
    expect(dialog.locator("li")).to_have_count(0)
    expect(dialog.locator("#keys-status")).to_have_text(f"Revoked deploy bot ({prefix}…). You have no API keys.")
    refused = httpx.get(models, headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401, refused.text


def test_an_api_key_with_both_scopes_and_an_expiry(new_tab) -> None:
    """In Chromium on the desktop viewport: both scopes and an expiry in days, the newest key listed first; an expiry
    the server refuses is named in words and gets the focus."""
    page = new_tab().open()
    sign_up(page)
    dialog = open_keys(page)
    dialog.get_by_label("Name", exact=True).fill("first")
    dialog.get_by_role("button", name="Create key").click()
    dialog.get_by_role("button", name="Done").click()
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    dialog.get_by_label("Name", exact=True).fill("notes sync")
    dialog.get_by_role("checkbox", name="Memories").check()
    dialog.get_by_label("Expires after (days)").fill("0")
    dialog.get_by_role("button", name="Create key").click()
    expect(dialog.get_by_role("alert")).to_have_text(re.compile(r"^Expires after: [^`]+\.$"))
    expect(dialog.get_by_label("Expires after (days)")).to_be_focused()
    dialog.get_by_label("Expires after (days)").fill("30")
    dialog.get_by_role("button", name="Create key").click()
    expect(dialog.get_by_role("heading", name="Your new key “notes sync”")).to_be_visible()
    expect(dialog.locator("li")).to_have_count(2)
    newest = dialog.locator("li").first
    expect(newest).to_contain_text("notes sync")
    assert newest.locator(".key-facts dt").all_inner_texts() == ["Scopes", "Created", "Last used", "Expires"]
    expires = newest.locator(".key-facts dd").nth(3).locator("time").get_attribute("datetime")
    days = (datetime.datetime.fromisoformat(expires) - datetime.datetime.now(tz=datetime.UTC)).total_seconds() / 86400
    assert 29.9 < days <= 30, expires
    assert newest.locator(".key-facts dd").first.inner_text() == "chat, memories"
    check_page(page, "desktop keys")


def test_the_refresh_token_lives_in_an_http_only_cookie_and_dies_at_sign_out(new_tab, web_server: ApiClient) -> None:
    tab: Tab = new_tab()
    page = tab.open()
    sign_up(page)
    (cookie,) = [c for c in tab.context.cookies() if c["name"] == "agentctl_refresh"]
    assert cookie["httpOnly"]
    assert cookie["secure"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/api/v1/auth/web/refresh"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    refresh_url = f"{web_server.server.base_url}/api/v1/auth/web/refresh"
    jar = {"agentctl_refresh": cookie["value"]}
    no_csrf = httpx.post(refresh_url, cookies=jar)
    assert no_csrf.status_code == 403
    assert no_csrf.headers["content-type"] == "application/problem+json"
    assert no_csrf.json()["request_id"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert [c for c in tab.context.cookies() if c["name"] == "agentctl_refresh"] == []
    after = httpx.post(refresh_url, cookies=jar, headers={"X-Agentctl-CSRF": "1"})
    assert after.status_code == 401, after.text
    assert after.json()["detail"] == "the token has been revoked"
    # Reloading finds no sign-in.
    tab.open()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


_HOSTILE = (
    '<img src=x onerror="window.__xss.push(1)"> <script>window.__xss.push(2)</script> '
    '[click me](javascript:window.__xss.push(3)) <a href="javascript:window.__xss.push(4)">raw link</a> '
    '<svg onload="window.__xss.push(5)"></svg> ![pic](javascript:window.__xss.push(6))'
)


def test_hostile_markup_from_the_user_and_the_model_stays_inert(new_tab, simulator: RunningSimulator) -> None:
    """The user's message and the model's answer carry the same payloads; nothing runs, nothing loads."""
    simulator.configure({"script": [{"match": "hostile", "content": f"Here you go: {_HOSTILE}\n\n`code`"}]})
    tab: Tab = new_tab()
    page = tab.open()
    sign_up(page)
    send(page, f"hostile {_HOSTILE}")
    wait_done(page)
    user = page.locator("article.user").last
    expect(user).to_contain_text('<img src=x onerror="window.__xss.push(1)">')
    assert user.locator("img, script, a, svg").count() == 0
    user.get_by_role("button", name="Edit").click()  # the editor holds the text as text, too
    expect(user.get_by_role("textbox", name="Edit your message")).to_have_value(f"hostile {_HOSTILE}")
    user.get_by_role("button", name="Cancel").click()
    answer = last_answer(page).locator(".markdown")
    expect(answer).to_contain_text("<script>window.__xss.push(2)</script>")
    expect(answer).to_contain_text('<img src=x onerror="window.__xss.push(1)">')
    assert answer.locator("img, script, svg, iframe").count() == 0
    for href in answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))"):
        assert href is None or not href.lower().startswith("javascript"), href
    for link in answer.locator("a").all():
        link.click(modifiers=[])
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") == []
    assert tab.dialogs == []


@pytest.mark.parametrize(("label", "viewport"), [("phone", PHONE), ("desktop", DESKTOP)])
def test_layout_accessibility_and_screenshots(new_tab, simulator: RunningSimulator, label: str, viewport: dict) -> None:
    """No horizontal scroll, keyboard-reachable controls, axe-core (vendored) with no serious or critical violation,
    signed out and signed in with an answer on screen; a screenshot of each for the README."""
    simulator.configure(
        {"script": [{"match": "example", "content": "Sure:\n\n```python\nprint('hello')\n```\n\n- one\n- **two**"}]}
    )
    tab: Tab = new_tab(viewport=viewport)
    page = tab.open()
    check_page(page, f"{label} sign-in")
    page.keyboard.press("Tab")  # keyboard only: focus starts in the form, visibly
    assert page.evaluate("() => document.activeElement.matches(':focus-visible')")
    sign_up(page)
    send(page, "show me an example")
    wait_done(page)
    expect(last_answer(page).locator("pre code")).to_have_text("print('hello')")
    expect(last_answer(page).get_by_role("button", name="Copy code")).to_be_visible()
    check_page(page, f"{label} chat")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"web-{label}.png")
    if label == "phone":
        page.get_by_role("button", name="Chats").click()
        expect(page.get_by_role("button", name="New chat")).to_be_focused()
        check_page(page, "phone sidebar")


def check_page(page: Page, where: str) -> None:
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{where}: {overflow} px of horizontal scroll"
    page.evaluate(AXE.read_text(encoding="utf-8") + ";0")  # through the devtools protocol, not the page's CSP
    found = page.evaluate("() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
    serious = [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"{where}: {json.dumps(serious, indent=1)}"


def test_light_and_fast(new_tab, simulator: RunningSimulator, web_server: ApiClient) -> None:
    """Page and assets under 150 KB gzipped as served; interactive within 1 s on loopback; a 500-token answer at 100
    tokens/s streams with no long task over 50 ms. The numbers go to .agentctl/screenshots/web-metrics.json."""
    base = web_server.server.base_url
    shipped = [PAGE_PATH, *(f"{ASSETS_PATH}/{path.relative_to(STATIC_DIR)}" for path in sorted(STATIC_DIR.rglob("*")))]
    total = 0
    for path in shipped:
        if path != PAGE_PATH and not path.endswith((".js", ".mjs", ".css", ".html")):
            continue  # licences and notes ship in the wheel but the page never loads them
        with httpx.stream("GET", base + path, headers={"Accept-Encoding": "gzip"}) as response:
            assert response.status_code == 200, path
            size = sum(len(chunk) for chunk in response.iter_raw())
            if int(response.headers.get("content-length", size)) > 1000:  # smaller ones are not worth compressing
                assert response.headers.get("content-encoding") == "gzip", path
            total += size
    assert total < 150 * 1024, f"{total} bytes compressed"

    tab: Tab = new_tab()
    page = tab.open()
    interactive_ms = page.evaluate(
        "() => performance.getEntriesByType('navigation')[0] && "
        "performance.now() - performance.getEntriesByType('navigation')[0].startTime"
    )
    ready_ms = page.evaluate(
        "() => { const m = performance.getEntriesByName('agentctl-ready')[0]; return m ? m.startTime : null; }"
    )
    assert ready_ms is not None
    assert ready_ms < 1000, ready_ms
    sign_up(page)
    simulator.configure({"tokens_per_second": 100, "answer_tokens": 500})
    # The probe sees long tasks: an 80 ms busy loop is one.
    page.evaluate("() => setTimeout(() => { const end = performance.now() + 80; while (performance.now() < end) {} })")
    page.wait_for_function("() => window.__longTasks.some((duration) => duration > 50)")
    page.evaluate("() => { window.__longTasks.length = 0; }")
    send(page, "a long answer please")
    wait_done(page, timeout=30_000)
    assert len(last_answer(page).locator(".markdown").inner_text().split()) == 500
    long_tasks = page.evaluate("() => window.__longTasks")
    metrics = {"compressed_bytes": total, "ready_ms": round(ready_ms), "long_tasks_ms": long_tasks}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "web-metrics.json").write_text(json.dumps({**metrics, "after_load_ms": interactive_ms}))
    assert [task for task in long_tasks if task > 50] == [], metrics


def test_the_page_is_off_with_its_setting_and_the_api_keeps_its_csp(
    tmp_path, migrated_database_url: str, simulator: RunningSimulator, web_server: ApiClient
) -> None:
    """The page gets its own CSP (no inline code, no eval); the API keeps its own; AGENTCTL_SERVER__WEB_ENABLED=false
    removes the page, its assets and its cookie sign-in, while the JSON API works as before."""
    page = web_server.server.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert "unsafe" not in PAGE_CSP
    assert (
        web_server.server.get("/health").headers["content-security-policy"]
        == "default-src 'none'; frame-ancestors 'none'"
    )
    assert web_server.server.get("/web/app.css").headers["content-security-policy"].startswith("default-src 'none'")
    missing = web_server.server.get("/web/nothing-here.js")
    assert missing.status_code == 404
    assert missing.json()["request_id"]
    pair = web_server.register()  # the JSON API still hands both tokens to programs
    assert pair["refresh_token"]
    assert (
        "set-cookie"
        not in web_server.request("POST", "/auth/login", json={"email": pair["email"], "password": PASSWORD}).headers
    )

    server = serve_with_model(tmp_path, migrated_database_url, simulator, AGENTCTL_SERVER__WEB_ENABLED="false")
    try:
        server.wait_until_healthy()
        for path in ("/", "/web/app.css", "/web/js/main.js"):
            response = server.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
        off = httpx.post(f"{server.base_url}/api/v1/auth/web/login", json={"email": "a@example.com", "password": "x"})
        assert off.status_code == 404
        assert ApiClient(server).register()["token"]["access_token"]
    finally:
        server.terminate()


def test_errors_in_plain_words(new_tab, simulator: RunningSimulator, tmp_path, migrated_database_url: str) -> None:
    """Session busy, the model failing and the rate limit (with its wait), as the page words them."""
    simulator.configure({"tokens_per_second": 20, "answer_tokens": 100})
    page = new_tab().open()
    sign_up(page)
    send(page, "first message")
    wait_words(page, 3)
    send(page, "second message while busy", accepted=False)
    expect(page.locator("#chat-error")).to_have_text(
        "This chat is still answering your last message: wait for it, or press Stop."
    )
    expect(page.get_by_label("Message", exact=True)).to_have_value("second message while busy")  # kept to resend
    page.get_by_role("button", name="Stop").click()
    wait_done(page, "stopped")

    simulator.configure({"faults": {"*": {"rate_500": 1.0}}})
    send(page, "third message")
    wait_done(page, "error")
    expect(last_answer(page).locator(".note")).to_have_text(re.compile(r"^The model "))
    expect(page.locator("#chat-error")).to_have_text("")

    simulator.configure({})
    server = serve_with_model(tmp_path, migrated_database_url, simulator, AGENTCTL_RATELIMIT__CHAT="2/minute")
    try:
        server.wait_until_healthy()
        limited = new_tab(base_url=server.base_url).open()
        sign_up(limited)
        for text in ("one", "two"):
            send(limited, text)
            wait_done(limited)
        send(limited, "three", accepted=False)
        expect(limited.locator("#chat-error")).to_have_text(
            re.compile(r"^Too many requests: you have reached the rate limit\. Try again in \d+ s\.$")
        )
    finally:
        server.terminate()


def question(page: Page, number: int) -> Locator:
    """The page's ``number``-th question (0-based), looked up afresh each time: an edit replaces it."""
    return page.locator("article.user").nth(number)


def versions(page: Page, number: int) -> Locator:
    return question(page, number).get_by_role("group", name="Versions of this message")


def said(history: list[dict]) -> list[str]:
    return [message["content"] for message in history if message["role"] == "user"]


def shown_text(locator: Locator) -> str:
    return " ".join(locator.inner_text().split())


def test_edit_a_question_in_place_then_switch_versions_with_the_arrows(new_tab, web_server: ApiClient) -> None:
    """In Chromium against a real server: Edit opens the question in place (Esc and Cancel leave it as it was, Enter
    saves); the new answer streams in the old one's place; the version arrows ("Previous version", "2/2", "Next
    version") switch between the versions, each with its own answer, and the server's conversation follows."""
    page = new_tab().open()
    sign_up(page)
    for text in ("first question", "second question"):
        send(page, text)
        wait_done(page)
    old_answer = shown_text(last_answer(page).locator(".markdown"))
    edit = question(page, 1).get_by_role("button", name="Edit")
    editor = question(page, 1).get_by_role("textbox", name="Edit your message")
    edit.click()
    expect(editor).to_be_focused()
    expect(editor).to_have_value("second question")
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(edit).to_be_focused()
    edit.click()
    editor.fill("changed my mind")
    question(page, 1).get_by_role("button", name="Cancel").click()
    expect(editor).to_have_count(0)
    expect(question(page, 1).locator(".plain")).to_have_text("second question")
    assert question(page, 0).get_by_role("group").count() == 0  # no versions, no arrows

    edit.click()
    expect(editor).to_have_value("second question")
    editor.fill("second, edited")
    editor.press("Enter")
    expect(question(page, 1).locator(".plain")).to_have_text("second, edited")
    wait_done(page)
    expect(page.locator("article.assistant")).to_have_count(2)
    assert shown_text(last_answer(page).locator(".markdown")).startswith("second, edited ")
    expect(versions(page, 1)).to_contain_text("2/2")
    expect(versions(page, 1).get_by_role("button", name="Next version")).to_be_disabled()
    read_history = history_reader(web_server, page)
    assert said(read_history()) == ["first question", "second, edited"]
    check_page(page, "desktop versions")
    question(page, 0).get_by_role("button", name="Edit").click()  # an editor open, for the screenshot
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-versions-desktop.png")
    check_page(page, "desktop editor")
    question(page, 0).get_by_role("button", name="Cancel").click()

    versions(page, 1).get_by_role("button", name="Previous version").click()
    expect(question(page, 1).locator(".plain")).to_have_text("second question")
    expect(versions(page, 1)).to_contain_text("1/2")
    assert shown_text(last_answer(page).locator(".markdown")) == old_answer
    expect(versions(page, 1).get_by_role("button", name="Next version")).to_be_focused()  # Previous is at its end
    assert said(read_history()) == ["first question", "second question"]

    versions(page, 1).get_by_role("button", name="Next version").click()
    expect(question(page, 1).locator(".plain")).to_have_text("second, edited")
    expect(versions(page, 1)).to_contain_text("2/2")
    assert said(read_history()) == ["first question", "second, edited"]


def test_regenerate_an_earlier_answer_on_a_phone_keeps_the_first_as_a_version(
    new_tab, web_server: ApiClient, simulator: RunningSimulator
) -> None:
    """In Chromium at a phone's width against a real server: Regenerate on the first of two answers continues from
    its question (the later turn goes with the old version), the new answer streams, and "Previous version" brings
    the first back with the turn after it."""
    simulator.configure({"tokens_per_second": 60, "answer_tokens": 30})
    page = new_tab(viewport=PHONE).open()
    sign_up(page)
    for text in ("tell me something", "and another thing"):
        send(page, text)
        wait_done(page)
    first_answer = shown_text(page.locator("article.assistant").first.locator(".markdown"))
    page.locator("article.assistant").first.get_by_role("button", name="Regenerate").click()
    expect(page.locator("article.user")).to_have_count(1)
    expect(last_answer(page)).to_have_attribute("data-status", "streaming")
    wait_done(page)
    again = shown_text(last_answer(page).locator(".markdown"))
    assert again.startswith("tell me something ")
    assert again != first_answer
    expect(versions(page, 0)).to_contain_text("2/2")
    history = history_reader(web_server, page)()
    assert said(history) == ["tell me something"]
    assert history[0]["branch"]["count"] == 2
    check_page(page, "phone versions")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-versions-phone.png")

    versions(page, 0).get_by_role("button", name="Previous version").click()
    expect(page.locator("article.user")).to_have_count(2)
    expect(versions(page, 0)).to_contain_text("1/2")
    assert shown_text(page.locator("article.assistant").first.locator(".markdown")) == first_answer
    expect(question(page, 1).locator(".plain")).to_have_text("and another thing")


def test_usage_against_the_budget_and_a_refusal_in_plain_words(
    new_tab, web_server: ApiClient, migrated_database_url: str
) -> None:
    """In Chromium against a real server: the sidebar shows today's and this month's spending, read again after each
    answer; at the limit a message (and Regenerate) is refused in plain words with what was spent, the limit and
    when it refills, and the sidebar says the budget is used up."""
    page = new_tab().open()
    email = sign_up(page)
    token = web_server.login(email)["access_token"]
    expect(page.locator("#spending dd").first).to_have_text("0 tokens · $0.0000")
    send(page, "spend a little")
    wait_done(page)
    spent = web_server.request("GET", "/auth/me/usage", token=token).json()["day"]["tokens"]
    assert spent > 0
    spending = page.get_by_role("region", name="Usage")
    expect(spending.locator("dt")).to_have_text(["Today", "This month"])
    expect(spending.locator("dd")).to_have_text([f"{spent:,} tokens · $0.0000"] * 2)
    expect(spending.locator("meter")).to_have_count(0)  # no budget: nothing to fill

    user_id = web_server.request("GET", "/auth/me", token=token).json()["id"]
    set_budget(migrated_database_url, user_id, daily_tokens=spent)  # exactly at the limit: refused
    send(page, "one more, please", accepted=False)
    refusal = re.compile(
        rf"^Your daily token budget is used up: {spent:,} of {spent:,} tokens spent\. "
        r"It refills on .+ \(in (\d+ h ?)?(\d+ min)?\)\.$"
    )
    expect(page.locator("#chat-error")).to_have_text(refusal)
    expect(page.get_by_label("Message", exact=True)).to_have_value("one more, please")  # kept for later
    expect(spending.locator("dd").first).to_contain_text(f"{spent:,} of {spent:,} tokens · $0.0000")
    expect(spending.locator(".refill").first).to_have_text(re.compile(r"^Used up; refills on .+\.$"))
    expect(spending.get_by_role("meter", name="Today: share of the budget used")).to_have_attribute("value", "1")
    expect(spending.locator("dd").nth(1)).to_have_text(f"{spent:,} tokens · $0.0000")  # no monthly limit

    page.locator("#chat-error").evaluate("element => { element.textContent = ''; }")
    last_answer(page).get_by_role("button", name="Regenerate").click()
    expect(page.locator("#chat-error")).to_have_text(refusal)
    expect(page.locator("article.assistant")).to_have_count(1)  # the answer stays as it was
    check_page(page, "desktop budget")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-budget-desktop.png")
