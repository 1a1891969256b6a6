"""The auditor's report as one self-contained HTML file: inline CSS and an inline SVG chart, nothing else.

Agents write titles, summaries, params and reasons, and Slack supplies names: all of it is untrusted, so
every value goes through `_e` (html.escape, quotes included) on its way into the page. The page has no
script, and its Content-Security-Policy forbids scripts and every fetch, so even a value that slipped
through could neither run nor phone home. Links an agent gave are shown as text, never as links.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable
from typing import Any

from approvals.audit.report_figures import (
    REFUSAL_REASONS,
    DecisionTimes,
    MfaCoverage,
    ReportData,
    Verification,
)
from approvals.requests.lifecycle import STATUSES

# default-src 'none' blocks scripts, images, fonts, frames and connections; only the inline style is allowed.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MFA_FIELDS = ("iss", "sub", "amr", "acr", "auth_time")

STYLE = """
:root { --ink: #1d2433; --muted: #5b6475; --line: #d9dee7; --ok: #1f7a3f; --bad: #b3261e; --bar: #3d6fb6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 6px; overflow-wrap: anywhere; }
p.scope, .muted { color: var(--muted); }
nav a { margin-right: 12px; color: var(--bar); }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f3f5f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card .value { font-size: 22px; font-weight: 700; }
.card .label { color: var(--muted); font-size: 12px; }
.verdict { border-radius: 8px; padding: 12px 16px; margin: 16px 0; border: 2px solid; }
.verdict.ok { border-color: var(--ok); background: #eef8f1; }
.verdict.failed { border-color: var(--bad); background: #fdeeed; }
.verdict .status { font-size: 20px; font-weight: 700; }
.verdict.ok .status { color: var(--ok); }
.verdict.failed .status { color: var(--bad); }
.warn { color: var(--bad); font-weight: 600; }
article.chain { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin: 14px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f7f9; padding: 6px; margin: 4px 0;
      font-size: 12px; }
code, .hash { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
details summary { cursor: pointer; color: var(--muted); }
svg text { font: 12px system-ui, sans-serif; fill: var(--ink); }
svg .bar rect { fill: var(--bar); }
@media print { nav { display: none; } article.chain { break-inside: avoid; } }
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute; None shows as a dash."""
    if value is None or value == "":
        return "—"
    return html.escape(str(value), quote=True)


def _when(value: dt.datetime | str | None) -> str:
    """A UTC time an auditor reads at a glance: 2026-11-17 09:30:05 UTC."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return _e(value)
    return _e(value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f} %"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, numeric: Iterable[int] = ()) -> str:
    """A table from already-escaped cells; `numeric` columns are right-aligned."""
    right = set(numeric)
    head = "".join(f"<th{' class=num' if i in right else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in right else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(ident: str, value: str, label: str) -> str:
    return f'<div class="card"><div class="value" id="{ident}">{value}</div><div class="label">{label}</div></div>'


def _more(shown: int, total: int, command: str) -> str:
    if total <= shown:
        return ""
    return (
        f'<p class="muted">Showing the first {shown} of {total}; '
        f"<code>{_e(command)}</code> lists them all.</p>"
    )


def _verification(v: Verification) -> str:
    if v.ok:
        where = ""
    elif v.broken_chain is not None:
        where = (
            f'<p id="verification-where">First broken link: chain <code>{_e(v.broken_chain)}</code>, '
            f"event {_e(v.broken_seq)}: {_e(v.problem)}</p>"
        )
    else:
        where = (
            f'<p id="verification-where">First broken link: checkpoint {_e(v.broken_checkpoint)}: '
            f"{_e(v.problem)}</p>"
        )
    css = "ok" if v.ok else "failed"
    return (
        f'<section id="verification"><h2>Verification of the audit log</h2>'
        f'<div class="verdict {css}"><div class="status" id="verification-status">{"OK" if v.ok else "FAILED"}</div>'
        f'<div id="verification-detail">{_e(v.summary)}</div>{where}</div>'
        f'<p class="muted">Every hash chain and every signed checkpoint in the whole log was recomputed '
        f"({v.chains} chains, {v.events} events, {v.checkpoints} checkpoints), not just this period's: "
        f"the same check as <code>approvals audit verify</code>.</p></section>"
    )


def _summary(data: ReportData) -> str:
    times = data.decision_times
    return (
        '<div class="cards">'
        + "".join(
            (
                _card("figure-population", str(data.population), "requests created in the period"),
                _card("figure-human-decisions", str(data.mfa.decisions), "human decisions"),
                _card(
                    "figure-mfa-coverage", _percent(data.mfa.share), "of human decisions carry MFA evidence"
                ),
                _card(
                    "figure-median-decision",
                    _duration(times.median_seconds),
                    "median time to a human decision",
                ),
                _card("figure-refusals", str(data.refusals_total), "refused clicks and step-ups"),
                _card("figure-expiries", str(data.expiries_total), "expired without a decision"),
            )
        )
        + "</div>"
    )


def _counts(data: ReportData) -> str:
    statuses = list(data.by_status)
    status_rows = [
        (_e(s), f'<span id="status-{_e(s)}">{data.by_status[s]}</span>') for s in statuses if s in STATUSES
    ] + [(_e(s), str(data.by_status[s])) for s in statuses if s not in STATUSES]
    # A request nobody has decided yet has no decider: it is counted apart, not as one.
    decider_rows = [
        (_e(d), f'<span id="decider-{_e(d)}">{n}</span>')
        for d, n in sorted(data.by_decider.items())
        if d != "pending"
    ]
    if data.by_decider.get("pending"):
        decider_rows.append(
            ("<i>not decided yet</i>", f'<span id="undecided">{data.by_decider["pending"]}</span>')
        )
    outcome_rows = [(_e(o), f'<span id="outcome-{_e(o)}">{n}</span>') for o, n in data.by_outcome.items()]
    policy_rows = [
        (
            f"<code>{_e(p.policy)}</code>",
            f'<span id="policy-total-{_e(p.policy)}">{p.total}</span>',
            *(str(p.by_status.get(s, 0)) for s in statuses),
            str(p.outcomes["succeeded"]),
            str(p.outcomes["failed"]),
        )
        for p in data.by_policy
    ]
    per_policy = (
        _table(
            ["policy", "total", *map(_e, statuses), "outcome succeeded", "outcome failed"],
            policy_rows,
            numeric=range(1, len(statuses) + 4),
        )
        if policy_rows
        else '<p class="muted">No requests in this period.</p>'
    )
    return (
        '<section id="counts"><h2>Requests by final status, decider and outcome</h2>'
        '<div class="cards">'
        f'<div class="card">{_table(["status", "requests"], status_rows, numeric=[1])}</div>'
        f'<div class="card">{_table(["decided by", "requests"], decider_rows, numeric=[1])}</div>'
        f'<div class="card">{_table(["execution outcome", "requests"], outcome_rows, numeric=[1])}</div>'
        "</div><h3>By policy</h3>"
        f"{per_policy}</section>"
    )


def _chart(times: DecisionTimes) -> str:
    """An SVG bar chart of time-to-decision buckets, with each bar's count written above it."""
    width, height, left, bottom, top = 720, 260, 40, 40, 24
    slot = (width - left) / len(times.buckets)
    tallest = max((b.count for b in times.buckets), default=0) or 1
    plot = height - bottom - top
    bars = []
    for i, bucket in enumerate(times.buckets):
        h = plot * bucket.count / tallest
        x = left + i * slot + slot * 0.15
        y = top + plot - h
        label = _e(bucket.label)
        noun = "decision" if bucket.count == 1 else "decisions"
        bars.append(
            f'<g class="bar" data-bucket="{label}" data-count="{bucket.count}">'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}">'
            f"<title>{label}: {bucket.count} {noun}</title></rect>"
            f'<text class="count" x="{x + slot * 0.35:.1f}" y="{y - 6:.1f}" text-anchor="middle">{bucket.count}</text>'
            f'<text x="{x + slot * 0.35:.1f}" y="{height - bottom + 18}" text-anchor="middle">{label}</text></g>'
        )
    axis = (
        f'<line x1="{left}" y1="{top + plot}" x2="{width}" y2="{top + plot}" stroke="#888"/>'
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{tallest}</text>'
        f'<text x="{left - 6}" y="{top + plot}" text-anchor="end">0</text>'
    )
    return (
        f'<svg id="decision-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-labelledby="decision-chart-title">'
        f'<title id="decision-chart-title">Time from request to human decision, {times.count} decisions</title>'
        f"{axis}{''.join(bars)}</svg>"
    )


def _decision_times(times: DecisionTimes) -> str:
    if times.count:
        body = (
            f'{_chart(times)}<p>Median <b id="decision-median">{_duration(times.median_seconds)}</b>, '
            f'90th percentile <b id="decision-p90">{_duration(times.p90_seconds)}</b>, '
            f'longest <b id="decision-max">{_duration(times.max_seconds)}</b> '
            f'over <span id="decision-count">{times.count}</span> {_plural(times.count, "request")} decided by people.</p>'
        )
    else:
        body = '<p class="muted" id="decision-count">No request in this period was decided by a person.</p>'

    return (
        '<section id="time-to-decision"><h2>Time to decision</h2>'
        '<p class="muted">From the creation of a request to the human decision that made it final '
        "(the last approval of a quorum, or a rejection). Requests decided by policy, cancelled or expired "
        f"are not included.</p>{body}</section>"
    )


def _refusals(data: ReportData) -> str:
    reasons = list(REFUSAL_REASONS) + sorted(set(data.refusals_by_reason) - set(REFUSAL_REASONS))
    counts = [
        (f"<code>{_e(r)}</code>", f'<span id="refusal-{_e(r)}">{data.refusals_by_reason.get(r, 0)}</span>')
        for r in reasons
    ]
    rows = [
        (
            _when(r.at),
            f"<code>{_e(r.request_id)}</code><br>{_e(r.title)}",
            f"<code>{_e(r.policy)}</code>",
            f"{_e(r.user_name)} &lt;{_e(r.email)}&gt;<br><code>{_e(r.user_id)}</code>",
            _e(r.choice),
            f"<code>{_e(r.reason)}</code>" + ("" if r.kind == "click_refused" else f" ({_e(r.kind)})"),
        )
        for r in data.refusals
    ]
    listing = (
        _table(["when", "request", "policy", "who", "choice", "reason"], rows)
        if rows
        else '<p class="muted">No click was refused.</p>'
    )
    return (
        '<section id="refusals"><h2>Refused clicks</h2>'
        '<p class="muted">Clicks the rules turned down when they were processed: not an approver, the '
        "request's own principal, no longer pending, already decided by that person; and failed MFA "
        "step-ups.</p>"
        f"{_table(['reason', 'refusals'], counts, numeric=[1])}{listing}"
        f"{_more(len(data.refusals), data.refusals_total, 'approvals audit events --kind click_refused')}"
        "</section>"
    )


def _expiries(data: ReportData) -> str:
    rows = [
        (
            f"<code>{_e(x.request_id)}</code>",
            _e(x.title),
            _e(x.agent),
            f"<code>{_e(x.policy)}</code>",
            _when(x.created_at),
            _when(x.expired_at or x.expires_at),
            f"{x.approvals} of {x.required}",
        )
        for x in data.expiries
    ]
    listing = (
        _table(["request", "title", "agent", "policy", "created", "expired", "approvals"], rows)
        if rows
        else '<p class="muted">No request expired.</p>'
    )
    return (
        '<section id="expiries"><h2>Expiries</h2><p>Requests that reached their deadline with no final '
        f'decision: <b id="expiries-total">{data.expiries_total}</b>.</p>{listing}'
        f"{_more(len(data.expiries), data.expiries_total, 'approvals audit export --status expired')}</section>"
    )


def _mfa(mfa: MfaCoverage) -> str:
    rows = [
        (
            f"<code>{_e(p.policy)}</code>",
            "required" if p.required else "not required",
            str(p.decisions),
            str(p.with_mfa),
            _percent(p.with_mfa / p.decisions if p.decisions else None),
        )
        for p in mfa.by_policy
    ]
    missing = mfa.missing_where_required
    alarm = (
        f'<p class="warn" id="mfa-missing">{missing} decisions under a policy requiring MFA carry no MFA '
        "evidence.</p>"
        if missing
        else ""
    )
    return (
        '<section id="mfa"><h2>MFA coverage</h2>'
        f'<p><b id="mfa-coverage">{_percent(mfa.share)}</b> of human decisions '
        f'(<span id="mfa-with">{mfa.with_mfa}</span> of <span id="mfa-decisions">{mfa.decisions}</span>) '
        "carry MFA evidence from a step-up login (issuer, subject, amr, acr, auth_time).</p>"
        f"{alarm}"
        + (
            _table(
                ["policy", "MFA by the rule", "decisions", "with MFA", "coverage"], rows, numeric=[2, 3, 4]
            )
            if rows
            else ""
        )
        + "</section>"
    )


def _mfa_evidence(mfa: Any) -> str:
    if not mfa:
        return '<span class="muted">none</span>'
    if not isinstance(mfa, dict):
        return _e(mfa)
    keys = [k for k in MFA_FIELDS if k in mfa] + sorted(k for k in mfa if k not in MFA_FIELDS)
    parts = []
    for key in keys:
        value = mfa[key]
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{_e(key)}=<code>{_e(shown)}</code>")
    return "<br>".join(parts)


def _event_summary(kind: str, data: dict[str, Any]) -> str:
    """One line of plain text for a timeline row (escaped by the caller)."""
    who = f"{data.get('user_name') or '?'} <{data.get('email') or '?'}> ({data.get('user_id') or '?'})"
    if kind == "request_created":
        return (
            f"{data.get('agent')} asked for {data.get('action')} on behalf of {data.get('on_behalf_of')}, "
            f"expiring {data.get('expires_at')}"
        )
    if kind == "policy_evaluated":
        reason = f": {data['reason']}" if data.get("reason") else ""
        return (
            f"policy {data.get('policy')} (version {data.get('policy_version')}, rule {data.get('rule_index')}) "
            f"decided {data.get('decision')}{reason}"
        )
    if kind == "decision_recorded":
        reason = f", reason: {data['reason']}" if data.get("reason") else ""
        mfa = "with MFA evidence" if data.get("mfa") else "without MFA evidence"
        return f"{data.get('choice')} by {who}{reason}, {mfa}"
    if kind == "click_refused":
        return (
            f"{data.get('choice')} by {who} refused: {data.get('reason')} (request was {data.get('status')})"
        )
    if kind.startswith("step_up_"):
        detail = f" ({data['detail']})" if data.get("detail") else ""
        return f"{data.get('choice')} by {data.get('user_id')}: {data.get('reason') or 'step-up login asked'}{detail}"
    if kind.startswith("request_"):
        extra = ""
        if "approvals" in data:
            extra = f", {data['approvals']} of {data.get('required')} approvals"
        if data.get("reason"):
            extra += f": {data['reason']}"
        return f"{kind.removeprefix('request_')} (decided by {data.get('decided_by')}){extra}"
    if kind == "outcome_recorded":
        return f"outcome {data.get('status')}: {data.get('detail') or ''} (ref {data.get('external_ref')})"
    if kind == "notification_posted":
        return (
            f"card posted to {data.get('destination')} (channel {data.get('channel')}, ts {data.get('ts')})"
        )
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= 300 else text[:300] + "…"


def _timeline(chain: dict[str, Any]) -> str:
    """Audit events in chain order, with callback attempts (not audit events) placed among them by time."""

    def moment(value: str) -> dt.datetime:
        # ISO strings only sort as text when every one has microseconds: compare times instead.
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))

    entries: list[tuple[dt.datetime, int, int, str]] = []
    latest: dt.datetime | None = None
    for event in chain["events"]:
        # The chain's order (seq) is the truth: an event may carry a time a moment before the one
        # ahead of it (a decision's final state is stamped with the click's time), so key events by
        # the latest time seen so far, which never goes backwards along the chain.
        at = moment(event["at"])
        latest = at if latest is None or at > latest else latest
        data = event["data"] if isinstance(event["data"], dict) else {"data": event["data"]}
        row = (
            f"<tr><td>{_when(event['at'])}</td><td class=num>{_e(event['seq'])}</td>"
            f"<td><code>{_e(event['kind'])}</code></td><td>{_e(event['actor'])}</td>"
            f"<td>{_e(_event_summary(str(event['kind']), data))}"
            f"<details><summary>data</summary><pre>{_e(_json(event['data']))}</pre></details></td>"
            f'<td><span class="hash" title="{_e(event["hash"])}">{_e(str(event["hash"])[:12])}…</span></td></tr>'
        )
        entries.append((latest, 0, int(event["seq"]), row))
    for attempt in chain["callbacks"]:
        status = attempt["status_code"] if attempt["status_code"] is not None else "no answer"
        error = f", {attempt['error']}" if attempt.get("error") else ""
        what = (
            f"attempt {attempt['attempt']}: {attempt['result']} ({status}, {attempt['latency_ms']} ms{error})"
        )
        row = (
            f"<tr><td>{_when(attempt['at'])}</td><td class=num>—</td><td><code>callback_attempt</code></td>"
            f"<td>service</td><td>{_e(what)}</td><td>not hashed</td></tr>"
        )
        entries.append((moment(attempt["at"]), 1, int(attempt["attempt"]), row))
    rows = "".join(entry[3] for entry in sorted(entries, key=lambda entry: entry[:3]))
    return (
        '<table class="timeline"><thead><tr><th>when</th><th class=num>seq</th><th>event</th><th>actor</th>'
        f"<th>what happened</th><th>hash</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _plural(number: int, noun: str) -> str:
    return noun if number == 1 else f"{noun}s"


def count(number: int, noun: str) -> str:
    """ "1 request", "8 requests"."""
    return f"{number} {_plural(number, noun)}"


def _ordinal(number: int) -> str:
    """2nd, 3rd, 11th, 21st, 1000th."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number:,}{suffix}"


def _approvals_asked(chain: dict[str, Any]) -> str:
    """What the policy asked of people: a request the policy decided itself asked nobody."""
    final = chain.get("final") or {}
    if final.get("decided_by") == "policy":
        return "decided by the policy, no approval asked"
    required = int(chain["policy"].get("required_approvals") or 0)
    return f"{required} {_plural(required, 'approval')} required"


def _chain(chain: dict[str, Any]) -> str:
    request, agent, policy, final = chain["request"], chain["agent"], chain["policy"], chain["final"]
    outcome = chain["outcome"]
    facts = [
        ("request", f"<code>{_e(chain['id'])}</code>"),
        ("status", f'<b class="chain-status">{_e(chain["status"])}</b>'),
        ("agent", f"{_e(agent['name'])} (owner {_e(agent['owner'])}, risk {_e(agent['risk'])})"),
        ("action", f"<code>{_e(request['action'])}</code>"),
        ("on behalf of", _e(request["on_behalf_of"])),
        (
            "policy",
            f"<code>{_e(policy['name'])}</code>, version {_e(policy['version'])}, "
            f'<span class="hash">sha256 {_e((policy["sha256"] or "")[:16])}…</span>, '
            + _approvals_asked(chain),
        ),
        ("created", _when(request["created_at"])),
        ("expires", _when(request["expires_at"])),
        (
            "final",
            f"{_e(final['status'])} by {_e(final['decided_by'])} at {_when(final['decided_at'])}"
            + (f": {_e(final['reason'])}" if final.get("reason") else "")
            if final
            else "not decided yet",
        ),
        (
            "outcome",
            f"{_e(outcome['status'])} at {_when(outcome['recorded_at'])}: {_e(outcome['detail'])} "
            f"(ref {_e(outcome['external_ref'])})"
            if outcome
            else "none recorded",
        ),
        ("payload", f'<span class="hash">sha256 {_e(request["payload_sha256"])}</span>'),
        ("summary", _e(request["summary"])),
        ("params", f"<pre>{_e(_json(request['params']))}</pre>"),
        ("links", "<br>".join(_e(link) for link in request["links"] or []) or "—"),
    ]
    decisions = [
        (
            f"{_e(d['approver']['name'])} &lt;{_e(d['approver']['email'])}&gt;<br>"
            f"<code>{_e(d['approver']['id'])}</code> team <code>{_e(d['approver']['team_id'])}</code>",
            _e(d["decision"]),
            _e(d["reason"]),
            _when(d["decided_at"]),
            _mfa_evidence(d["mfa"]),
        )
        for d in chain["decisions"]
    ]
    decision_table = (
        _table(["approver", "decision", "reason", "when", "MFA evidence"], decisions)
        if decisions
        else '<p class="muted">No human decision.</p>'
    )
    ident = _e(chain["id"])
    return (
        f'<article class="chain" id="chain-{ident}"><h3 class="chain-title">{_e(request["title"])}</h3>'
        '<dl class="facts">'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        + f"</dl><h4>Human decisions</h4>{decision_table}<h4>Timeline</h4>{_timeline(chain)}</article>"
    )


def _sample(data: ReportData) -> str:
    if not data.sample:
        return '<section id="sample"><h2>Sample chains</h2><p class="muted">No requests in this period.</p></section>'
    ratio = data.population / data.sample_size
    if data.population <= data.sample_size:
        step = "every request"
    elif ratio.is_integer():
        step = f"every {_ordinal(int(ratio))} request in creation order"
    else:
        step = f"about one request in {ratio:.1f}, in creation order"
    return (
        f'<section id="sample"><h2>Sample chains</h2><p class="muted">'
        f'<span id="sample-count">{len(data.sample)}</span> of {data.population} chains ({_e(step)}), '
        "each with its full timeline. The same chains in full: "
        "<code>approvals audit export --from … --to … --format json</code>.</p>"
        + "".join(_chain(chain) for chain in data.sample)
        + "</section>"
    )


def render_report(data: ReportData) -> str:
    """The whole report as one HTML document."""
    period = f"{_when(data.start)} to {_when(data.end)}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Approvals audit report, {period}</title><style>{STYLE}</style></head><body>"
        "<header><h1>Approvals audit report</h1>"
        f'<p class="scope" id="scope">Requests created from <b>{_when(data.start)}</b> (inclusive) to '
        f"<b>{_when(data.end)}</b> (exclusive). Every figure below is about those requests, including clicks "
        "and expiries that came after the period ended; verification covers the whole log. "
        f"Generated {_when(data.generated_at)}, from one read-only snapshot of the database.</p></header>"
        '<nav><a href="#verification">Verification</a><a href="#counts">Counts</a>'
        '<a href="#time-to-decision">Time to decision</a><a href="#refusals">Refused clicks</a>'
        '<a href="#expiries">Expiries</a><a href="#mfa">MFA</a><a href="#sample">Sample chains</a></nav>'
        f"{_verification(data.verification)}{_summary(data)}{_counts(data)}{_decision_times(data.decision_times)}"
        f"{_refusals(data)}{_expiries(data)}{_mfa(data.mfa)}{_sample(data)}"
        '<footer><p class="muted">A self-contained file: it loads nothing from the network and runs no '
        "script.</p></footer></body></html>\n"
    )
