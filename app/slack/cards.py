"""Block Kit builders: pure functions from a request's JSON view to message, modal and Home blocks.

Everything an agent wrote is untrusted. It goes into `plain_text` objects, or into mrkdwn only after
`escape_mrkdwn`, so it can never mention anyone, forge a link or a date, or pass for our state line.
The only `<…>` tokens in our mrkdwn are the ones built here: dates from parsed timestamps, mentions of
approvers from our own decision rows, and evidence URLs that are shown as themselves.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from app.slack.ids import MAX_REASON, REASON_BLOCK, REASON_INPUT, ActionId, CallbackId
from approvals.requests.lifecycle import Status

Block = dict[str, Any]

# Block Kit limits (docs/notes): Slack rejects the whole message when any one of them is exceeded.
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
# Our own, smaller budgets: a card is read at a glance, and several parts share one text object.
FIELD_VALUE_MAX = 300
FALLBACK_TEXT_MAX = 300
REASON_SHOWN_MAX = 1000
LINK_URL_MAX = 1000
LINK_TEXT_MAX = 300

REDACTED = "[redacted]"
_MENTIONABLE_USER = re.compile(r"[UW][A-Z0-9]+")
_PLAIN_HTTP_URL = re.compile(r"https?://[^/?#\s]+\S*", re.IGNORECASE)
_ESCAPED_LENGTH = {"&": 5, "<": 4, ">": 4}

_EPHEMERAL_TEXTS = {
    "not_approver": "You are not an approver for this request.",
    "self_approval": "You cannot approve a request made on your own behalf.",
    "not_pending": "This request is no longer pending.",
    "already_decided": "You have already decided on this request.",
    "expired": "This request has expired; it can no longer be approved or rejected.",
    "mfa_unavailable": "This request needs an MFA sign-in, but single sign-on is not configured here.",
    "unknown_user": "Slack could not tell us who you are, so your click was not recorded.",
    "identity_unavailable": "Slack did not answer who you are after several tries, so your click was not "
    "recorded. Please click again later.",
}
_EPHEMERAL_UNKNOWN = "Your click could not be recorded. Please try again, or ask the agent's owner."


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def redact_params(params: Mapping[str, Any] | None, redact: Sequence[str]) -> dict[str, Any]:
    """A deep copy of params with each `params.a.b` path replaced by "[redacted]"; missing paths are ignored."""
    result: dict[str, Any] = copy.deepcopy(dict(params or {}))
    for path in redact:
        head, _, rest = path.partition(".")
        if head != "params" or not rest:
            continue
        *parents, leaf = rest.split(".")
        node: Any = result
        for key in parents:
            node = _child(node, key)
        if isinstance(node, dict) and leaf in node:
            node[leaf] = REDACTED
        elif isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
            node[int(leaf)] = REDACTED
    return result


def _child(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    return None


def _truncation_note(omitted: int) -> str:
    return f"… (truncated: {omitted:,} more characters)"


def _clip(text: str, limit: int) -> str:
    """Plain text cut to at most `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    # The note for the whole length is the longest note we could need, so the result always fits.
    keep = max(limit - len(_truncation_note(len(text))), 0)
    return text[:keep] + _truncation_note(len(text) - keep)


def _escaped_prefix_length(text: str, budget: int) -> int:
    """How many characters of text fit in `budget` once escaped (an entity is never cut in half)."""
    used = 0
    for index, char in enumerate(text):
        used += _ESCAPED_LENGTH.get(char, 1)
        if used > budget:
            return index
    return len(text)


def _clip_escaped(text: str, limit: int) -> str:
    """Escaped mrkdwn of text within `limit` characters, saying how much was cut."""
    escaped = escape_mrkdwn(text)
    if len(escaped) <= limit:
        return escaped
    keep = _escaped_prefix_length(text, max(limit - len(_truncation_note(len(text))), 0))
    return escape_mrkdwn(text[:keep]) + _truncation_note(len(text) - keep)


def _code(text: str, limit: int = FIELD_VALUE_MAX) -> str:
    """Agent text as an inline code span, where *bold*, _italics_ and ``` blocks do not render.

    mrkdwn has no escape for a backtick, so one is shown as the look-alike U+02CB; a span cannot cross
    lines, so newlines become spaces. Both only change how a short value is displayed, never what is stored.
    """
    if not text:
        return "—"
    shown = text.replace("`", "\u02cb").replace("\r", " ").replace("\n", " ")
    return f"`{_clip_escaped(shown, limit - 2)}`"


def _plain(text: str, limit: int = SECTION_TEXT_MAX) -> Block:
    return {"type": "plain_text", "text": _clip(text, limit) or " ", "emoji": True}


def _mrkdwn(text: str) -> Block:
    # verbatim stops Slack's own preprocessing (bare #channel names, @mentions) of text we have escaped.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _parse_time(value: Any) -> dt.datetime | None:
    """A moment from our rows (ISO text) or from a use case's result (a datetime); None if neither."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _date_token(value: Any) -> str:
    """Slack's localised date token, built from the parsed timestamp only (never from the raw string)."""
    moment = _parse_time(value)
    if moment is None:
        return "unknown time"
    fallback = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} at {{time}}|{fallback}>"


