"""`ridpool plan --chart FILE`: the plan as a picture a person reads at a glance.

One row per pool and one for the account. The left column is the whole window (where the bursts are, and what
is at risk); the right column zooms in on one episode (the first burst at risk, else the busiest), where every
minute of a ramp shows. Per pool: the target (entries ready) as a line on the left axis, the acquires per minute
as an area on the right axis with the budget (the account's sustained rate) as a dashed line; what the budget
could not fit yet (`behind`) in red; a forecast-only pool's forecast dotted. The account row stacks every pool's
acquires against the sustained rate and the share the plan uses.

matplotlib is imported here only, and is not a dependency of the daemon: without it the command says what to
install (`CHART_EXTRA`) before planning anything.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

from ridpool.daemon import planner
from ridpool.daemon.config import PoolConfig
from ridpool.daemon.planview import MINUTE, AtRisk, Event, Row, View, iso
from ridpool.errors import InvalidArgument

CHART_EXTRA = "pip install matplotlib (or 'ridpool[chart]')"
EPISODE_GAP = 10  # minutes of quiet that separate two episodes
LABELLED = 4  # instants named in a zoom
BUDGET, TARGET, ACQUIRES, BEHIND, FORECAST = "#d62728", "#08306b", "#9ecae1", "#d62728", "#ff7f0e"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def episodes(account: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of busy minutes (well above the steady renewals), as (first, last) row indices, EPISODE_GAP apart."""
    steady = median(account) if account else 0
    busy = [i for i, n in enumerate(account) if n > 2 * steady + 2]
    out: list[tuple[int, int]] = []
    for i in busy:
        if out and i - out[-1][1] <= EPISODE_GAP:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def zoom(view: View) -> tuple[int, int]:
    """The rows the right column shows: around the first episode with a burst at risk, else the busiest one,
    else the first hour."""
    found = episodes(view.account)
    starts = view.minutes
    risky = [e for e in found if any(starts[e[0]] <= a.at_ms <= starts[e[1]] + MINUTE for a in view.at_risk)]
    if risky or found:
        first, last = risky[0] if risky else max(found, key=lambda e: sum(view.account[e[0] : e[1] + 1]))
    else:
        first, last = 0, min(len(starts), 60) - 1
    lo, hi = max(0, first - 5), min(len(starts) - 1, last + 8)
    while hi - lo < 20 and (lo > 0 or hi < len(starts) - 1):
        lo, hi = max(0, lo - 1), min(len(starts) - 1, hi + 1)
    return lo, hi


