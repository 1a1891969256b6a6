"""The report's pictures: decisions per ISO week by outcome and refused clicks per week by reason.

Requests are made and decided through the service's own code, some moved into earlier weeks; the report
is written by the real CLI, and the charts are read back from the DOM headless Chromium builds, next to
the tables that carry the same numbers. The week arithmetic and the chart layout are checked directly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select, update

from app.audit_report import render_report
from app.report_charts import series_class, weekly_chart
from approvals.audit.report_figures import (
    DECISION_OUTCOMES,
    REFUSAL_SERIES,
    Week,
    gather_report,
    monday_of,
    read_only_snapshot,
    weekly,
)
from approvals.requests.decisions import Choice, Click, Clicker, Duplicate, Recorded, Refused, record_click
from approvals.requests.use_cases import expire_due_requests
from approvals.tables import requests
from tests.conftest import Api, offer, run_cli
from tests.test_audit_report import Dom, chromium, dump_dom  # noqa: F401 (chromium is a fixture)

COO = Clicker("U01COO", "T0TEAM", "Cora Coo", "coo@example.com")
CFO = Clicker("U02CFO", "T0TEAM", "Cyrus Cfo", "cfo@example.com")


def label(day: dt.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


async def _create(api: Api, **overrides: object) -> str:
    resp = await api.post("/v1/requests", offer(**overrides))
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _click(
    api: Api, request_id: str, choice: Choice, who: Clicker, ts: str
) -> Recorded | Refused | Duplicate:
    async with api.container.engine.begin() as conn:
        return await record_click(conn, Click(request_id, choice, who, ts))


async def _move_back(api: Api, request_id: str, by: dt.timedelta) -> None:
    """Pretend a request was made and decided earlier: the weekly figures read the row's times."""
    async with api.container.engine.begin() as conn:
        row = (
            await conn.execute(
                select(requests.c.created_at, requests.c.decided_at).where(requests.c.id == request_id)
            )
        ).one()
        await conn.execute(
            update(requests)
            .where(requests.c.id == request_id)
            .values(created_at=row.created_at - by, decided_at=row.decided_at - by)
        )


async def seed(api: Api) -> None:
    """Every outcome this week, one approval two weeks ago, and two refused clicks this week."""
    early = await _create(api, title="Offer from two weeks ago")
    assert await _click(api, early, "approve", COO, "1.1") == Recorded("approved", 1, 1)
    await _move_back(api, early, dt.timedelta(days=14))
    rejected = await _create(api, title="Offer rejected")
    assert (await _click(api, rejected, "reject", CFO, "2.1")).status == "rejected"
    await _create(api, action="read_calendar", title="Allowed by policy")
    await _create(api, action="delete_repo", title="Denied by policy")
    expired = await _create(api, title="Offer that expires")
    async with api.container.engine.begin() as conn:
        await conn.execute(
            update(requests).where(requests.c.id == expired).values(expires_at=requests.c.created_at)
        )
        assert await expire_due_requests(conn) == [expired]
    cancelled = await _create(api, title="Offer withdrawn")
    assert (await api.post(f"/v1/requests/{cancelled}/cancel")).status == 200
    pending = await _create(api, title="Still pending")
    refused = [
        await _click(api, rejected, "approve", COO, "3.1"),  # no longer pending
        await _click(api, pending, "approve", Clicker("U09NOBODY", "T0TEAM", "Nobody", None), "3.2"),
    ]
    assert [r.reason for r in refused if isinstance(r, Refused)] == ["not_pending", "not_approver"]


