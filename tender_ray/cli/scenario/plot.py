"""The figures of a scenario report, drawn from what the run recorded, not from polls.

load.png: one lane per machine of how many processes it held over the run, computed from the
exact times of arrivals, ends, losses and migrations (`lane_counts`); each migration an arrow
from its source's lane to its destination's, drains shaded on the drained machine's lane, the
other events (undrain, stop, add) marked where they happened.

timeline.png: one bar per migration split into its phases (`segments`), in milliseconds from
that migration's own start, so that where a migration's time goes reads off at a glance; under
it a black bar for the time the process did not run (`freeze_span`), and beside it how it moved
(`timeline_note`: mode, freeze against total, rounds, bytes).

Both name things as the summary and report.json do: processes by their report names
(`sieve#0`), phases by the paper's names (`cli.names`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tender_ray.cli.names import phase_name, process_label
from tender_ray.metrics.modes import move_parts
from tender_ray.migration.record import MigrationRecord

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

EventKind = Literal["arrive", "move", "end", "lost"]
# At one instant, a process arrives before it moves and moves before it ends.
_KIND_ORDER: dict[str, int] = {"arrive": 0, "move": 1, "end": 2, "lost": 2}


@dataclass(frozen=True)
class ProcessEvent:
    """A change in where a process is, `t` seconds after the start: it arrived on `machine`,
    moved from `machine` to `to`, ended there, or was lost with it."""

    t: float
    kind: EventKind
    pid: int
    machine: str
    to: str = ""  # a move's destination


@dataclass(frozen=True)
class DrainSpan:
    """A drain of `machine`, from `start` (seconds after the start) for `seconds`."""

    machine: str
    start: float
    seconds: float
    moved: int
    ok: bool


@dataclass(frozen=True)
class Mark:
    """An event on the time line: an action ("drain", "drained", "stop_machine", ...) on a
    machine."""

    t: float
    action: str
    machine: str


Steps = list[tuple[float, int]]  # (t, processes from t on), t increasing


def lane_counts(events: Iterable[ProcessEvent], machines: Sequence[str] = ()) -> dict[str, Steps]:
    """Each machine's process count over time as steps, starting at (0, 0).

    A process is followed by pid: a move or an end counts where the process is, so a late or
    repeated event cannot make a count negative; events of a pid never seen to arrive are
    ignored. Several changes at one instant leave one step, the last count."""
    lanes: dict[str, Steps] = {m: [(0.0, 0)] for m in machines}
    where: dict[int, str] = {}

    def change(machine: str, t: float, delta: int) -> None:
        steps = lanes.setdefault(machine, [(0.0, 0)])
        count = steps[-1][1] + delta
        if steps[-1][0] == t:
            steps[-1] = (t, count)
        else:
            steps.append((t, count))

    for e in sorted(events, key=lambda e: (e.t, _KIND_ORDER[e.kind])):
        if e.kind == "arrive":
            if e.pid in where:
                continue
            where[e.pid] = e.machine
            change(e.machine, e.t, +1)
        elif e.pid not in where:
            continue
        elif e.kind == "move":
            if e.to == where[e.pid]:
                continue
            change(where[e.pid], e.t, -1)
            where[e.pid] = e.to
            change(e.to, e.t, +1)
        else:
            change(where.pop(e.pid), e.t, -1)
    return lanes


# --- load.png -------------------------------------------------------------------------------

_LANE_MIDDLE = 0.5  # where an arrow leaves and reaches a lane, as a fraction of its height
_ARROW_SPREAD = 0.16  # between arrows that would leave from one dot


def arrow_heights(migrations: Sequence[MigrationRecord], end: float) -> list[float]:
    """The height (a fraction of the lane) at which each migration's arrow leaves its source:
    the lane's middle, unless several leave one source at about one time (within 1 % of the
    figure's `end` seconds), when they are spread over the lane, in their order, so that no
    arrow hides another."""
    close = max(end, 1e-9) * 0.01
    heights = [_LANE_MIDDLE] * len(migrations)
    order = sorted(range(len(migrations)),
                   key=lambda i: (migrations[i].source, migrations[i].started_at))
    group: list[int] = []

    def spread() -> None:
        for k, i in enumerate(group):
            heights[i] = _LANE_MIDDLE + (k - (len(group) - 1) / 2) * _ARROW_SPREAD
        group.clear()

    for i in order:
        if group:
            last = migrations[group[-1]]
            if (migrations[i].source != last.source
                    or migrations[i].started_at - last.started_at > close):
                spread()
        group.append(i)
    spread()
    return [min(0.9, max(0.1, h)) for h in heights]

_DRAIN_COLOUR = "#e6550d"
_POLICY_COLOUR = "#6a51a3"


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_load(events: Sequence[ProcessEvent], migrations: Sequence[MigrationRecord],
              drains: Sequence[DrainSpan], marks: Sequence[Mark], path: Path, title: str,
              t0: float, machines: Sequence[str] = ()) -> None:
    """Draw load.png at `path`: a lane per machine (`machines` first, in order) of its process
    count, migrations as arrows between lanes (their `started_at` is wall time; `t0` is the
    wall time of t=0), drains shaded, the other `marks` as dashed lines."""
    from matplotlib import transforms
    from matplotlib.lines import Line2D
    from matplotlib.patches import ConnectionPatch, Patch
    from matplotlib.ticker import MultipleLocator

    plt = _pyplot()
    lanes = lane_counts(events, machines)
    for m in [*(r.source for r in migrations), *(r.destination for r in migrations),
              *(d.machine for d in drains), *(k.machine for k in marks)]:
        lanes.setdefault(m, [(0.0, 0)])
    names = list(lanes)
    end = max([e.t for e in events] + [d.start + d.seconds for d in drains]
              + [k.t for k in marks] + [1.0])
    end *= 1.02
    top = max([c for steps in lanes.values() for _, c in steps] + [1])

    # Whole processes: a tick at each count, or every few for crowded lanes.
    tick = 1 if top <= 4 else 2 if top <= 10 else -(-top // 5)
    n = max(1, len(names))
    fig, axes = plt.subplots(n, 1, sharex=True, sharey=True, squeeze=False,
                             figsize=(11, 1.0 + 1.25 * n), dpi=110)
    ax_of: dict[str, Axes] = {}
    for ax, name in zip(axes[:, 0], names, strict=False):
        ax_of[name] = ax
        steps = lanes[name] + [(end, lanes[name][-1][1])]
        xs, ys = [s[0] for s in steps], [s[1] for s in steps]
        ax.fill_between(xs, ys, step="post", color="#9ecae1", alpha=0.6, lw=0)
        ax.step(xs, ys, where="post", color="#3182bd", lw=1.4)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11,
                      fontweight="bold")
        ax.yaxis.set_major_locator(MultipleLocator(tick))
        # Headroom above the highest count, for the drains' and events' labels.
        ax.set_ylim(0, (top + 0.3) / 0.78)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlim(0, end)
    axes[-1, 0].set_xlabel("seconds since the start")
    fig.supylabel("processes on the machine", fontsize=9, x=0.01)

    for d in drains:
        ax = ax_of[d.machine]
        ax.axvspan(d.start, d.start + d.seconds, color=_DRAIN_COLOUR, alpha=0.18, lw=0)
        # Right of the span, where the drain's own arrows do not cross it.
        ax.text(d.start + d.seconds, 0.97, f" drain: {d.moved} moved in {d.seconds:.1f}s"
                + ("" if d.ok else " (late)"), transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=8, color=_DRAIN_COLOUR)
    spans = {(d.machine, d.start) for d in drains}
    for k in marks:
        # A finished drain is drawn as its span; one still running at the end as its mark.
        if k.action == "drained" or (k.action == "drain" and (k.machine, k.t) in spans):
            continue
        ax = ax_of[k.machine]
        ax.axvline(k.t, color="black", ls="--", lw=0.9, alpha=0.7)
        ax.text(k.t, 0.97, f" {k.action}", transform=ax.get_xaxis_transform(), ha="left",
                va="top", fontsize=8)

    # An arrow from the source's lane, when the migration began, to the destination's, when
    # it ended; at the lanes' middle heights so arrows between any two lanes look alike, but
    # those leaving one source together spread apart (each from its own dot, to its own
    # height), or they would be drawn over one another.
    for r, height in zip(migrations, arrow_heights(migrations, end), strict=True):
        if r.source not in ax_of or r.destination not in ax_of:
            continue
        a, b = ax_of[r.source], ax_of[r.destination]
        start = r.started_at - t0
        colour = _DRAIN_COLOUR if r.reason == "drain" else _POLICY_COLOUR
        on_a = transforms.blended_transform_factory(a.transData, a.transAxes)
        # A dot at the tail: an arrow passing over a lane between its two ends is not read
        # as leaving from it.
        a.plot([start], [height], "o", ms=4, color=colour, transform=on_a, clip_on=False)
        fig.add_artist(ConnectionPatch(
            xyA=(start, height), coordsA=on_a, xyB=(start + r.seconds, height),
            coordsB=transforms.blended_transform_factory(b.transData, b.transAxes),
            arrowstyle="-|>", mutation_scale=12, lw=1.3, color=colour, alpha=0.85,
            shrinkA=0, shrinkB=0))

    # Only what the figure shows: a run without drains has no drain entries.
    drained = any(r.reason == "drain" for r in migrations)
    handles: list[Artist] = [Patch(color="#9ecae1", label="processes on the machine")]
    if any(r.reason != "drain" for r in migrations):
        handles.append(Line2D([], [], color=_POLICY_COLOUR, marker="o", ms=4, lw=1.3,
                              label="migration (balancer): source ● → destination"))
    if drained:
        handles.append(Line2D([], [], color=_DRAIN_COLOUR, marker="o", ms=4, lw=1.3,
                              label="migration (drain)" if len(handles) > 1 else
                              "migration (drain): source ● → destination"))
    if drains:
        handles.append(Patch(color=_DRAIN_COLOUR, alpha=0.18, label="drain"))
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.99, 1.0))
    fig.suptitle(f"{title}: {len(migrations)} migrations", x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0.02, 0, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


# --- timeline.png ---------------------------------------------------------------------------

# Phases in the order a migration goes through them; the calls' round trips follow the
# destination's work they carried.
TIMELINE_PHASES = ("freeze", "create", "create_call", "export", "transform_space",
                   "transform_program", "transform_start", "transform_call", "commit",
                   "delete")
# Name (the paper's, `cli.names`) and colour of each; both round trips are one kind of cost,
# one colour, hatched.
_ROUND_TRIPS = "call round trips"
_PHASE_STYLE: dict[str, tuple[str, str]] = {
    "freeze": (phase_name("freeze"), "#4292c6"),
    "create": (phase_name("create"), "#fd8d3c"),
    "export": (phase_name("export"), "#9e9ac8"),
    "transform_space": (phase_name("transform_space"), "#c7e9c0"),
    "transform_program": (phase_name("transform_program"), "#74c476"),
    "transform_start": (phase_name("transform_start"), "#238b45"),
    "commit": (phase_name("commit"), "#de2d26"),
    "delete": (phase_name("delete"), "#8c6d31"),
    "create_call": (_ROUND_TRIPS, "#bdbdbd"),
    "transform_call": (_ROUND_TRIPS, "#bdbdbd"),
    # A pre-copy's live rounds: the process still runs at its source.
    "precopy": ("live rounds (pre-copy)", "#fdd0a2"),
}
_FREEZE_MARK = ("frozen (freeze to commit)", "#000000")
_OTHER_STYLE = ("other", "#636363")
SLOWEST = 40  # at most this many rows in timeline.png: the slowest migrations


@dataclass(frozen=True)
class Segment:
    """One phase of a migration on its bar: from `start` for `seconds` (seconds after the
    migration's start)."""

    phase: str
    start: float
    seconds: float


def segments(record: MigrationRecord) -> list[Segment]:
    """The record's phases as bar segments, in the order a migration goes through them (any
    phase this module does not know last). A phase without a recorded start follows the one
    before it."""
    order = [p for p in TIMELINE_PHASES if p in record.phases]
    order += [p for p in record.phases if p not in TIMELINE_PHASES]
    out: list[Segment] = []
    cursor = 0.0
    for phase in order:
        start = record.phase_starts.get(phase, cursor)
        seconds = max(0.0, record.phases[phase])
        out.append(Segment(phase, start, seconds))
        cursor = start + seconds
    return out


def phase_shares(migrations: Iterable[MigrationRecord]) -> dict[str, float]:
    """Each phase's share of the migrations' summed phase time, by the timeline's label (the
    two round trips together), largest first."""
    totals: dict[str, float] = {}
    for r in migrations:
        for seg in segments(r):
            label = _PHASE_STYLE.get(seg.phase, _OTHER_STYLE)[0]
            totals[label] = totals.get(label, 0.0) + seg.seconds
    whole = sum(totals.values())
    if whole <= 0:
        return {}
    return {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def freeze_span(record: MigrationRecord) -> tuple[float, float] | None:
    """When the process stood still during the move, (start, seconds) after the migration's
    start: from its freeze phase for `freeze_seconds`; None if the record has no freeze."""
    if record.freeze_seconds <= 0:
        return None
    return record.phase_starts.get("freeze", 0.0), record.freeze_seconds


def timeline_note(record: MigrationRecord, t0: float) -> str:
    """The words beside a migration's bar, in two lines: how it moved (mode, freeze against
    total, rounds), then what it sent, why the balancer moved it and when it began."""
    timing, size = move_parts(record)
    if record.reason:
        size.append(record.reason)
    size.append(f"at {record.started_at - t0:.1f}s")
    return " · ".join(timing) + "\n" + " · ".join(size)  # two lines: the bars keep room


def timeline_rows(migrations: Sequence[MigrationRecord], names: Mapping[int, str] | None = None,
                  slowest: int = SLOWEST) -> list[tuple[MigrationRecord, str]]:
    """The rows of timeline.png: the `slowest` slowest migrations (all if fewer), in the order
    they began, each with its label, the process's report name (`names`, by pid) and its
    move: `sieve#0 m0→m1`."""
    shown = sorted(migrations, key=lambda r: r.seconds, reverse=True)[:slowest]
    shown.sort(key=lambda r: r.started_at)
    return [(r, f"{process_label(r.pid, names)} {r.source}→{r.destination}") for r in shown]


def plot_timeline(migrations: Sequence[MigrationRecord], path: Path, title: str,
                  t0: float, slowest: int = SLOWEST,
                  names: Mapping[int, str] | None = None) -> None:
    """Draw timeline.png at `path`: a row per migration (`timeline_rows`: the `slowest`
    slowest if there are more, in the order they began, labelled with the process's name from
    `names`), its bar split into phases, in milliseconds from its own start; `t0` (wall time
    of t=0) labels when each began."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    labelled = timeline_rows(migrations, names, slowest)
    shown = [r for r, _ in labelled]
    rows = max(1, len(shown))
    # Fixed inches for the labels, the axis and the legend below it, whatever the rows.
    height = 1.8 + 0.36 * rows  # two lines of notes a row
    fig, ax = plt.subplots(figsize=(11, height), dpi=110)
    fig.subplots_adjust(left=1.35 / 11, right=0.98, top=1 - 0.6 / height,
                        bottom=0.95 / height)
    used: dict[str, str] = {}
    longest = max([r.seconds for r in shown] + [1e-3]) * 1000
    for row, r in enumerate(shown):
        for seg in segments(r):
            label, colour = _PHASE_STYLE.get(seg.phase, _OTHER_STYLE)
            used.setdefault(label, colour)
            ax.barh(row, seg.seconds * 1000, left=seg.start * 1000, height=0.7, color=colour,
                    edgecolor="white", lw=0.4,
                    hatch="//" if seg.phase.endswith("_call") else None)
        span = freeze_span(r)
        if span is not None:  # a bar under the phases: the time the process did not run
            used.setdefault(*_FREEZE_MARK)
            ax.barh(row + 0.42, span[1] * 1000, left=span[0] * 1000, height=0.12,
                    color=_FREEZE_MARK[1])
        ax.text(r.seconds * 1000 + longest * 0.01, row, timeline_note(r, t0),
                va="center", fontsize=7, linespacing=1.1, color="#444444")
    ax.set_yticks(range(len(shown)), [label for _, label in labelled], fontsize=8)
    ax.set_ylim(rows - 0.4, -0.5)  # the first to begin on top
    ax.set_xlim(0, longest * 1.6)  # room for the notes
    ax.set_xlabel("milliseconds since the migration began")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    note = (f"the {len(shown)} slowest of {len(migrations)} migrations"
            if len(migrations) > len(shown) else f"{len(migrations)} migrations")
    if not shown:
        ax.text(0.5, 0.5, "no migrations", transform=ax.transAxes, ha="center")
    ax.set_title(f"{title}: {note}, phase by phase", loc="left", fontsize=11, pad=16)
    shares = phase_shares(migrations)
    if shares:  # where the time went, in one line under the title
        ax.text(0, 1.01, "time spent over all migrations: " + ", ".join(
            f"{label} {share:.0%}" for label, share in list(shares.items())[:5]),
            transform=ax.transAxes, fontsize=8, color="#444444", va="bottom")
    fig.legend(handles=[Patch(facecolor=c, label=lbl,
                              hatch="//" if lbl == _ROUND_TRIPS else None)
                        for lbl, c in used.items()],
               loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=max(1, min(len(used), 6)),
               handlelength=1.5, columnspacing=1.2,
               fontsize=8, frameon=False)
    fig.savefig(path)
    plt.close(fig)