def chart(view: View, path: Path) -> None:
    """Draw `view` into a PNG at `path` (InvalidArgument when matplotlib is missing or the file is unwritable)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgument(f"--chart needs matplotlib, which is not installed: {CHART_EXTRA}") from None
    pools = view.inputs.config.pools
    times = [datetime.fromtimestamp(ms / 1000, UTC) for ms in view.minutes]
    edges = [*times, times[-1] + timedelta(minutes=1)]
    lo, hi = zoom(view)
    fig, axes = plt.subplots(
        len(pools) + 1,
        2,
        figsize=(15, 2.7 * (len(pools) + 1) + 0.6),
        gridspec_kw={"width_ratios": [3, 2]},
        squeeze=False,
    )
    budget = view.sustained * 60
    for row, p in enumerate(pools):
        rows = view.rows[p.name]
        risks = [a for a in view.at_risk if a.pool == p.name]
        events = [e for e in view.events if e.pool == p.name]
        for col, (a, b) in enumerate(((0, len(rows) - 1), (lo, hi))):
            _pool_panel(
                axes[row, col],
                rows[a : b + 1],
                edges[a : b + 2],
                budget=budget,
                risks=risks,
                events=events,
                legend=col == 0,
            )
        axes[row, 0].set_title(_title(p, view), loc="left", fontsize=10)
        axes[row, 0].axvspan(edges[lo], edges[hi + 1], color="#000000", alpha=0.06, linewidth=0)
    for col, (a, b) in enumerate(((0, len(times) - 1), (lo, hi))):
        ax = axes[-1, col]
        bottom = [0] * (b - a + 1)
        for p in pools:
            top = [base + r.acquires for base, r in zip(bottom, view.rows[p.name][a : b + 1], strict=True)]
            ax.stairs(top, edges[a : b + 2], baseline=bottom, fill=True, label=p.name)
            bottom = top
        ax.axhline(budget, color=BUDGET, linestyle="--", linewidth=1, label=f"sustained {budget:.0f}/min")
        planned = view.sustained * planner.HEADROOM * 60
        ax.axhline(planned, color=BUDGET, linestyle=":", linewidth=1, label=f"plan uses {planned:.0f}/min")
        ax.set_ylim(0, budget * 1.2)
        ax.set_xlim(edges[a], edges[b + 1])
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
        if col == 0:
            ax.set_ylabel("acquires / min")
            ax.set_title("account: acquires per minute, all pools", loc="left", fontsize=10)
            ax.legend(loc="upper left", fontsize=8, ncols=6, frameon=False)
            ax.axvspan(edges[lo], edges[hi + 1], color="#000000", alpha=0.06, linewidth=0)
        else:
            ax.set_title(
                f"zoom: {iso(view.minutes[lo])[11:16]} to {iso(view.minutes[hi] + MINUTE)[11:16]} UTC",
                loc="left",
                fontsize=10,
            )
    source = "" if view.inputs.redis else "; from the config alone (Redis not read)"
    fig.suptitle(f"ridpool plan, {iso(view.minutes[0])} to {iso(view.minutes[-1] + MINUTE)} (UTC){source}", fontsize=11)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise InvalidArgument(f"--chart: cannot write {path} ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def _title(p: PoolConfig, view: View) -> str:
    channels = "announced channels" if p.announced else f"{len(p.slots)} channel{'s' if len(p.slots) != 1 else ''}"
    age = view.inputs.max_age_ms.get(p.name, p.max_age_ms) if view.inputs.max_age_ms else p.max_age_ms
    return f"pool {p.name}: {channels}, size {p.size}, max_age {age / 1000:g} s"


def _pool_panel(
    ax: Any,
    rows: Sequence[Row],
    edges: Sequence[datetime],
    *,
    budget: float,
    risks: Sequence[AtRisk],
    events: Sequence[Event],
    legend: bool,
) -> None:
    import matplotlib.dates as mdates

    acq = ax.twinx()
    planned = [r.acquires - r.renewals for r in rows]
    acq.stairs(planned, edges, fill=True, color=ACQUIRES, label="acquires / min (right)")
    if any(r.renewals for r in rows):
        acq.stairs(
            [r.acquires for r in rows],
            edges,
            baseline=planned,
            fill=True,
            facecolor="none",
            edgecolor=ACQUIRES,
            hatch="////",
            linewidth=0,
            label="renewals if nobody pops",
        )
    acq.axhline(budget, color=BUDGET, linestyle="--", linewidth=1, label=f"budget {budget:.0f}/min (right)")
    acq.set_ylim(0, budget * 1.2)
    acq.tick_params(axis="y", colors="#3182bd", labelsize=8)
    ax.set_zorder(acq.get_zorder() + 1)  # the target line over the area
    ax.patch.set_visible(False)
    ax.stairs([r.target for r in rows], edges, color=TARGET, linewidth=1.6, label="target: entries ready (left)")
    if any(r.forecast for r in rows):
        ax.stairs(
            [r.target + r.forecast for r in rows],
            edges,
            color=FORECAST,
            linestyle=":",
            linewidth=1.6,
            label="target + forecast, not acted on",
        )
    if any(r.behind for r in rows):
        ax.stairs([r.behind for r in rows], edges, color=BEHIND, linewidth=1, label="behind: budget full")
    top = max([r.target + r.forecast for r in rows] + [r.behind for r in rows] + [1]) * 1.3
    ax.set_ylim(0, top)
    if not legend:  # the zoom: name the instants it shows (announcements are too many to name: the target shows them)
        shown = [
            (at, e)
            for e in events
            if not e.label.startswith("announced")
            and edges[0] <= (at := datetime.fromtimestamp(e.at_ms / 1000, UTC)) <= edges[-1]
        ]
        for at, e in shown[:LABELLED]:
            ax.axvline(at, color="#636363", linestyle=":", linewidth=1)
            ax.annotate(
                f"{e.label} {at:%H:%M}",
                (at, top),
                xytext=(-4, -12),
                textcoords="offset points",
                color="#636363",
                fontsize=8,
                ha="right",
            )
    for a in risks:
        at = datetime.fromtimestamp(a.at_ms / 1000, UTC)
        if edges[0] <= at <= edges[-1]:
            ax.axvline(at, color=BUDGET, linewidth=1.2)
            ax.annotate(
                f"at risk: ~{a.shortfall} short",
                (at, top),
                xytext=(4, -12),
                textcoords="offset points",
                color=BUDGET,
                fontsize=8,
            )
    ax.set_xlim(edges[0], edges[-1])
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    ax.tick_params(axis="y", labelsize=8)
    if legend:
        handles = ax.get_legend_handles_labels()[0] + acq.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", fontsize=8, ncols=3, frameon=False)
