"""Tool calls awaiting approval in the web page: Debian's Chromium (Playwright for Python) against a real `agentctl
serve` whose built-in calculator needs the user's approval, with the project's simulator as its model."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, Request, expect

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import serve_with_model
from tests.support import ApiClient
from tests.web.conftest import PHONE, SCREENSHOTS, Tab
from tests.web.test_page import check_page, history_reader, last_answer, send, sign_up, wait_done

pytestmark = pytest.mark.slow

APPROVAL_PLACEHOLDER = "A message rejects the tool calls above"
# Holds the page's POST /approval until the test lets it go (window.__letApprovalGo()): the card in flight.
_HOLD_APPROVALS = """
window.__approvalGate = new Promise((resolve) => { window.__letApprovalGo = resolve; });
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  if (String(args[0]).endsWith("/api/v1/chatbot/approval")) await window.__approvalGate;
  return pageFetch(...args);
};
"""


@pytest.fixture(scope="module")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    """This module's own server (the page's fixtures use it): the calculator needs approval here, not elsewhere."""
    server = serve_with_model(
        tmp_path_factory.mktemp("web-approvals"),
        migrated_database_url,
        simulator,
        AGENTCTL_AGENT__TOOLS__CALCULATOR__POLICY="approve",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


def script_calculator(simulator: RunningSimulator, *expressions: str) -> None:
    """A message with "multiply" makes the model call the calculator once per expression, in one step."""
    calls = [{"name": "calculator", "arguments": {"expression": expression}} for expression in expressions]
    simulator.configure({"script": [{"match": "multiply", "tool_calls": calls}]})


def approval_card(page: Page) -> Locator:
    """The card of the calls awaiting approval, in the answer that paused for them."""
    card = page.locator("article.assistant fieldset.approval").last
    expect(card).to_be_visible()
    return card


def approval_posts(page: Page) -> list[dict]:
    """The bodies of the page's POST /api/v1/chatbot/approval, as it sends them."""
    bodies: list[dict] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/api/v1/chatbot/approval"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", record)
    return bodies


def paused_for_approval(page: Page) -> Locator:
    """Ask for a multiplication; the answer pauses with its card (the input says what a message would do)."""
    sign_up(page)
    send(page, "please multiply six by seven")
    wait_done(page)
    card = approval_card(page)
    expect(page.get_by_label("Message", exact=True)).to_have_attribute("placeholder", APPROVAL_PLACEHOLDER)
    return card


def resumed_answer_done(page: Page) -> Locator:
    """The answer that goes on below the card, once it has ended: the second answer, with no question between."""
    expect(page.locator("article.assistant")).to_have_count(2)
    expect(page.locator("article.user")).to_have_count(1)
    wait_done(page)
    return last_answer(page)


def test_approve_runs_the_call_and_the_answer_goes_on_below_the_card(
    new_tab, simulator: RunningSimulator, web_server: ApiClient
) -> None:
    """In Chromium against a real server with the calculator on approval: the paused answer shows a card (tool,
    built-in, the arguments as JSON, Approve / Edit / Reject); Approve, pressed from the keyboard, sends the decision;
    the card keeps it and the resumed answer streams below with the result (42), its tool block saying "approved"."""
    script_calculator(simulator, "6*7")
    page = new_tab().open()
    posts = approval_posts(page)
    card = paused_for_approval(page)
    expect(card.locator("legend")).to_have_text("The agent asks to run a tool")
    call = card.get_by_role("group", name="calculator built-in")
    expect(call.locator(".tool-name")).to_have_text("calculator")
    expect(call.locator(".approval-server")).to_have_text("built-in")
    assert json.loads(call.locator("pre.approval-args").inner_text()) == {"expression": "6*7"}
    expect(call.get_by_role("button")).to_have_text(["Approve", "Edit", "Reject"])
    expect(last_answer(page).locator("details.tool")).to_have_count(0)  # the card stands for the waiting call
    check_page(page, "desktop approval")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-approval-desktop.png")

    call.get_by_role("button", name="Approve").focus()
    page.keyboard.press("Enter")
    answer = resumed_answer_done(page)
    expect(answer.locator(".markdown")).to_contain_text("42")
    tool = answer.locator("details.tool[data-tool='calculator']")
    expect(tool.locator("summary")).to_have_text("calculator done · approved")
    expect(card).to_have_attribute("data-state", "answered")
    expect(card.locator(".approval-decision")).to_have_text("Approved.")
    expect(card.locator(".approval-status")).to_have_text("Sent: the answer goes on below.")
    expect(card.get_by_role("button")).to_have_count(0)
    expect(page.get_by_label("Message", exact=True)).to_have_attribute(
        "placeholder", "Message: Enter sends, Shift+Enter adds a line"
    )
    assert len(posts) == 1
    [decision] = posts[0]["decisions"]
    assert decision["decision"] == "approve"
    assert history_reader(web_server, page)()[-1]["content"] == "Tool results: calculator: 42"