def _mention(approver: Mapping[str, Any] | None) -> str:
    """A mention for a Slack user id from our decision rows, or the escaped name if it is not one."""
    approver = approver or {}
    user_id = str(approver.get("id") or "")
    if _MENTIONABLE_USER.fullmatch(user_id):
        return f"<@{user_id}>"
    return _code(str(approver.get("name") or approver.get("email") or user_id or "someone"), 100)


def _is_plain_url(url: str) -> bool:
    """An http(s) URL that Slack will show exactly as written: no label separator, brackets, spaces,
    control or bidi characters that could make it look like another address."""
    return (
        len(url) <= LINK_URL_MAX
        and _PLAIN_HTTP_URL.fullmatch(url) is not None
        and not any(char in "|<>" or unicodedata.category(char)[0] in "CZ" for char in url)
    )


def _link_line(url: str) -> str:
    """An evidence URL shown as itself: a link only when it cannot be disguised, escaped text otherwise."""
    return f"• <{escape_mrkdwn(url)}>" if _is_plain_url(url) else f"• {_code(url, LINK_TEXT_MAX)}"


def _field(label: str, value: str) -> Block:
    # Values are clipped to FIELD_VALUE_MAX by the caller, well inside FIELD_TEXT_MAX.
    return _mrkdwn(f"*{label}*\n{value}")


def _facts(view: Mapping[str, Any], agent_name: str, agent_owner: str) -> Block:
    policy = view.get("policy") or {}
    policy_text = f"{policy.get('name') or 'unnamed'} v{policy.get('version') or '?'}"
    agent = _clip_escaped(agent_name or "unknown agent", FIELD_VALUE_MAX)
    if agent_owner:
        agent += f" (owner: {_clip_escaped(agent_owner, FIELD_VALUE_MAX)})"
    return {
        "type": "section",
        "fields": [
            _field("Agent", agent),
            _field("On behalf of", _code(str(view.get("on_behalf_of") or ""))),
            _field("Action", _code(str(view.get("action") or ""))),
            _field("Policy", _code(policy_text)),
            _field("Expires", _date_token(view.get("expires_at"))),
            _field("Request", _code(str(view.get("id") or ""))),
        ],
    }


def _params_block(params: dict[str, Any]) -> Block:
    # Backticks only occur inside JSON strings; \u0060 is the same JSON and cannot close the code block.
    body = json.dumps(params, indent=2, ensure_ascii=False, default=str).replace("`", "\\u0060")
    fence_open, fence_close = "*Parameters*\n```\n", "\n```"
    budget = SECTION_TEXT_MAX - len(fence_open) - len(fence_close)
    if len(escape_mrkdwn(body)) <= budget:
        return {"type": "section", "text": _mrkdwn(fence_open + escape_mrkdwn(body) + fence_close)}
    budget -= len(_truncation_note(len(body))) + 1
    keep = _escaped_prefix_length(body, budget)
    # End on a whole line when one is near, so the reader sees complete keys and values.
    line_end = body.rfind("\n", 0, keep)
    keep = line_end if line_end > keep // 2 else keep
    text = fence_open + escape_mrkdwn(body[:keep]) + fence_close + "\n" + _truncation_note(len(body) - keep)
    return {"type": "section", "text": _mrkdwn(text)}


def _links_block(links: Sequence[Any]) -> Block:
    text = "*Evidence*"
    for shown, link in enumerate(links):
        line = _link_line(str(link))
        more = f"\n… and {len(links) - shown} more links"
        if len(text) + 1 + len(line) + len(more) > SECTION_TEXT_MAX:
            text += more
            break
        text += "\n" + line
    return {"type": "section", "text": _mrkdwn(text)}


