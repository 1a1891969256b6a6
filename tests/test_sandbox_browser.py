"""The sandbox in a real browser (Playwright driving Debian's Chromium): what a newcomer does in their
first five minutes, from the demo agent's request to the card that says who approved it with MFA.

Screenshots of the card, the step-up sign-in and the decided card are written to
$APPROVALS_TEST_ARTIFACTS (default var/test-artifacts/); docs/sandbox-card.png is the first of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox_service import ROOT, SandboxService, running_sandbox
from tests.test_audit_report import chromium_path

playwright_api = pytest.importorskip("playwright.sync_api")
Page = playwright_api.Page
expect = playwright_api.expect

ARTIFACTS = Path(os.environ.get("APPROVALS_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxService]:
    yield from running_sandbox()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: tests run as root in CI containers, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(locator: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))  # type: ignore[attr-defined]
    assert path.stat().st_size > 1000
    return path


def open_as(page: Page, sandbox: SandboxService, user: str) -> None:
    page.goto(f"{sandbox.sandbox}?user={user}&c=C0HIRING")
    expect(page.locator("#sandbox-banner")).to_contain_text("not Slack")


def post_demo_request(page: Page, sandbox: SandboxService) -> str:
    """Click the demo agent's button; the request id is the one the demo agent did not have before."""
    known = {r["request_id"] for r in sandbox.state()["demo"]["requests"]}
    page.locator("#demo-request").click()
    state = sandbox.wait_for_state(lambda s: {r["request_id"] for r in s["demo"]["requests"]} - known)
    return str(next(r["request_id"] for r in state["demo"]["requests"] if r["request_id"] not in known))


def card(page: Page, request_id: str) -> object:
    return page.locator(".message:not([data-ephemeral-id])", has_text=request_id)


def switch_user(page: Page, user: str) -> None:
    page.locator("#user-select").select_option(user)
    expect(page.locator("#user-select")).to_have_value(user)


def test_approve_with_an_otp_step_up_after_a_password_only_sign_in_is_refused(
    page: Page, sandbox: SandboxService
) -> None:
    open_as(page, sandbox, "U01COO")
    request_id = post_demo_request(page, sandbox)
    offer = card(page, request_id)
    expect(offer).to_contain_text("Offer letter")
    expect(offer).to_contain_text("[redacted]")  # the salary, as the policy says
    screenshot(offer, "sandbox-card.png")

    # Approve: the service holds the click for a fresh MFA sign-in and says so, to the COO only.
    offer.get_by_role("button", name="Approve").click()
    prompt = page.locator(".message[data-ephemeral-id]", has_text="fresh sign-in").last
    expect(prompt).to_be_visible()
    expect(prompt).not_to_contain_text("unknown time")
    screenshot(prompt, "sandbox-step-up-prompt.png")

    # A password alone: the dev IdP issues the token, the service refuses it as not multi-factor.
    with page.context.expect_page() as opened:
        prompt.get_by_role("link", name="Verify with SSO").click()
    idp = opened.value
    expect(idp.locator("body")).to_contain_text("Development identity provider")
    idp.get_by_label(re.compile("Cora Coo")).check()
    idp.get_by_label(re.compile(r"Password only")).check()
    screenshot(idp.locator("body"), "sandbox-step-up-sign-in.png")
    idp.get_by_role("button", name="Sign in").click()
    expect(idp.locator("body")).to_contain_text(re.compile("multi-factor|second factor|MFA", re.I))
    idp.close()
    # Still pending: the card says nothing new, and the agent heard nothing.
    assert all(c["request_id"] != request_id for c in sandbox.state()["demo"]["callbacks"])
    expect(offer).not_to_contain_text("Approved by")

    # Again, with a one-time code: the decision is recorded and the card updates by itself.
    prompts = page.locator(".message[data-ephemeral-id]", has_text="fresh sign-in")
    expect(prompts).to_have_count(1)
    offer.get_by_role("button", name="Approve").click()
    expect(prompts).to_have_count(2)  # a new link: the refused one was used up
    with page.context.expect_page() as opened:
        prompts.last.get_by_role("link", name="Verify with SSO").click()
    idp = opened.value
    idp.get_by_label(re.compile("Cora Coo")).check()
    idp.get_by_label(re.compile(r"one-time code")).check()
    idp.get_by_role("button", name="Sign in").click()
    expect(idp.locator("body")).to_contain_text("approval is recorded")
    idp.close()

    expect(offer).to_contain_text("Approved by")
    expect(offer).to_contain_text("MFA")
    expect(offer.get_by_role("button", name="Approve")).to_have_count(0)
    screenshot(offer, "sandbox-card-approved.png")

    # The demo agent heard back, and the signature checked out.
    callbacks = page.locator("#demo-callbacks")
    expect(callbacks).to_contain_text(request_id)
    expect(callbacks).to_contain_text("approved")
    expect(callbacks).to_contain_text("signature verified")


