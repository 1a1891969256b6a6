"""The auditor's HTML report: figures gathered from real service activity, read back from headless Chromium.

Requests, clicks, decisions, expiries and outcomes are made through the service's own code (HTTP API and
`record_click`), the report is written by the real CLI in a subprocess, and the file is loaded by
Chromium; assertions are on the DOM Chromium ends up with, i.e. what a person would see.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text, update

from app.audit_report import render_report
from app.cli.main import main
from approvals.audit.report_figures import decision_histogram, gather_report, read_only_snapshot
from approvals.requests.decisions import Click, Clicker, Refused, record_click
from approvals.requests.use_cases import expire_due_requests
from approvals.tables import requests
from tests.conftest import Api, offer, run_cli

REQUIRE_CHROMIUM = os.environ.get("APPROVALS_TEST_REQUIRE_CHROMIUM") == "1"
# Agent text meant to run if it were pasted into the page unescaped; each would mark the document.
HOSTILE_TITLE = "<script>document.documentElement.dataset.pwned='title'</script>"
HOSTILE_SUMMARY = "<img src=x onerror=\"document.documentElement.dataset.pwned='summary'\">"
HOSTILE_NAME = "<b onmouseover=alert(1)>Mallory</b>"
MFA_EVIDENCE = {
    "iss": "https://idp.example.com",
    "sub": "coo-7731",
    "amr": ["mfa", "otp"],
    "acr": "urn:example:mfa",
    "auth_time": 1_700_000_000,
}
COO = Clicker("U01COO", "T0TEAM", "Cora Coo", "coo@example.com")
CFO = Clicker("U02CFO", "T0TEAM", "Cyrus Cfo", "cfo@example.com")


def chromium_path() -> str:
    """Chromium, or a skip; a failure instead when CI said it must be there."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    if REQUIRE_CHROMIUM:
        pytest.fail("chromium is required (APPROVALS_TEST_REQUIRE_CHROMIUM=1) but is not installed")
    pytest.skip("chromium is not installed")


@pytest.fixture
def chromium() -> str:
    return chromium_path()