def test_edit_checks_the_json_then_the_server_refusal_then_runs_with_the_new_arguments(
    new_tab, simulator: RunningSimulator
) -> None:
    """Edit opens the arguments as JSON: text that is not JSON is an error in the page (no request); arguments the
    tool's schema refuses come back as a 422 whose reason shows under the call, left open to fix; fixed, the call runs
    with them (2*3 = 6) and its block says "edited", with what the agent had asked for."""
    script_calculator(simulator, "6*7")
    page = new_tab().open()
    posts = approval_posts(page)
    card = paused_for_approval(page)
    card.get_by_role("button", name="Edit").click()
    expect(card.get_by_role("button", name="Edit")).to_have_attribute("aria-expanded", "true")
    box = card.get_by_label("Arguments of calculator (JSON)")
    expect(box).to_be_focused()
    assert json.loads(box.input_value()) == {"expression": "6*7"}
    box.press("Escape")  # Esc leaves the editor, as Cancel does
    expect(box).to_have_count(0)
    expect(card.get_by_role("button", name="Edit")).to_be_focused()

    card.get_by_role("button", name="Edit").click()
    box.fill('{"expression": "2*3"')
    card.get_by_role("button", name="Run with these arguments").click()
    expect(card.get_by_role("alert").first).to_have_text(re.compile(r"^This is not valid JSON: "))
    expect(box).to_have_attribute("aria-invalid", "true")
    box.fill('["2*3"]')
    card.get_by_role("button", name="Run with these arguments").click()
    expect(card.get_by_role("alert").first).to_have_text(
        'The arguments must be a JSON object, such as {"name": "value"}.'
    )
    assert posts == []

    box.fill('{"expr": "2*3"}')
    card.get_by_role("button", name="Run with these arguments").click()
    expect(card.get_by_role("alert").first).to_have_text(re.compile(r"^Not accepted by calculator: .*'expression'"))
    expect(box).to_have_value('{\n  "expr": "2*3"\n}')  # left as sent, to fix
    expect(card.get_by_role("button", name="Approve")).to_be_enabled()
    assert len(posts) == 1

    box.fill('{"expression": "2*3"}')
    card.get_by_role("button", name="Run with these arguments").click()
    answer = resumed_answer_done(page)
    expect(answer.locator(".markdown")).to_contain_text("Tool results: calculator: 6")
    tool = answer.locator("details.tool[data-tool='calculator']")
    expect(tool.locator("summary")).to_have_text("calculator done · edited")
    tool.locator("summary").click()
    expect(tool.locator(".tool-args")).to_contain_text('"expression": "2*3"')
    expect(tool.locator(".note")).to_have_text('The agent asked for: {"expression":"6*7"}')
    expect(card.locator(".approval-decision")).to_have_text('Edited: runs with {"expression":"2*3"}')
    assert [body["decisions"][0]["arguments"] for body in posts] == [{"expr": "2*3"}, {"expression": "2*3"}]


def test_reject_with_a_reason_tells_the_model_why(new_tab, simulator: RunningSimulator) -> None:
    script_calculator(simulator, "6*7")
    page = new_tab().open()
    card = paused_for_approval(page)
    card.get_by_role("button", name="Reject").click()
    reason = card.get_by_label("Why not? (optional: the agent reads it)")
    expect(reason).to_be_focused()
    reason.fill("do it in your head")
    reason.press("Enter")
    answer = resumed_answer_done(page)
    expect(answer.locator(".markdown")).to_contain_text(
        "Tool results: calculator: the user rejected this call: do it in your head"
    )
    tool = answer.locator("details.tool[data-tool='calculator']")
    expect(tool.locator("summary")).to_have_text("calculator not run · rejected: do it in your head")
    expect(card.locator(".approval-decision")).to_have_text("Rejected: do it in your head")


def test_a_reload_while_the_call_waits_shows_the_card_again_and_it_is_answered(
    new_tab, simulator: RunningSimulator
) -> None:
    """On a phone's width: reloaded while the call waits, the page shows the card again from GET /messages (and no
    tool block "running"); approved, the answer goes on below it; reloaded once it ended, the turn is one answer."""
    script_calculator(simulator, "6*7")
    tab: Tab = new_tab(viewport=PHONE)
    page = tab.open()
    paused_for_approval(page)
    page.reload()
    page.wait_for_function("() => document.documentElement.dataset.ready === 'true'")
    card = approval_card(page)
    expect(page.locator("article.assistant")).to_have_count(1)
    expect(page.locator("article.assistant details.tool")).to_have_count(0)
    expect(card.locator(".tool-name")).to_have_text("calculator")
    expect(page.get_by_label("Message", exact=True)).to_have_attribute("placeholder", APPROVAL_PLACEHOLDER)
    check_page(page, "phone approval")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-approval-phone.png")
    card.get_by_role("button", name="Approve").click()
    answer = resumed_answer_done(page)
    expect(answer.locator(".markdown")).to_contain_text("Tool results: calculator: 42")

    page.reload()
    page.wait_for_function("() => document.documentElement.dataset.ready === 'true'")
    expect(page.locator("article.assistant")).to_have_count(1)
    expect(page.locator("fieldset.approval")).to_have_count(0)
    expect(last_answer(page).locator("details.tool .tool-status")).to_have_text(" done")
    expect(last_answer(page).locator(".markdown")).to_contain_text("Tool results: calculator: 42")