def _people(decisions: Sequence[Mapping[str, Any]]) -> str:
    names = [_mention(d.get("approver")) + (" (MFA)" if d.get("mfa") else "") for d in decisions]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _buttons(request_id: str) -> Block:
    def button(text: str, style: str, action_id: ActionId) -> Block:
        return {
            "type": "button",
            "text": {"type": "plain_text", "text": text, "emoji": True},
            "style": style,
            "action_id": action_id.value,
            # Only the id: who may decide is checked against the database at click time, never the card.
            "value": request_id,
        }

    return {
        "type": "actions",
        "elements": [
            button("Approve", "primary", ActionId.APPROVE),
            button("Reject", "danger", ActionId.REJECT),
        ],
    }


def _state_line(view: Mapping[str, Any], decisions: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """Our own words for a final state, and the reason to quote under it (may be empty)."""
    status, decided_by = view.get("status"), view.get("decided_by")
    when = f" at {_date_token(view['decided_at'])}" if view.get("decided_at") else ""
    reason = str(view.get("reason") or "")
    approvals = [d for d in decisions if d.get("decision") == "approve"]
    rejections = [d for d in decisions if d.get("decision") == "reject"]
    if status == Status.APPROVED:
        if decided_by == "human" and approvals:
            return f"✅ Approved by {_people(approvals)}{when}", ""
        return f"✅ Approved by {_decider(decided_by)}{when}", reason
    if status == Status.REJECTED:
        if decided_by == "human" and rejections:
            reasons = [str(d["reason"]) for d in rejections if d.get("reason")]
            return f"❌ Rejected by {_people(rejections)}{when}", "; ".join(reasons) or reason
        return f"❌ Rejected by {_decider(decided_by)}{when}", reason
    if status == Status.EXPIRED:
        expired_at = view.get("decided_at") or view.get("expires_at")
        return f"⌛ Expired at {_date_token(expired_at)} with no decision", ""
    if status == Status.CANCELLED:
        # The agent's cancel is recorded with a stock reason; repeating it under the state adds nothing.
        shown = "" if reason.lower() == "cancelled by the agent" else reason
        return f"🚫 Cancelled by {_decider(decided_by)}{when}", shown
    return f"Status: {_code(str(status))}", ""


def _decider(decided_by: Any) -> str:
    return {"policy": "policy", "agent": "the agent", "system": "the system"}.get(str(decided_by), "a person")


def _state_blocks(view: Mapping[str, Any]) -> list[Block]:
    decisions = [d for d in view.get("decisions") or [] if isinstance(d, Mapping)]
    required = int(view.get("required_approvals") or 1)
    if view.get("status") == Status.PENDING:
        blocks = [_buttons(str(view["id"]))]
        if required > 1:
            approvals = [d for d in decisions if d.get("decision") == "approve"]
            line = f"{len(approvals)} of {required} approvals"
            if approvals:
                line += f" so far: {_people(approvals)}"
            blocks.append({"type": "context", "elements": [_mrkdwn(line)]})
        return blocks
    line, reason = _state_line(view, decisions)
    elements = [_mrkdwn(line + (":" if reason else ""))]
    if reason:
        elements.append(_plain(f"“{_clip(reason, REASON_SHOWN_MAX)}”"))
    blocks = [{"type": "context", "elements": elements}]
    outcome = view.get("outcome")
    if isinstance(outcome, Mapping):
        text = f"Outcome: {outcome.get('status') or 'unknown'}"
        if outcome.get("detail"):
            text += f" — {_clip(str(outcome['detail']), REASON_SHOWN_MAX)}"
        if outcome.get("external_ref"):
            text += f" ({_clip(str(outcome['external_ref']), 200)})"
        blocks.append({"type": "context", "elements": [_plain(text)]})
    return blocks


def _fallback_text(view: Mapping[str, Any]) -> str:
    prefixes: dict[str, str] = {
        Status.PENDING: "Approval needed",
        Status.APPROVED: "Approved",
        Status.REJECTED: "Rejected",
        Status.EXPIRED: "Expired",
        Status.CANCELLED: "Cancelled",
    }
    prefix = prefixes.get(str(view.get("status")), "Approval request")
    # The notification text is mrkdwn too: escaped, so it cannot mention or link either.
    return _clip_escaped(f"{prefix}: {view.get('title') or view.get('action') or ''}", FALLBACK_TEXT_MAX)


def build_card(
    view: Mapping[str, Any], *, agent_name: str, agent_owner: str, redact: Sequence[str]
) -> tuple[str, list[Block]]:
    """The fallback text and blocks of a request's card, in its current state."""
    title = str(view.get("title") or "").strip() or "Approval request"
    blocks: list[Block] = [
        {"type": "header", "text": _plain(title, HEADER_TEXT_MAX)},
        _facts(view, agent_name, agent_owner),
    ]
    if view.get("summary"):
        blocks.append({"type": "section", "text": _plain(str(view["summary"]))})
    params = redact_params(view.get("params"), redact)
    if params:
        blocks.append(_params_block(params))
    if view.get("links"):
        blocks.append(_links_block(list(view["links"])))
    blocks.extend(_state_blocks(view))
    return _fallback_text(view), blocks[:MAX_MESSAGE_BLOCKS]


def build_reject_modal(request_id: str, title: str) -> Block:
    """The modal that asks an approver why they reject; the request id rides in private_metadata."""
    return {
        "type": "modal",
        "callback_id": CallbackId.REJECT_MODAL.value,
        "title": {"type": "plain_text", "text": "Reject request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": request_id,
        "blocks": [
            {"type": "context", "elements": [_plain(title or "Approval request", 300)]},
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Why are you rejecting it?"},
                "hint": {"type": "plain_text", "text": "The agent and its owner will see this reason."},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "min_length": 1,
                    "max_length": MAX_REASON,
                },
            },
        ],
    }


