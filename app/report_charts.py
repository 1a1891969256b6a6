"""Where the bars of the auditor's report's charts go: plain numbers and labels, no markup.

The report's template (app/templates/report.html.j2) draws each chart as inline SVG from these
layouts, so every label reaches the page through the template's autoescaping like any other text.
Coordinates are in the SVG's own units (its viewBox), rounded to a tenth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from approvals.audit.report_figures import DecisionTimes, Weekly

WIDTH, HEIGHT = 720, 260
LEFT, BOTTOM, TOP = 40, 40, 24  # room for the y axis's labels, the x axis's labels, the tallest count
PLOT = HEIGHT - BOTTOM - TOP
# An x-axis label such as "2026-W44" needs about this much room at the report's 12 px font.
LABEL_ROOM = 64
# Below this column width the week totals above the columns would run into each other.
TOTALS_ROOM = 22


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    x: float
    y: float
    width: float
    height: float
    middle: float  # x of the bar's centre, where its count and label are written


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    top: int
    axis_y: int  # the y of the x axis (a count of 0)
    label_y: int  # the y of the x axis's labels
    tallest: int  # the count at the top of the y axis
    bars: list[Bar]


def decision_time_chart(times: DecisionTimes) -> BarChart:
    """One bar per time-to-decision bucket, as tall as its count."""
    slot = (WIDTH - LEFT) / len(times.buckets)
    tallest = max((b.count for b in times.buckets), default=0) or 1
    bars = []
    for i, bucket in enumerate(times.buckets):
        height = PLOT * bucket.count / tallest
        x = LEFT + i * slot + slot * 0.15
        bars.append(
            Bar(
                bucket.label,
                bucket.count,
                round(x, 1),
                round(TOP + PLOT - height, 1),
                round(slot * 0.7, 1),
                round(height, 1),
                round(x + slot * 0.35, 1),
            )
        )
    return BarChart(WIDTH, HEIGHT, LEFT, TOP, TOP + PLOT, HEIGHT - BOTTOM + 18, tallest, bars)


@dataclass(frozen=True)
class Segment:
    """One series' part of a week's column, stacked on the series before it."""

    series: str
    css: str  # the series' class, which gives it its colour
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Column:
    week: str  # 2026-W44
    monday: str  # 2026-10-26
    total: int
    x: float
    width: float
    middle: float
    segments: list[Segment]  # bottom to top, series with a count of 0 left out
    labelled: bool  # whether the x axis names this week (not every one fits when there are many)


@dataclass(frozen=True)
class LegendEntry:
    series: str
    css: str
    total: int


@dataclass(frozen=True)
class StackedChart:
    width: int
    height: int
    left: int
    top: int
    axis_y: int
    label_y: int
    tallest: int
    columns: list[Column]
    legend: list[LegendEntry]
    totals_shown: bool  # each column's total written above it, when the columns are wide enough
    first_week: str
    last_week: str


def series_class(series: str) -> str:
    """The CSS class of a series: "allowed by policy" -> "series-allowed-by-policy"."""
    return "series-" + "-".join(series.split()).replace("_", "-")


def weekly_chart(weekly: Weekly) -> StackedChart:
    """One column per week, its series stacked in the order Weekly lists them."""
    slot = (WIDTH - LEFT) / max(len(weekly.weeks), 1)
    tallest = max((week.total for week in weekly.weeks), default=0) or 1
    every = max(1, math.ceil(LABEL_ROOM / slot))  # label every week, or every 2nd, 3rd, ...
    columns = []
    for i, week in enumerate(weekly.weeks):
        x = LEFT + i * slot + slot * 0.15
        base = float(TOP + PLOT)
        segments = []
        for name in weekly.series:
            count = week.counts[name]
            if not count:
                continue
            height = PLOT * count / tallest
            base -= height
            segments.append(Segment(name, series_class(name), count, round(base, 1), round(height, 1)))
        columns.append(
            Column(
                week.label,
                week.monday.isoformat(),
                week.total,
                round(x, 1),
                round(slot * 0.7, 1),
                round(x + slot * 0.35, 1),
                segments,
                labelled=i % every == 0,
            )
        )
    legend = [LegendEntry(name, series_class(name), weekly.series_total(name)) for name in weekly.series]
    return StackedChart(
        WIDTH,
        HEIGHT,
        LEFT,
        TOP,
        TOP + PLOT,
        HEIGHT - BOTTOM + 18,
        tallest,
        columns,
        legend,
        totals_shown=slot * 0.7 >= TOTALS_ROOM,
        first_week=weekly.weeks[0].label if weekly.weeks else "",
        last_week=weekly.weeks[-1].label if weekly.weeks else "",
    )