def test_several_calls_each_get_a_decision_sent_together_with_the_card_disabled_meanwhile(
    new_tab, simulator: RunningSimulator
) -> None:
    """Two calls in one step: the card says which are still undecided, a decision can be changed, nothing is sent
    until both have one; then one POST with both, every control of the card disabled until the server answers."""
    script_calculator(simulator, "6*7", "2+2")
    tab: Tab = new_tab()
    tab.context.add_init_script(_HOLD_APPROVALS)
    page = tab.open()
    posts = approval_posts(page)
    card = paused_for_approval(page)
    expect(card.locator("legend")).to_have_text("The agent asks to run 2 tools")
    first = card.get_by_role("group", name="calculator #1 built-in")
    second = card.get_by_role("group", name="calculator #2 built-in")
    expect(card.locator(".approval-status")).to_have_text(
        "Still to decide: calculator #1, calculator #2. The decisions are sent together once every call has one."
    )
    first.get_by_role("button", name="Reject").click()
    first.get_by_role("button", name="Reject the call").click()
    expect(first.locator(".approval-decision")).to_have_text("Rejected. Change")
    expect(second.get_by_role("button", name="Approve")).to_be_focused()
    expect(card.locator(".approval-status")).to_contain_text("Still to decide: calculator #2.")
    first.get_by_role("button", name="Change").click()
    expect(first.get_by_role("button", name="Approve")).to_be_focused()
    first.get_by_role("button", name="Approve").click()
    assert posts == []

    second.get_by_role("button", name="Reject").click()
    second.get_by_label("Why not? (optional: the agent reads it)").fill("one is enough")
    second.get_by_role("button", name="Reject the call").click()
    expect(card.locator(".approval-status")).to_have_text("Sending your decisions…")
    expect(first.get_by_role("button", name="Change")).to_be_disabled()
    expect(second.get_by_role("button", name="Change")).to_be_disabled()
    page.evaluate("window.__letApprovalGo()")
    answer = resumed_answer_done(page)
    expect(answer.locator(".markdown")).to_contain_text(
        "Tool results: calculator: 42; calculator: the user rejected this call: one is enough"
    )
    expect(answer.locator("details.tool .tool-approval")).to_have_text([" · approved", " · rejected: one is enough"])
    assert len(posts) == 1
    assert [(item["decision"], item.get("reason")) for item in posts[0]["decisions"]] == [
        ("approve", None),
        ("reject", "one is enough"),
    ]


def test_a_message_instead_rejects_the_calls_and_an_approval_answered_elsewhere_is_reloaded(
    new_tab, simulator: RunningSimulator, web_server: ApiClient
) -> None:
    """A message sent while a call waits rejects it, with the message as the reason, and the card says so. A call
    answered elsewhere (here through the API, as another tab would) is a 409: the page shows the chat as it now
    stands and says why."""
    script_calculator(simulator, "6*7")
    page = new_tab().open()
    card = paused_for_approval(page)
    send(page, "never mind, skip it")
    wait_done(page)
    expect(card.locator(".approval-status")).to_have_text(
        "You sent a message instead: the calls are rejected, with it as the reason."
    )
    expect(card.get_by_role("button")).to_have_count(0)
    expect(last_answer(page).locator(".markdown")).to_contain_text(
        "the user rejected this call: the user answered instead: never mind, skip it"
    )

    send(page, "multiply again please")
    wait_done(page)
    card = approval_card(page)
    session_id = page.evaluate("localStorage.getItem('agentctl.session')")
    email = (page.locator("#who").text_content() or "").removeprefix("Signed in as ")
    token = web_server.login(email)["access_token"]
    session_token = web_server.request("POST", f"/auth/session/{session_id}/token", token=token).json()["token"]
    elsewhere = web_server.request(
        "POST", "/chatbot/approval", token=session_token["access_token"], json={"decision": "approve"}
    )
    assert elsewhere.status_code == 202, elsewhere.text
    card.get_by_role("button", name="Approve").click()
    expect(page.locator("#chat-error")).to_have_text(
        "Those tool calls no longer await your decision (answered already, perhaps in another tab): "
        "the chat shows where it now stands."
    )
    wait_done(page)
    expect(page.locator("fieldset.approval")).to_have_count(0)
    expect(last_answer(page).locator(".markdown")).to_contain_text("Tool results: calculator: 42")