def _relative(value: Any, now: dt.datetime) -> str:
    moment = _parse_time(value)
    if moment is None:
        return ""
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    minutes = math.ceil((moment - now).total_seconds() / 60)
    if minutes <= 0:
        return " (due now)"
    if minutes < 120:
        return f" (in {minutes} min)"
    if minutes < 48 * 60:
        return f" (in {minutes // 60} h)"
    return f" (in {minutes // (24 * 60)} days)"


def _pending_item(item: Mapping[str, Any], now: dt.datetime) -> Block:
    text = f"*{_clip_escaped(str(item.get('title') or 'Approval request'), 500)}*\n"
    text += f"{_code(str(item.get('action') or ''), 200)} from {_clip_escaped(str(item.get('agent_name') or ''), 200)}"
    text += f" · expires {_date_token(item.get('expires_at'))}{_relative(item.get('expires_at'), now)}"
    permalink = str(item.get("permalink") or "")
    if _is_plain_url(permalink):
        text += f" · <{escape_mrkdwn(permalink)}|Open card>"
    return {"type": "section", "text": _mrkdwn(text)}


def build_pending_list(
    items: Sequence[Mapping[str, Any]], *, now: dt.datetime, max_blocks: int = MAX_MESSAGE_BLOCKS
) -> list[Block]:
    """One section per request waiting for the caller; `max_blocks` is 50 for a message, 100 for Home."""
    if not items:
        return [{"type": "section", "text": _plain("Nothing is waiting for your decision.")}]
    if len(items) <= max_blocks:
        return [_pending_item(item, now) for item in items]
    shown = max_blocks - 1
    blocks = [_pending_item(item, now) for item in items[:shown]]
    more = f"… and {len(items) - shown} more waiting for your decision."
    blocks.append({"type": "context", "elements": [_plain(more)]})
    return blocks


def build_home_view(items: Sequence[Mapping[str, Any]], *, now: dt.datetime) -> Block:
    """The App Home tab: the same list as /approvals under a header."""
    header = {"type": "header", "text": _plain("Waiting for your decision")}
    return {
        "type": "home",
        "blocks": [header, *build_pending_list(items, now=now, max_blocks=MAX_VIEW_BLOCKS - 1)],
    }


def ephemeral_text(reason_code: str) -> str:
    """Plain words for a click we refused, by refusal reason."""
    return _EPHEMERAL_TEXTS.get(reason_code, _EPHEMERAL_UNKNOWN)


def step_up_prompt(url: str, choice: str, expires_at: dt.datetime) -> tuple[str, list[dict[str, Any]]]:
    """The ephemeral that holds a click for MFA: why, and a "Verify with SSO" link button."""
    verb = "approval" if choice == "approve" else "rejection"
    text = (
        f"This request needs a fresh sign-in with your company's SSO before your {verb} counts. "
        f"The link works once, until {_date_token(expires_at)}."
    )
    return text, [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": ActionId.VERIFY_SSO.value,
                    "text": {"type": "plain_text", "text": "Verify with SSO"},
                    "style": "primary",
                    "url": url,
                }
            ],
        },
    ]