async def dump_dom(chromium: str, page: Path, profile: Path) -> str:
    """The DOM after Chromium has loaded the page and run whatever scripts it would run."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",  # a profile of its own: parallel workers never share one
        "--dump-dom",
        page.resolve().as_uri(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    within: tuple[str, ...] = ()  # the ids of the elements it is nested in, outermost first


class Dom(HTMLParser):
    """Every element with its attributes and its text content, from an HTML document."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "col", "source", "base", "wbr", "area"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.open: list[tuple[Element, list[str]]] = []

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> Element:
        within = tuple(e.attrs["id"] for e, _ in self.open if e.attrs.get("id"))
        element = Element(tag, {k: v or "" for k, v in attrs}, within=within)
        self.elements.append(element)
        return element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = self._element(tag, attrs)
        if tag not in self.VOID:
            self.open.append((element, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            element, parts = self.open.pop()
            element.text = "".join(parts)
            if element.tag == tag:
                return

    def handle_data(self, data: str) -> None:
        for _element, parts in self.open:
            parts.append(data)

    @classmethod
    def of(cls, document: str) -> Dom:
        dom = cls()
        dom.feed(document)
        dom.close()
        return dom

    def by_id(self, ident: str) -> Element:
        matches = [e for e in self.elements if e.attrs.get("id") == ident]
        assert len(matches) == 1, f"{len(matches)} elements with id {ident!r}"
        return matches[0]

    def text(self, ident: str) -> str:
        return " ".join(self.by_id(ident).text.split())

    def with_class(self, name: str) -> list[Element]:
        return [e for e in self.elements if name in e.attrs.get("class", "").split()]

    def inside(self, ident: str) -> list[Element]:
        """Every element nested in the one with that id."""
        self.by_id(ident)
        return [e for e in self.elements if ident in e.within]


def period() -> tuple[str, str]:
    """A window around now: a plain date for --from and an ISO date-time for --to, so both forms are used."""
    now = dt.datetime.now(dt.UTC)
    return (now - dt.timedelta(days=2)).date().isoformat(), (now + dt.timedelta(days=1)).isoformat()


async def _create(api: Api, body: dict[str, Any]) -> str:
    resp = await api.post("/v1/requests", body)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _click(api: Api, request_id: str, choice: str, who: Clicker, ts: str, **extra: Any) -> Any:
    async with api.container.engine.begin() as conn:
        return await record_click(conn, Click(request_id, choice, who, ts, **extra))  # type: ignore[arg-type]


async def _shift_created(api: Api, request_id: str, by: dt.timedelta) -> None:
    """Pretend a request was made earlier: the report measures from requests.created_at."""
    async with api.container.engine.begin() as conn:
        row = (await conn.execute(select(requests.c.created_at).where(requests.c.id == request_id))).one()
        await conn.execute(
            update(requests).where(requests.c.id == request_id).values(created_at=row.created_at - by)
        )


async def seed(api: Api) -> dict[str, str]:
    """A period with every figure the report shows, and one request from long before it."""
    ids: dict[str, str] = {}
    # Approved by a person with MFA, three hours after it was asked for.
    ids["slow"] = await _create(api, offer(title="Offer for A. Slow"))
    await _shift_created(api, ids["slow"], dt.timedelta(hours=3))
    assert (await _click(api, ids["slow"], "approve", COO, "1.1", mfa=MFA_EVIDENCE)).status == "approved"
    # Rejected at once, without MFA.
    ids["rejected"] = await _create(api, offer(title="Offer for B. Quick"))
    assert (
        await _click(api, ids["rejected"], "reject", CFO, "2.1", reason="above band")
    ).status == "rejected"
    # Two approvals needed, one given with MFA; then one refused click of each kind.
    ids["quorum"] = await _create(
        api, offer(action="refund_customer", title="Refund order 7", params={"order": 7})
    )
    assert (await _click(api, ids["quorum"], "approve", COO, "3.1", mfa=MFA_EVIDENCE)).status == "pending"
    refused = [
        await _click(api, ids["quorum"], "approve", COO, "3.2"),
        await _click(
            api, ids["quorum"], "approve", Clicker("U09NOBODY", "T0TEAM", HOSTILE_NAME, None), "3.3"
        ),
        await _click(
            api, ids["quorum"], "approve", Clicker("U03CEO", "T0TEAM", "Rex", "recruiter@example.com"), "3.4"
        ),
        await _click(api, ids["rejected"], "approve", COO, "3.5"),
    ]
    assert [r.reason for r in refused if isinstance(r, Refused)] == [
        "already_decided",
        "not_approver",
        "self_approval",
        "not_pending",
    ]
    # Decided by policy, with an outcome; denied by policy; expired; cancelled; hostile agent text.
    ids["allowed"] = await _create(api, offer(action="read_calendar", title="Read the calendar"))
    done = await api.post(
        f"/v1/requests/{ids['allowed']}/outcome", {"status": "succeeded", "external_ref": "c-1"}
    )
    assert done.status == 200, await done.text()
    ids["denied"] = await _create(api, offer(action="delete_repo", title="Delete the repo"))
    ids["expired"] = await _create(api, offer(title="Offer for C. Late"))
    async with api.container.engine.begin() as conn:
        await conn.execute(
            update(requests)
            .where(requests.c.id == ids["expired"])
            .values(expires_at=func.current_timestamp())
        )
        assert await expire_due_requests(conn) == [ids["expired"]]
    ids["cancelled"] = await _create(api, offer(title="Offer withdrawn"))
    assert (await api.post(f"/v1/requests/{ids['cancelled']}/cancel")).status == 200
    ids["hostile"] = await _create(
        api,
        offer(title=HOSTILE_TITLE, summary=HOSTILE_SUMMARY, params={"note": "</pre><script>x()</script>"}),
    )
    # Outside the period: must not be counted anywhere.
    ids["old"] = await _create(api, offer(title="Offer from last month"))
    await _shift_created(api, ids["old"], dt.timedelta(days=40))
    return ids


async def report(
    api: Api, database_url: str, tmp_path: Path, *extra: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path / "report.html"
    start, end = period()
    result = await run_cli(
        database_url, "audit", "report", "--from", start, "--to", end, "--out", str(out), *extra
    )
    return out, result


async def test_the_report_shows_the_periods_figures(
    api: Api, database_url: str, tmp_path: Path, chromium: str
) -> None:
    ids = await seed(api)
    out, result = await report(api, database_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "8 requests, 8 sample chains" in result.stdout and "verification OK" in result.stdout
    dom = Dom.of(await dump_dom(chromium, out, tmp_path / "profile"))

    assert dom.text("verification-status") == "OK"
    assert dom.text("verification-detail").startswith("OK: ")
    assert dom.text("figure-population") == "8"
    assert dom.text("figure-human-decisions") == "3"
    assert dom.text("figure-mfa-coverage") == "66.7 %"
    assert (dom.text("mfa-with"), dom.text("mfa-decisions")) == ("2", "3")
    statuses = {
        s: dom.text(f"status-{s}") for s in ("pending", "approved", "rejected", "expired", "cancelled")
    }
    assert statuses == {"pending": "2", "approved": "2", "rejected": "2", "expired": "1", "cancelled": "1"}
    assert dom.text("decider-human") == "2" and dom.text("decider-policy") == "2"
    # Undecided requests are counted apart: "pending" is no decider.
    assert dom.text("undecided") == "2" and "decider-pending" not in {e.attrs.get("id") for e in dom.elements}
    assert dom.text("outcome-succeeded") == "1"
    assert dom.text("policy-total-send_offer_letter") == "5"  # slow, rejected, expired, cancelled, hostile

    bars = {e.attrs["data-bucket"]: e for e in dom.with_class("bar")}
    assert {
        label: int(bar.attrs["data-count"]) for label, bar in bars.items() if bar.attrs["data-count"] != "0"
    } == {
        "< 1 min": 1,
        "1-4 h": 1,
    }
    # The count a person reads above each bar agrees with the bar.
    counts = [e.text for e in dom.with_class("count")]
    assert counts == [bar.attrs["data-count"] for bar in bars.values()]
    assert dom.text("decision-count") == "2"

    refusals = {
        r: dom.text(f"refusal-{r}")
        for r in ("not_approver", "self_approval", "not_pending", "already_decided")
    }
    assert refusals == dict.fromkeys(refusals, "1")
    assert dom.text("figure-refusals") == "4"
    refusal_rows = " ".join(dom.by_id("refusals").text.split())
    assert HOSTILE_NAME in refusal_rows  # shown as the literal text Slack gave, not as markup

    assert dom.text("expiries-total") == "1"
    assert "Offer for C. Late" in dom.by_id("expiries").text
    assert "0 of 1" in dom.by_id("expiries").text

    assert dom.text("sample-count") == "8"
    chain = dom.by_id(f"chain-{ids['slow']}")
    assert [e.text for e in dom.with_class("chain-title") if e.text == "Offer for A. Slow"]
    assert "decision_recorded" in chain.text and "Cora Coo" in chain.text
    assert "1 approval required" in chain.text and "approval(s)" not in out.read_text()
    # What the policy allowed by itself asked nobody.
    assert "decided by the policy, no approval asked" in dom.by_id(f"chain-{ids['allowed']}").text
    assert "sub=coo-7731" in chain.text  # the MFA evidence of the decision
    kinds = ["request_created", "policy_evaluated", "decision_recorded", "request_approved"]
    positions = [chain.text.find(kind) for kind in kinds]
    assert -1 not in positions and positions == sorted(positions)  # the timeline follows the chain
    assert f"chain-{ids['old']}" not in {e.attrs.get("id") for e in dom.elements}
    assert "Offer from last month" not in out.read_text()


async def test_agent_text_is_escaped_never_runs_and_nothing_is_fetched(
    api: Api, database_url: str, tmp_path: Path, chromium: str
) -> None:
    ids = await seed(api)
    out, result = await report(api, database_url, tmp_path)
    assert result.returncode == 0, result.stderr
    raw = out.read_text()
    source = Dom.of(raw)
    # Self-contained: no element that loads anything, no address in any attribute, no CSS fetch.
    assert not [
        e.tag
        for e in source.elements
        if e.tag in {"script", "link", "img", "iframe", "object", "embed", "base"}
    ]
    assert not [
        (e.tag, k, v) for e in source.elements for k, v in e.attrs.items() if "://" in v or v.startswith("//")
    ]
    style = "".join(e.text for e in source.elements if e.tag == "style")
    assert "url(" not in style and "@import" not in style
    [csp] = [e for e in source.elements if e.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp.attrs["content"]
    assert "<script" not in raw.lower() and "<img" not in raw.lower()

    dom = Dom.of(await dump_dom(chromium, out, tmp_path / "profile"))
    [html_element] = [e for e in dom.elements if e.tag == "html"]
    assert "data-pwned" not in html_element.attrs
    assert not [e for e in dom.elements if e.tag in {"script", "img"}]
    hostile = dom.by_id(f"chain-{ids['hostile']}")
    assert [e.text for e in dom.with_class("chain-title") if e.text == HOSTILE_TITLE]  # seen as plain text
    assert HOSTILE_SUMMARY in hostile.text
    assert "</pre><script>x()</script>" in hostile.text

    # The detector works: the same payload pasted unescaped into a page does run in this Chromium.
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body><h3>{HOSTILE_TITLE}</h3></body></html>")
    [control_html] = [
        e for e in Dom.of(await dump_dom(chromium, control, tmp_path / "p2")).elements if e.tag == "html"
    ]
    assert control_html.attrs.get("data-pwned") == "title"


@pytest.mark.parametrize("tamper", ["edit_event", "remove_chain"])
async def test_a_tampered_log_shows_verification_failed_and_where(
    api: Api, database_url: str, tmp_path: Path, chromium: str, tamper: str
) -> None:
    target = await _create(api, offer(title="Offer to be tampered with"))
    other = await _create(api, offer(action="delete_repo"))
    if tamper == "remove_chain":  # only the signed checkpoint can notice a chain removed with its head
        assert (await run_cli(database_url, "audit", "checkpoint")).returncode == 0
    async with api.container.engine.begin() as conn:
        # a superuser bypassing the append-only trigger
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        if tamper == "edit_event":
            await conn.execute(
                text("UPDATE audit_events SET actor = 'mallory' WHERE chain_id = :c AND seq = 2"),
                {"c": target},
            )
        else:
            await conn.execute(text("DELETE FROM audit_events WHERE chain_id = :c"), {"c": other})
            await conn.execute(text("DELETE FROM chain_heads WHERE chain_id = :c"), {"c": other})
    out, result = await report(api, database_url, tmp_path)
    assert result.returncode == 1, result.stderr  # like `audit verify`: a broken log fails the command
    assert "verification BROKEN" in result.stdout
    dom = Dom.of(await dump_dom(chromium, out, tmp_path / "profile"))
    assert dom.text("verification-status") == "FAILED"
    where = dom.text("verification-where")
    if tamper == "edit_event":
        assert where == f"First broken link: chain {target}, event 2: event content does not match its hash"
    else:
        assert where.startswith("First broken link: checkpoint 1: 3 events it covers were removed")
    assert dom.text("figure-population") == "2"  # the rest of the report is still there


async def test_sample_is_spread_over_the_period_and_deterministic(api: Api) -> None:
    await seed(api)
    start, end = (dt.datetime.now(dt.UTC) + d for d in (dt.timedelta(days=-2), dt.timedelta(days=1)))

    async def gather(size: int) -> Any:
        async with api.container.engine.begin() as conn:
            await read_only_snapshot(conn)
            return await gather_report(
                conn, start=start, end=end, verify=api.container.checkpoint_key.verify, sample_size=size
            )

    async with api.container.engine.connect() as conn:
        ordered = list(
            (
                await conn.execute(
                    select(requests.c.id)
                    .where(requests.c.created_at >= start, requests.c.created_at < end)
                    .order_by(requests.c.created_at, requests.c.id)
                )
            ).scalars()
        )
    first, second = await gather(3), await gather(3)
    assert [c["id"] for c in first.sample] == [ordered[0], ordered[2], ordered[5]]  # i * 8 // 3
    assert [c["id"] for c in second.sample] == [c["id"] for c in first.sample]
    assert first.population == 8
    assert "about one request in 2.7, in creation order" in render_report(first)
    assert "every 2nd request in creation order" in render_report(await gather(4))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "yesterday", "--to", "2026-01-01"], "error: --from 'yesterday' is neither a date"),
        (["--from", "2026-01-01", "--to", "2026-13-01"], "error: --to '2026-13-01' is neither a date"),
        (["--from", "2026-02-01", "--to", "2026-01-01"], "must be before --to"),
        (["--from", "2026-01-01", "--to", "2026-01-01"], "must be before --to"),
        (["--to", "2026-01-01"], "error: --from is required"),
        (["--from", "2026-01-01"], "error: --to is required"),
    ],
)
def test_bad_dates_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    # In-process is safe here: the dates are refused before any database is opened.
    out = tmp_path / "report.html"
    env = {"APPROVALS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    result = CliRunner().invoke(main, ["audit", "report", *args, "--out", str(out)], env=env)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not out.exists()


def test_decision_times_fall_into_the_bucket_a_person_expects() -> None:
    times = decision_histogram([0, 59.9, 60, 299, 3600, 86_399, 86_400, 10, 20, 30])
    assert {b.label: b.count for b in times.buckets} == {
        "< 1 min": 5,  # 0, 10, 20, 30, 59.9
        "1-5 min": 2,  # 60, 299
        "5-15 min": 0,
        "15-60 min": 0,
        "1-4 h": 1,  # 3600: an upper edge belongs to the next bucket
        "4-24 h": 1,
        "≥ 24 h": 1,
    }
    # Median between the 5th and 6th of ten; the 90th percentile is the 9th (nearest rank), never interpolated.
    assert (times.median_seconds, times.p90_seconds, times.max_seconds) == (59.95, 86_399, 86_400)
    assert times.count == 10
    assert decision_histogram([]).median_seconds is None