async def test_the_weekly_charts_show_each_weeks_decisions_and_refusals(
    api: Api,
    database_url: str,
    tmp_path: Path,
    chromium: str,  # noqa: F811
) -> None:
    await seed(api)
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=16)
    out = tmp_path / "report.html"
    result = await run_cli(
        database_url,
        "audit",
        "report",
        "--from",
        start.isoformat(),
        "--to",
        (now + dt.timedelta(days=1)).isoformat(),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    dom = Dom.of(await dump_dom(chromium, out, tmp_path / "profile"))

    # Every week from the period's first to this one, the empty ones included, oldest first.
    mondays = [monday_of(start)]
    while mondays[-1] < monday_of(now):
        mondays.append(mondays[-1] + dt.timedelta(weeks=1))
    weeks = [label(m) for m in mondays]
    this_week, two_weeks_ago = label(now.date()), label((now - dt.timedelta(days=14)).date())
    empty = [w for w in weeks if w not in {this_week, two_weeks_ago}]
    assert empty  # 16 days back: at least one week between holds nothing

    decisions = {
        (two_weeks_ago, "approved"): 1,
        (this_week, "rejected"): 1,
        (this_week, "allowed by policy"): 1,
        (this_week, "denied by policy"): 1,
        (this_week, "expired"): 1,
        (this_week, "cancelled"): 1,
    }
    refusals = {(this_week, "not_pending"): 1, (this_week, "not_approver"): 1}
    for ident, series, expected, title in (
        ("decisions", DECISION_OUTCOMES, decisions, "Decisions per ISO week by outcome, 6 decisions"),
        ("refusals", REFUSAL_SERIES, refusals, "Refused clicks per ISO week by reason, 2 refusals"),
    ):
        svg = dom.by_id(f"{ident}-chart")
        assert svg.tag == "svg" and svg.attrs["role"] == "img"
        # Named for assistive technology by its title and description, both inside it.
        assert svg.attrs["aria-labelledby"] == f"{ident}-chart-title {ident}-chart-desc"
        assert {f"{ident}-chart-title", f"{ident}-chart-desc"} <= {
            e.attrs.get("id") for e in dom.inside(f"{ident}-chart")
        }
        assert dom.text(f"{ident}-chart-title") == title
        assert f"from {weeks[0]} to {weeks[-1]}" in dom.text(f"{ident}-chart-desc")

        # One column per week, a segment per series with a count, coloured by its series.
        columns = [e for e in dom.inside(f"{ident}-chart") if e.tag == "g"]
        assert [c.attrs["data-week"] for c in columns] == weeks
        rects = [e for e in dom.inside(f"{ident}-chart") if e.tag == "rect"]
        assert {
            (r.attrs["data-week"], r.attrs["data-series"]): int(r.attrs["data-count"]) for r in rects
        } == (expected)
        assert all(series_class(r.attrs["data-series"]) in r.attrs["class"].split() for r in rects)
        # Each segment says what it is when pointed at (its <title>).
        [one] = [r for r in rects if (r.attrs["data-week"], r.attrs["data-series"]) == next(iter(expected))]
        week, name = next(iter(expected))
        assert one.text == f"{week} (from {mondays[weeks.index(week)].isoformat()}): 1 {name}"

        # The same numbers as text: a table with a row per week and a cell per series, and the legend.
        cells = [
            e for e in dom.inside(f"{ident}-by-week-table") if e.tag == "td" and "data-series" in e.attrs
        ]
        table = {(c.attrs["data-week"], c.attrs["data-series"]): int(c.text) for c in cells}
        assert {k for k in table if k[1] != "total"} == {(w, s) for w in weeks for s in series}
        assert {k: n for k, n in table.items() if n and k[1] != "total"} == expected
        assert [table[(w, "total")] for w in weeks] == [
            sum(n for (at, _), n in expected.items() if at == w) for w in weeks
        ]
        legend = {
            e.attrs["data-series"]: int(e.text) for e in dom.inside(f"{ident}-chart-legend") if e.tag == "b"
        }
        assert legend == {s: sum(n for (_, at), n in expected.items() if at == s) for s in series}
    # An empty week draws nothing but is still there, with its row of zeros.
    assert not [e for e in dom.elements if e.tag == "rect" and e.attrs.get("data-week") in empty]


def test_weeks_span_the_period_fill_gaps_and_follow_late_events() -> None:
    monday = dt.date(2026, 3, 2)
    counts = [
        (monday + dt.timedelta(weeks=1), "approved", 2),
        (monday + dt.timedelta(weeks=1), "approved", 1),  # two rows of one week add up
        (monday + dt.timedelta(weeks=4), "expired", 1),  # decided after the period's last week
    ]
    result = weekly(
        DECISION_OUTCOMES, counts, first=monday + dt.timedelta(days=3), last=monday + dt.timedelta(days=9)
    )
    assert [w.monday for w in result.weeks] == [monday + dt.timedelta(weeks=i) for i in range(5)]
    assert [w.total for w in result.weeks] == [0, 3, 0, 0, 1]
    assert result.total == 4 and result.series_total("approved") == 3
    assert set(result.weeks[0].counts) == set(DECISION_OUTCOMES)


def test_an_iso_week_is_named_by_its_iso_year() -> None:
    assert Week(dt.date(2024, 12, 30), {}).label == "2025-W01"  # a Monday of December in next year's week 1
    assert Week(dt.date(2021, 1, 4), {}).label == "2021-W01"
    assert monday_of(dt.datetime(2026, 3, 8, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))) == dt.date(
        2026, 3, 9
    )  # 01:30 UTC on Monday the 9th


def test_columns_stack_in_proportion_and_labels_thin_out_when_weeks_are_many() -> None:
    monday = dt.date(2026, 1, 5)
    few = weekly(
        DECISION_OUTCOMES, [(monday, "approved", 3), (monday, "rejected", 1)], first=monday, last=monday
    )
    chart = weekly_chart(few)
    [column] = chart.columns
    approved, rejected = column.segments
    assert (approved.series, rejected.series) == ("approved", "rejected")
    assert approved.height == 3 * rejected.height  # as tall as the counts, on one scale
    assert rejected.y + rejected.height == approved.y  # stacked: rejected sits on approved
    assert approved.y + approved.height == chart.axis_y
    assert column.labelled and chart.totals_shown
    many = weekly(DECISION_OUTCOMES, [], first=monday, last=monday + dt.timedelta(weeks=103))
    wide = weekly_chart(many)
    assert len(wide.columns) == 104 and not wide.totals_shown
    labelled = [c for c in wide.columns if c.labelled]
    assert 1 < len(labelled) < 20 and labelled[0] is wide.columns[0]


async def test_a_period_without_final_requests_draws_no_chart(api: Api) -> None:
    await _create(api, title="Still pending")
    now = dt.datetime.now(dt.UTC)
    async with api.container.engine.begin() as conn:
        await read_only_snapshot(conn)
        data = await gather_report(
            conn,
            start=now - dt.timedelta(days=1),
            end=now + dt.timedelta(days=1),
            verify=api.container.checkpoint_key.verify,
        )
    assert data.decisions_by_week.total == 0 and data.refusals_by_week.total == 0
    dom = Dom.of(render_report(data))
    assert dom.text("decisions-by-week-none") == "No request of this period reached a final state."
    assert not [e for e in dom.elements if e.attrs.get("id") in {"decisions-chart", "refusals-chart"}]