def test_an_outsiders_click_gets_an_ephemeral_refusal(page: Page, sandbox: SandboxService) -> None:
    open_as(page, sandbox, "U0OUTSIDER")
    request_id = post_demo_request(page, sandbox)
    refusals = page.locator(".message[data-ephemeral-id]", has_text=re.compile("not an approver", re.I))
    earlier = refusals.count()
    card(page, request_id).get_by_role("button", name="Approve").click()
    expect(refusals).to_have_count(earlier + 1)
    refusal_id = refusals.last.get_attribute("data-ephemeral-id")
    expect(card(page, request_id)).not_to_contain_text("Approved by")
    # Only the outsider sees it.
    switch_user(page, "U01COO")
    expect(card(page, request_id)).to_be_visible()
    expect(page.locator(f'.message[data-ephemeral-id="{refusal_id}"]')).to_have_count(0)
    expect(
        page.locator(".message[data-ephemeral-id]", has_text=re.compile("not an approver", re.I))
    ).to_have_count(0)


def test_the_recruiter_cannot_approve_their_own_request(page: Page, sandbox: SandboxService) -> None:
    open_as(page, sandbox, "U09REC")
    request_id = post_demo_request(page, sandbox)  # the demo agent asks on the recruiter's behalf
    refusals = page.locator(".message[data-ephemeral-id]", has_text=re.compile("own behalf|your own", re.I))
    earlier = refusals.count()
    card(page, request_id).get_by_role("button", name="Approve").click()
    expect(refusals).to_have_count(earlier + 1)
    expect(card(page, request_id)).not_to_contain_text("Approved by")


def test_reject_asks_why_and_the_reason_shows_on_the_card(page: Page, sandbox: SandboxService) -> None:
    open_as(page, sandbox, "U01COO")
    request_id = post_demo_request(page, sandbox)
    offer = card(page, request_id)
    offer.get_by_role("button", name="Reject").click()
    modal = page.locator("#modal")
    expect(modal).to_be_visible()
    expect(modal).to_contain_text("Why are you rejecting it?")
    modal.locator("textarea").fill("   ")  # blank: the browser's check passes, the service's refuses
    page.locator("#modal-submit").click()
    expect(modal.locator(".bk-error")).to_contain_text("Say why")
    modal.locator("textarea").fill("Budget is frozen until Q2 <script>alert(1)</script>")
    # Step-up prompts from earlier tests may be on the page (the COO's ephemerals outlive a test).
    prompts = page.locator(".message[data-ephemeral-id]", has_text="fresh sign-in")
    earlier = prompts.count()
    page.locator("#modal-submit").click()
    expect(modal).to_be_hidden()

    # A step-up unless the COO's sign-in from another test is still fresh (max_age 600 s).
    new_prompt = prompts.nth(earlier)
    rejected = offer.filter(has_text="Rejected")
    expect(new_prompt.or_(rejected).first).to_be_visible()
    if not rejected.count():
        with page.context.expect_page() as opened:
            new_prompt.get_by_role("link", name="Verify with SSO").click()
        idp = opened.value
        idp.get_by_label(re.compile("Cora Coo")).check()
        idp.get_by_label(re.compile("hardware key")).check()
        idp.get_by_role("button", name="Sign in").click()
        expect(idp.locator("body")).to_contain_text("rejection is recorded")
        idp.close()
    expect(offer).to_contain_text("Rejected")
    expect(offer).to_contain_text("Budget is frozen until Q2 <script>alert(1)</script>")
    assert offer.locator("script").count() == 0  # the reason is text, never markup
