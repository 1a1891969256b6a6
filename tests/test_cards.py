"""Request cards, the reject modal and the pending list: right words, valid Block Kit, nothing injected."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from app.slack.cards import (
    build_card,
    build_home_view,
    build_pending_list,
    build_reject_modal,
    ephemeral_text,
    escape_mrkdwn,
    redact_params,
    step_up_prompt,
)
from app.slack.ids import MAX_REASON, REASON_BLOCK, REASON_INPUT, ActionId, CallbackId

NOW = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
GOOD_LINK = "https://hr.example.com/candidates/42?tab=offer&v=2"
INJECTIONS = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U999>",
    "<#C123>",
    "<https://evil.example|Click>",
    "<!date^1^{date}|x>",
    "<!subteam^S1>",
    "&lt;!channel&gt;",
    "&amp;lt;@U999&amp;gt;",
    "*✅ APPROVED*",
    "```",
]
EVIL = " ".join(INJECTIONS)
DATE_TOKEN = re.compile(r"<!date\^\d+\^\{date_short_pretty\} at \{time\}\|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ>")


def a_request(**overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": "req_01HXYZ",
        "status": "pending",
        "action": "send_offer_letter",
        "title": "Send offer letter to Bob",
        "summary": "Offer for the senior engineer role, start date June 1.",
        "params": {"candidate": "Bob", "salary": 185000, "bank": {"iban": "DE89370400440532013000"}},
        "on_behalf_of": "alice@example.com",
        "links": [GOOD_LINK],
        "policy": {"name": "offers", "version": 3},
        "required_approvals": 1,
        "decided_by": None,
        "reason": None,
        "created_at": "2024-05-01T09:00:00Z",
        "expires_at": "2024-05-01T10:00:00Z",
        "decided_at": None,
        "decisions": [],
        "outcome": None,
    }
    return view | overrides


def a_decision(user_id: str, decision: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "approver": {"id": user_id, "name": user_id.lower(), "email": f"{user_id.lower()}@example.com"},
        "decision": decision,
        "reason": reason,
        "mfa": None,
        "decided_at": "2024-05-01T09:30:00Z",
    }


def card(view: dict[str, Any], redact: list[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    return build_card(view, agent_name="hr-bot", agent_owner="people-team", redact=redact or [])


def text_objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
            yield node
        for value in node.values():
            yield from text_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from text_objects(value)


def mrkdwn_texts(blocks: Any) -> list[str]:
    return [t["text"] for t in text_objects(blocks) if t["type"] == "mrkdwn"]


def all_text(blocks: Any) -> str:
    return "\n".join(t["text"] for t in text_objects(blocks))


def assert_nothing_injected(
    blocks: Any, *, approvers: tuple[str, ...] = (), links: tuple[str, ...] = ()
) -> None:
    """No `<` in any mrkdwn text except tokens we built; every `&` starts one of the three entities."""
    ours = [f"<@{user_id}>" for user_id in approvers] + [f"<{escape_mrkdwn(url)}>" for url in links]
    for text in mrkdwn_texts(blocks):
        rest = DATE_TOKEN.sub("", text)
        for token in ours:
            rest = rest.replace(token, "")
        rest = re.sub(r"<https://example\.slack\.com/archives/\w+/p\d+\|Open card>", "", rest)
        assert "<" not in rest and ">" not in rest, text
        assert re.search(r"&(?!amp;|lt;|gt;)", rest) is None, text


def assert_valid_blocks(blocks: list[dict[str, Any]], *, max_blocks: int = 50) -> None:
    """What slack_sdk checks, plus the limits it does not: block count, field and text lengths."""
    assert 0 < len(blocks) <= max_blocks
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.to_dict()
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
    for text in text_objects(blocks):
        assert 1 <= len(text["text"]) <= 3000


def states_of(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(all_text(b) for b in blocks if b["type"] == "context")


# -- pending -----------------------------------------------------------------------------------------


def test_a_pending_card_has_approve_and_reject_buttons_carrying_only_the_request_id() -> None:
    _, blocks = card(a_request())
    [actions] = [b for b in blocks if b["type"] == "actions"]
    approve, reject = actions["elements"]
    assert (approve["action_id"], approve["style"], approve["value"]) == (
        ActionId.APPROVE,
        "primary",
        "req_01HXYZ",
    )
    assert (reject["action_id"], reject["style"], reject["value"]) == (
        ActionId.REJECT,
        "danger",
        "req_01HXYZ",
    )
    assert_valid_blocks(blocks)


def test_a_pending_card_shows_title_agent_policy_and_expiry() -> None:
    text, blocks = card(a_request())
    assert text == "Approval needed: Send offer letter to Bob"
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Send offer letter to Bob", "emoji": True},
    }
    facts = "\n".join(f["text"] for f in blocks[1]["fields"])
    assert "hr-bot" in facts and "people-team" in facts
    assert "`alice@example.com`" in facts and "`send_offer_letter`" in facts and "offers v3" in facts
    expires = int(dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC).timestamp())
    assert f"<!date^{expires}^{{date_short_pretty}} at {{time}}|2024-05-01T10:00:00Z>" in facts
    assert f"<{escape_mrkdwn(GOOD_LINK)}>" in all_text(blocks)


def test_a_two_approver_request_counts_approvals_so_far() -> None:
    view = a_request(required_approvals=2, decisions=[a_decision("U01COO", "approve")])
    _, blocks = card(view)
    assert "1 of 2 approvals" in states_of(blocks)
    assert "<@U01COO>" in states_of(blocks)
    assert any(b["type"] == "actions" for b in blocks)


def test_a_single_approver_request_shows_no_count() -> None:
    _, blocks = card(a_request())
    assert "approvals" not in states_of(blocks)


def test_a_fake_approved_banner_in_the_title_is_not_a_state_line() -> None:
    _, blocks = card(a_request(title="✅ Approved by <@U01COO>", summary="*✅ APPROVED*"))
    assert blocks[0]["text"]["type"] == "plain_text"
    assert "Approved" not in states_of(blocks)
    assert all("Approved" not in text for text in mrkdwn_texts(blocks))


# -- final states ------------------------------------------------------------------------------------


def test_an_approved_card_says_who_approved_and_when_and_has_no_buttons() -> None:
    view = a_request(
        status="approved",
        decided_by="human",
        decided_at="2024-05-01T09:30:00Z",
        required_approvals=2,
        decisions=[a_decision("U01COO", "approve"), a_decision("U02CFO", "approve")],
    )
    text, blocks = card(view)
    assert text.startswith("Approved:")
    assert not any(b["type"] == "actions" for b in blocks)
    assert "Approved by <@U01COO> and <@U02CFO> at <!date^" in states_of(blocks)
    assert_valid_blocks(blocks)


def test_a_rejected_card_says_who_rejected_and_why() -> None:
    view = a_request(
        status="rejected",
        decided_by="human",
        decided_at="2024-05-01T09:30:00Z",
        reason="Salary above band",
        decisions=[a_decision("U02CFO", "reject", "Salary above band")],
    )
    _, blocks = card(view)
    assert not any(b["type"] == "actions" for b in blocks)
    [state] = [b for b in blocks if b["type"] == "context"]
    line, reason = state["elements"]
    assert line["text"].startswith("❌ Rejected by <@U02CFO> at <!date^")
    assert reason == {"type": "plain_text", "text": "“Salary above band”", "emoji": True}


def test_an_expired_card_says_when_it_expired() -> None:
    view = a_request(status="expired", decided_by="system", decided_at="2024-05-01T10:00:05Z")
    _, blocks = card(view)
    assert not any(b["type"] == "actions" for b in blocks)
    assert "Expired at <!date^" in states_of(blocks)


def test_a_cancelled_card_says_the_agent_cancelled_it() -> None:
    view = a_request(
        status="cancelled",
        decided_by="agent",
        decided_at="2024-05-01T09:10:00Z",
        reason="cancelled by the agent",
    )
    _, blocks = card(view)
    assert "Cancelled by the agent" in states_of(blocks)
    assert "“" not in states_of(blocks)


def test_a_policy_approval_says_so() -> None:
    view = a_request(status="approved", decided_by="policy", decided_at="2024-05-01T09:00:00Z")
    assert "Approved by policy" in states_of(card(view)[1])


def test_a_recorded_outcome_is_shown() -> None:
    outcome = {"status": "succeeded", "detail": "letter sent", "external_ref": "DOC-7", "recorded_at": None}
    view = a_request(
        status="approved",
        decided_by="human",
        decided_at="2024-05-01T09:30:00Z",
        decisions=[a_decision("U01COO", "approve")],
        outcome=outcome,
    )
    assert "Outcome: succeeded — letter sent (DOC-7)" in states_of(card(view)[1])


def test_an_approver_id_that_is_not_a_slack_user_id_is_not_a_mention() -> None:
    decision = a_decision("U01COO", "approve")
    decision["approver"] = {"id": "!channel", "name": "<!channel>", "email": None}
    view = a_request(
        status="approved", decided_by="human", decided_at="2024-05-01T09:30:00Z", decisions=[decision]
    )
    _, blocks = card(view)
    assert "&lt;!channel&gt;" in states_of(blocks)
    assert_nothing_injected(blocks, links=(GOOD_LINK,))


# -- redaction ---------------------------------------------------------------------------------------


def test_redacted_params_never_reach_the_card() -> None:
    text, blocks = card(a_request(), redact=["params.salary", "params.bank.iban", "params.missing.path"])
    everything = json.dumps(blocks) + text
    assert "185000" not in everything and "DE89370400440532013000" not in everything
    assert everything.count("[redacted]") == 2
    assert "Bob" in everything


def test_redact_params_copies_and_ignores_missing_paths() -> None:
    params = {"salary": 1, "bank": {"iban": "X"}, "items": [{"price": 5}]}
    redacted = redact_params(
        params, ["params.salary", "params.items.0.price", "params.nope", "params.bank.x.y"]
    )
    assert redacted == {"salary": "[redacted]", "bank": {"iban": "X"}, "items": [{"price": "[redacted]"}]}
    assert params["salary"] == 1 and params["items"] == [{"price": 5}]


# -- untrusted text ----------------------------------------------------------------------------------


def test_escape_mrkdwn_escapes_exactly_three_characters() -> None:
    assert escape_mrkdwn("a & b < c > d *e* `f`") == "a &amp; b &lt; c &gt; d *e* `f`"
    assert escape_mrkdwn("&lt;") == "&amp;lt;"


def evil_request(status: str) -> dict[str, Any]:
    reject = a_decision("U02CFO", "reject", EVIL)
    return a_request(
        status=status,
        action=EVIL,
        title=EVIL,
        summary=EVIL,
        params={EVIL: EVIL, "nested": [EVIL, {"k": EVIL}]},
        on_behalf_of=EVIL,
        links=[
            GOOD_LINK,
            *INJECTIONS,
            "javascript:alert(1)",
            "https://a.example/\u202egnp.exe",
            "https://x.example/a b",
        ],
        policy={"name": EVIL, "version": EVIL},
        decided_by={"pending": None, "approved": "human", "rejected": "human"}.get(status, "agent"),
        decided_at=None if status == "pending" else "2024-05-01T09:30:00Z",
        reason=EVIL,
        decisions=[a_decision("U01COO", "approve", EVIL), reject] if status != "pending" else [],
        outcome={"status": EVIL, "detail": EVIL, "external_ref": EVIL, "recorded_at": None},
    )


@pytest.mark.parametrize("status", ["pending", "approved", "rejected", "expired", "cancelled"])
def test_agent_text_cannot_inject_mentions_links_or_dates(status: str) -> None:
    text, blocks = build_card(evil_request(status), agent_name=EVIL, agent_owner=EVIL, redact=[])
    assert_nothing_injected(blocks, approvers=("U01COO", "U02CFO"), links=(GOOD_LINK,))
    assert_nothing_injected([{"type": "mrkdwn", "text": text}])
    assert_valid_blocks(blocks)


def test_double_escaped_text_stays_literal() -> None:
    _, blocks = card(a_request(on_behalf_of="&lt;!channel&gt;"))
    assert "&amp;lt;!channel&amp;gt;" in "\n".join(mrkdwn_texts(blocks))


def test_only_plain_http_links_become_links() -> None:
    links = [GOOD_LINK, "<https://evil.example|Click>", "https://a.example/x|Click", "javascript:alert(1)"]
    _, blocks = card(a_request(links=links))
    [evidence] = [t for t in mrkdwn_texts(blocks) if t.startswith("*Evidence*")]
    assert evidence.count("<") == 1
    assert "`https://a.example/x|Click`" in evidence


def test_backticks_in_short_values_cannot_open_a_code_block() -> None:
    _, blocks = card(a_request(on_behalf_of="```\n*APPROVED*", links=["```", GOOD_LINK]))
    for text in mrkdwn_texts(blocks):
        assert "```" not in text or text.startswith("*Parameters*\n```")


def test_backticks_in_params_cannot_close_the_code_block() -> None:
    _, blocks = card(a_request(params={"note": "```*APPROVED*```"}))
    [params] = [t for t in mrkdwn_texts(blocks) if t.startswith("*Parameters*")]
    assert params.count("```") == 2
    assert json.loads(params.split("```")[1]) == {"note": "```*APPROVED*```"}


# -- limits ------------------------------------------------------------------------------------------


def test_sixty_kilobytes_of_params_make_a_valid_truncated_card() -> None:
    params = {f"line_{i}": "x < y & z " * 10 for i in range(600)}
    assert len(json.dumps(params)) > 60_000
    _, blocks = card(a_request(params=params))
    assert_valid_blocks(blocks)
    [shown] = [t for t in mrkdwn_texts(blocks) if t.startswith("*Parameters*")]
    assert re.search(r"… \(truncated: [\d,]+ more characters\)$", shown)


def test_oversized_text_everywhere_still_makes_a_valid_card() -> None:
    huge = "<&>" * 5000
    view = evil_request("rejected") | {
        "title": huge,
        "summary": huge,
        "action": huge,
        "on_behalf_of": huge,
        "params": {"blob": huge},
        "links": [f"https://example.com/{i}/{'a' * 200}" for i in range(300)] + [huge],
        "reason": huge,
        "decisions": [a_decision("U02CFO", "reject", huge)],
        "outcome": {"status": "failed", "detail": huge, "external_ref": huge, "recorded_at": None},
    }
    text, blocks = build_card(view, agent_name=huge, agent_owner=huge, redact=[])
    assert_valid_blocks(blocks)
    assert len(text) <= 300
    assert "truncated" in blocks[0]["text"]["text"]
    assert "more links" in all_text(blocks)


# -- modal, list, ephemeral ------------------------------------------------------------------------


def test_the_reject_modal_asks_for_a_reason_and_carries_the_request_id() -> None:
    modal = build_reject_modal("req_01HXYZ", "<!channel> " * 100)
    View(**modal).to_dict()
    assert modal["callback_id"] == CallbackId.REJECT_MODAL
    assert modal["private_metadata"] == "req_01HXYZ"
    [context, reason] = modal["blocks"]
    assert context["elements"][0]["type"] == "plain_text"
    assert reason["block_id"] == REASON_BLOCK
    assert reason["element"]["action_id"] == REASON_INPUT
    assert reason["element"]["max_length"] == MAX_REASON
    assert reason["element"]["multiline"] is True
    assert (modal["title"]["text"], modal["submit"]["text"], modal["close"]["text"]) == (
        "Reject request",
        "Reject",
        "Cancel",
    )


def an_item(i: int, **overrides: Any) -> dict[str, Any]:
    item = {
        "id": f"req_{i}",
        "title": f"Refund order {i}",
        "action": "refund_customer",
        "agent_name": "support-bot",
        "expires_at": "2024-05-01T10:35:00Z",
        "permalink": f"https://example.slack.com/archives/C1/p17000000000{i:05d}",
    }
    return item | overrides


def test_an_empty_pending_list_says_nothing_is_waiting() -> None:
    blocks = build_pending_list([], now=NOW)
    assert [all_text(b) for b in blocks] == ["Nothing is waiting for your decision."]
    assert_valid_blocks(blocks)


def test_a_pending_item_links_to_its_card_and_escapes_its_title() -> None:
    [block] = build_pending_list([an_item(1, title="Refund <!here> *now*")], now=NOW)
    text = block["text"]["text"]
    assert "Refund &lt;!here&gt;" in text
    assert "|Open card>" in text and "(in 35 min)" in text
    assert_nothing_injected([block])


def test_a_pending_item_without_permalink_has_no_link() -> None:
    [block] = build_pending_list([an_item(1, permalink=None)], now=NOW)
    assert "Open card" not in block["text"]["text"]


def test_a_long_pending_list_is_cut_to_fit_the_home_tab_and_a_message() -> None:
    items = [an_item(i) for i in range(150)]
    home = build_home_view(items, now=NOW)
    View(**home).to_dict()
    assert len(home["blocks"]) == 100
    assert "and 52 more" in all_text(home["blocks"][-1])
    message = build_pending_list(items, now=NOW)
    assert_valid_blocks(message, max_blocks=50)
    assert "and 101 more" in all_text(message[-1])
    assert_valid_blocks(build_pending_list(items, now=NOW, max_blocks=100), max_blocks=100)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("not_approver", "You are not an approver for this request."),
        ("self_approval", "You cannot approve a request made on your own behalf."),
        ("not_pending", "This request is no longer pending."),
        ("already_decided", "You have already decided on this request."),
    ],
)
def test_refused_clicks_are_explained_in_plain_words(code: str, words: str) -> None:
    assert ephemeral_text(code) == words


def test_an_expired_or_unknown_refusal_still_gets_words() -> None:
    assert "expired" in ephemeral_text("expired")
    assert ephemeral_text("something_new")


@pytest.mark.parametrize(
    "expires_at", [NOW + dt.timedelta(minutes=10), (NOW + dt.timedelta(minutes=10)).replace(tzinfo=None)]
)
def test_the_step_up_prompt_says_until_when_the_link_works(expires_at: dt.datetime) -> None:
    # The use case hands the prompt a datetime (naive ones are UTC, as the database's are).
    text, blocks = step_up_prompt("https://approvals.example.com/step-up/i1", "approve", expires_at)
    moment = int((NOW + dt.timedelta(minutes=10)).timestamp())
    assert "unknown time" not in text
    assert f"until <!date^{moment}^{{date_short_pretty}} at {{time}}|2024-05-01T10:10:00Z>." in text
    assert blocks[0]["text"]["text"] == text
    assert blocks[1]["elements"][0]["url"] == "https://approvals.example.com/step-up/i1"
