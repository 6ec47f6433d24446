"""The report's figures: lanes of process counts from events, the timeline's segments, and
both figures written from hand-made events and records."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import pytest

from tender_ray.cli.scenario.plot import (
    TIMELINE_PHASES,
    DrainSpan,
    Mark,
    ProcessEvent,
    arrow_heights,
    freeze_span,
    lane_counts,
    phase_shares,
    plot_load,
    plot_timeline,
    segments,
    timeline_note,
    timeline_rows,
)
from tender_ray.migration.record import MigrationRecord, Outcome

PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_000_000.0  # the wall time of t=0 in these records


def record(pid: int, source: str, destination: str, at: float, *,
           starts: bool = True, reason: str = "threshold") -> MigrationRecord:
    """A migration beginning `at` seconds after T0, with every phase timed as run_migration
    times them (the destination's phases inside their calls)."""
    phases = {"freeze": 0.002, "create": 0.001, "create_call": 0.003, "export": 0.004,
              "transform_space": 0.0005, "transform_program": 0.0015,
              "transform_start": 0.006, "transform_call": 0.002, "commit": 0.001,
              "delete": 0.0025}
    phase_starts: dict[str, float] = {}
    if starts:
        cursor = 0.0
        for name in TIMELINE_PHASES:
            phase_starts[name] = cursor
            cursor += phases[name] + 0.0001  # a little of the driver's own time between
    return MigrationRecord(pid=pid, source=source, destination=destination, transfer="dsm",
                           reuse=True, resources="needed", seconds=sum(phases.values()),
                           phases=phases, phase_starts=phase_starts, started_at=T0 + at,
                           reason=reason)


def events() -> list[ProcessEvent]:
    return [
        ProcessEvent(0.0, "arrive", 1, "m0"),
        ProcessEvent(0.5, "arrive", 2, "m0"),
        ProcessEvent(1.0, "arrive", 3, "m1"),
        ProcessEvent(2.0, "move", 1, "m0", "m2"),
        ProcessEvent(3.0, "end", 2, "m0"),
        ProcessEvent(3.0, "move", 3, "m1", "m0"),  # at the same instant as 2's end
        ProcessEvent(4.0, "lost", 3, "m0"),
        ProcessEvent(5.0, "end", 1, "m2"),
    ]


def test_lane_counts_follow_each_process() -> None:
    lanes = lane_counts(events(), ["m0", "m1", "m2", "m3"])
    assert lanes == {
        "m0": [(0.0, 1), (0.5, 2), (2.0, 1), (3.0, 1), (4.0, 0)],
        "m1": [(0.0, 0), (1.0, 1), (3.0, 0)],
        "m2": [(0.0, 0), (2.0, 1), (5.0, 0)],
        "m3": [(0.0, 0)],
    }


def test_lane_counts_order_at_one_instant_and_ignore_strays() -> None:
    # Listed out of order: the arrival still comes first, so the count never goes negative.
    lanes = lane_counts([ProcessEvent(1.0, "end", 7, "a"), ProcessEvent(1.0, "arrive", 7, "a"),
                         ProcessEvent(2.0, "end", 8, "a"),  # never arrived
                         ProcessEvent(2.0, "move", 7, "a", "a")])  # to where it is
    assert lanes == {"a": [(0.0, 0), (1.0, 0)]}


def test_segments_in_phase_order_and_sum_to_the_phases() -> None:
    r = record(5, "m0", "m1", 1.0)
    segs = segments(r)
    assert [s.phase for s in segs] == list(TIMELINE_PHASES)
    assert sum(s.seconds for s in segs) == pytest.approx(sum(r.phases.values()))
    assert all(s.seconds == r.phases[s.phase] for s in segs)
    assert all(s.start == r.phase_starts[s.phase] for s in segs)
    assert all(a.start + a.seconds <= b.start + 1e-12 for a, b in itertools.pairwise(segs))


def test_segments_without_starts_follow_one_another() -> None:
    r = record(5, "m0", "m1", 1.0, starts=False)
    r = MigrationRecord(**{**r.__dict__, "phases": {**r.phases, "mystery": 0.001}})
    segs = segments(r)
    assert [s.phase for s in segs] == [*TIMELINE_PHASES, "mystery"]
    assert segs[0].start == 0.0
    for a, b in itertools.pairwise(segs):
        assert b.start == pytest.approx(a.start + a.seconds)
    assert sum(s.seconds for s in segs) == pytest.approx(sum(r.phases.values()))


def test_record_as_dict_carries_phase_starts() -> None:
    r = record(5, "m0", "m1", 1.0)
    assert r.as_dict()["phase_starts"] == r.phase_starts


def test_figures_are_written(tmp_path: Path) -> None:
    migrations = [record(1, "m0", "m2", 2.0 - 0.025), record(3, "m1", "m0", 3.0 - 0.025,
                                                             reason="drain")]
    drains = [DrainSpan("m1", 2.5, 0.6, 1, True)]
    marks = [Mark(2.5, "drain", "m1"), Mark(3.5, "undrain", "m1"),
             Mark(4.0, "stop_machine", "m0")]
    load, timeline = tmp_path / "load.png", tmp_path / "timeline.png"
    plot_load(events(), migrations, drains, marks, load, "test", T0, ["m0", "m1", "m2"])
    plot_timeline(migrations, timeline, "test", T0, names={1: "sieve#0", 3: "hashwalk#1"})
    for path in (load, timeline):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_timeline_names_processes_as_the_report_does() -> None:
    """Rows are labelled with the report's process names (by pid), as the summary shows them;
    a pid the report does not name is shown as a pid."""
    migrations = [record(1001, "m0", "m1", 1.0), record(1002, "m1", "m2", 2.0)]
    rows = timeline_rows(migrations, {1001: "sieve#0"})
    assert [label for _, label in rows] == ["sieve#0 m0→m1", "pid 1002 m1→m2"]


def test_phases_are_shared_out_by_the_papers_names() -> None:
    shares = phase_shares([record(1, "m0", "m1", 1.0)])
    assert {"transform I (space)", "transform II (program)", "transform III (start)",
            "call round trips"} <= set(shares)
    assert not any("_" in label for label in shares)  # no field name reaches the figure
    assert sum(shares.values()) == pytest.approx(1.0)


def test_arrows_leaving_one_dot_are_spread_apart() -> None:
    # Two moves off m0 at one instant (a drain), one off m0 much later, one off m1 at the
    # same instant: only the first two would overlap, and only they leave the middle.
    migrations = [record(1, "m0", "m1", 2.0, reason="drain"),
                  record(2, "m0", "m2", 2.0, reason="drain"),
                  record(3, "m0", "m1", 8.0), record(4, "m1", "m2", 2.0)]
    heights = arrow_heights(migrations, end=10.0)
    assert heights[2] == heights[3] == 0.5
    assert heights[0] != heights[1]
    assert abs(heights[0] - heights[1]) >= 0.1  # apart by more than a dot
    assert (heights[0] + heights[1]) / 2 == pytest.approx(0.5)  # around the middle
    # Many at once stay inside the lane.
    crowd = [record(i, "m0", "m1", 2.0) for i in range(9)]
    assert all(0.1 <= h <= 0.9 for h in arrow_heights(crowd, end=10.0))
    assert len(set(arrow_heights(crowd[:5], end=10.0))) == 5


def test_timeline_shows_the_slowest(tmp_path: Path) -> None:
    migrations = [record(i, "m0", "m1", i * 0.1) for i in range(12)]
    plot_timeline(migrations, tmp_path / "timeline.png", "many", T0, slowest=5)
    plot_timeline([], tmp_path / "none.png", "none", T0)
    plot_load([], [], [], [], tmp_path / "empty.png", "empty", T0)
    for name in ("timeline.png", "none.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


class _FakeImage:
    pages_sent = 0
    text_pages_sent = 0
    text_shared = False
    handles: tuple[object, ...] = ()


class _FakeSource:
    """A source whose every step takes a little while, so that phases have extents."""

    name = "src"

    def freeze(self, pid: int, timeout: float = 30.0) -> int:
        time.sleep(0.002)
        return 1

    def thaw(self, pid: int, mid: str = "") -> None: ...
    def hand_over(self, pid: int, mid: str) -> None: ...
    def fault_point(self, phase: str) -> None: ...
    def program_size(self, pid: int) -> int:
        return 0

    def export_image(self, pid: int, transport: object, options: object) -> _FakeImage:
        time.sleep(0.002)
        return _FakeImage()

    def delete_migrated(self, pid: int, moved_bytes: int, reuse: bool) -> None:
        time.sleep(0.002)

    def note_migration(self, record: MigrationRecord) -> None: ...
    def migration_lease(self) -> float:
        return 10.0


class _FakePeer:
    """A destination whose work is a few milliseconds inside each call."""

    name = "dst"

    def create(self, mid: str, source: str, pid: int, frames: int, reuse: bool) -> float:
        time.sleep(0.004)
        return 0.003

    def transform(self, mid: str, image: object, options: object) -> dict[str, float]:
        time.sleep(0.008)
        return {"transform_space": 0.001, "transform_program": 0.002,
                "transform_start": 0.003}

    def commit(self, mid: str) -> Outcome:
        time.sleep(0.002)
        return Outcome.COMMITTED

    def abort(self, mid: str) -> Outcome:
        return Outcome.ABORTED

    def outcome(self, mid: str) -> Outcome:
        return Outcome.COMMITTED

    def renew(self, mid: str) -> Outcome:
        return Outcome.PENDING


def test_run_migration_records_phase_starts() -> None:
    from tender_ray.migration.options import MigrationOptions
    from tender_ray.migration.protocol import run_migration
    from tender_ray.migration.transports import LocalTransport

    r = run_migration(_FakeSource(), 9, _FakePeer(), LocalTransport(),  # type: ignore[arg-type]
                      MigrationOptions())
    assert set(r.phase_starts) == set(r.phases) == set(TIMELINE_PHASES)
    segs = segments(r)
    assert segs[0].phase == "freeze" and segs[0].start == 0.0
    # The export runs during the create call's round trip (the source puts its first blocks
    # while the destination makes its kernel process): after the freeze, within the move.
    export = next(s for s in segs if s.phase == "export")
    assert export.start >= segs[0].seconds - 1e-9
    assert export.start + export.seconds <= r.seconds + 1e-9
    serial = [s for s in segs if s.phase != "export"]
    for a, b in itertools.pairwise(serial):  # the others in order, none overlapping
        assert b.start >= a.start + a.seconds - 1e-9, (a, b)
    assert serial[-1].start + serial[-1].seconds <= r.seconds + 1e-9
    # The destination's phases sit inside their call, one after another.
    assert r.phase_starts["transform_program"] == pytest.approx(
        r.phase_starts["transform_space"] + 0.001)
    assert r.phase_starts["transform_call"] == pytest.approx(
        r.phase_starts["transform_space"] + 0.006)


def precopied(pid: int, at: float) -> MigrationRecord:
    """A pre-copy move: 40 ms of live rounds while the process ran (two rounds), then the
    freeze, whose span runs from the freeze phase's start to the commit."""
    r = record(pid, "m0", "m1", at)
    live = {"precopy": 0.040}
    starts = {"precopy": r.phase_starts["freeze"]}
    starts.update({k: v + 0.040 for k, v in r.phase_starts.items()})
    return dataclasses.replace(
        r, mode="precopy", rounds=2, round_bytes=(8 << 20, 1 << 20), freeze_bytes=1 << 18,
        bytes=(9 << 20) + (1 << 18), phases={**live, **r.phases}, phase_starts=starts,
        seconds=r.seconds + 0.040, freeze_seconds=0.0123)


def test_timeline_shows_mode_freeze_rounds_and_bytes(tmp_path: Path) -> None:
    """Beside each bar: the mode, the freeze against the whole move, rounds and bytes; under
    it the span the process did not run, from its freeze."""
    pre = precopied(2, 1.5)
    assert timeline_note(pre, T0) == (
        "precopy · froze 12.3 of 63.5 ms · 2 rounds\n"
        "9.2 MiB (9.0 live, 0.2 frozen) · threshold · at 1.5s")
    assert freeze_span(pre) == (pytest.approx(0.040), 0.0123)
    stopped = dataclasses.replace(record(1, "m0", "m1", 1.0, reason=""), freeze_seconds=0.017,
                                  bytes=1 << 20)
    assert timeline_note(stopped, T0) == "stop · froze 17.0 of 23.5 ms\n1.0 MiB · at 1.0s"
    assert freeze_span(stopped) == (0.0, 0.017)
    assert freeze_span(record(1, "m0", "m1", 1.0)) is None  # failed before a freeze: none
    # The live rounds come first on the bar, before the freeze.
    segs = segments(pre)
    live = next(s for s in segs if s.phase == "precopy")
    freeze = next(s for s in segs if s.phase == "freeze")
    assert live.start == 0.0 and freeze.start == pytest.approx(live.seconds)
    plot_timeline([stopped, pre], tmp_path / "timeline.png", "modes", T0)
    assert (tmp_path / "timeline.png").read_bytes()[:8] == PNG
