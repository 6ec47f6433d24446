"""`tender-ray top`: one frame drawn from hand-made snapshots, and `gather` over fake handles."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Generic, TypeVar

from rich.console import Console
from support.snapshots import balancer_state, proc, record, stats

from tender_ray.cli.top import gather, render, render_snapshot, run_top
from tender_ray.errors import MachineStoppedError
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.migration.record import MigrationRecord

T = TypeVar("T")


def draw(renderable: Any, width: int = 200) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_shows_machines_processes_and_migrations() -> None:
    now = time.time()
    rec = record(1001, "a", "b", now - 5)
    text = draw(render({"a": stats("a"), "b": stats("b", cordoned=True)},
                       [proc(1001, "a", "running", 256), proc(1002, "a", "frozen", 30),
                        proc(2001, "b", "sleeping", 10)],
                       [rec, record(1002, "a", "b", now - 60, result="failed",
                                    error="machine b is cordoned (draining)")],
                       down={"c": "machine c is gone"}, balancer=balancer_state(), now=now))
    assert "tender-ray top" in text
    rows = {cells[1]: cells[1:-1] for cells in (line.split() for line in text.splitlines())
            if len(cells) > 2 and cells[1] in ("a", "b", "c")}
    # Machine a: up, load, run queue, processes, frames free/used/held (100 used: 256 pages
    # is more than that, so none held), utilisation, migrations out/in; b is cordoned
    # (draining), its frames held by migrations; c did not answer.
    assert rows["a"] == ["a", "up", "1.50", "3", "4", "900", "100", "0", "40%", "2/1"]
    assert rows["b"][:2] == ["b", "draining"] and rows["b"][5:8] == ["900", "10", "90"]
    assert rows["c"][:2] == ["c", "down"]
    assert "draining" in text and "down" in text and "machine c is gone" in text
    assert "p1001" in text and "frozen" in text and "sleeping" in text
    assert "a → b" in text and "failed" in text
    # Migrations name the process by its program and pid, as `ps` lists it; a failed one
    # says why, on the line under it.
    assert "p1001 1001  a → b  ok" in text and "p1002 1002  a → b  failed" in text
    assert "why: machine b is cordoned (draining)" in text
    # Phases of the migration with their times in milliseconds, in the order they ran.
    assert ("phases: freeze 0.20 ms · create 4.00 ms · export 3.00 ms · commit 500.00 ms"
            in text)
    assert "policy threshold" in text and "decisions 3" in text


def test_migration_phases_by_the_papers_names() -> None:
    """The transform's three steps read as the paper names them, in the order they ran; the
    record's field names are not shown."""
    now = time.time()
    phases = {"transform_start": 0.003, "freeze": 0.001, "transform_space": 0.0005,
              "transform_program": 0.002, "create_call": 0.004}
    rec = MigrationRecord(pid=7, source="a", destination="b", transfer="dsm", reuse=True,
                          resources="needed", seconds=0.01, phases=phases, started_at=now - 1)
    text = draw(render({}, [], [rec], now=now))
    assert ("phases: freeze 1.00 ms · create call 4.00 ms · transform I (space) 0.50 ms · "
            "transform II (program) 2.00 ms · transform III (start) 3.00 ms") in text
    assert "transform_" not in text and "pid 7  a → b" in text  # no process listed: its pid


def test_migrations_by_mode_and_how_each_moved() -> None:
    """Each mode's moves summed (freeze against total, rounds, bytes sent live), and under each
    move its mode, freeze, rounds and bytes; a failed move is counted, not summed."""
    now = time.time()
    mib = 1 << 20
    stop = dataclasses.replace(record(7, "a", "b", now - 3, seconds=0.5), freeze_seconds=0.4,
                               bytes=8 * mib, freeze_bytes=8 * mib)
    pre = dataclasses.replace(record(8, "a", "b", now - 2, seconds=0.8), mode="precopy",
                              rounds=2, round_bytes=(8 * mib, mib), freeze_bytes=mib // 2,
                              bytes=9 * mib + mib // 2, freeze_seconds=0.01)
    lost = dataclasses.replace(record(9, "a", "b", now - 1, result="failed",
                                      error="machine b is gone"), freeze_seconds=0.3)
    text = draw(render({}, [], [stop, pre, lost], now=now))
    assert ("stop: 1 moved (1 failed) · froze 400.0 of 500.0 ms (80%), longest freeze "
            "400.0 ms · 0 rounds · 8.0 MiB (0.0 live)") in text
    assert ("precopy: 1 moved · froze 10.0 of 800.0 ms (1%), longest freeze 10.0 ms · "
            "2 rounds · 9.5 MiB (9.0 live)") in text
    assert "precopy · froze 10.0 of 800.0 ms · 2 rounds · 9.5 MiB (9.0 live, 0.5 frozen)" in text
    assert "stop · froze 400.0 of 500.0 ms · 8.0 MiB" in text
    assert "why: machine b is gone" in text and "froze 300.0" not in text


def test_render_without_anything() -> None:
    text = draw(render({}, [], []))
    assert "0 machines up" in text and "none yet" in text and "balancer: none" in text


class FakeReply(Generic[T]):
    """A reply from a fake machine: its value, or the error of a machine that is gone."""

    def __init__(self, machine: str, value: T, fail: bool) -> None:
        self.machine, self.value, self.fail = machine, value, fail

    def result(self, timeout: float | None = None) -> T:
        if self.fail:
            raise MachineStoppedError(f"machine {self.machine} is gone")
        return self.value


class FakeHandle:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail

    def statistics_async(self) -> FakeReply[MachineStatistics]:
        return FakeReply(self.name, stats(self.name), self.fail)

    def list_processes_async(self) -> FakeReply[list[ProcessInfo]]:
        return FakeReply(self.name, [proc(1, self.name, "running", 1)], self.fail)

    def recent_migrations_async(self) -> FakeReply[list[MigrationRecord]]:
        return FakeReply(self.name, [record(1, self.name, "x", time.time())], self.fail)


def test_gather_and_run_once() -> None:
    snap = gather([FakeHandle("a"), FakeHandle("b", fail=True)], balancer=lambda: None)
    assert list(snap.machines) == ["a"] and "b" in snap.down
    assert len(snap.processes) == 1 and len(snap.migrations) == 1
    assert "a → x" in draw(render_snapshot(snap))
    console = Console(record=True, width=160, color_system=None)
    run_top([FakeHandle("a")], console=console, once=True)
    assert "1 machine up" in console.export_text()
    console = Console(record=True, width=160, color_system=None, force_terminal=False)
    run_top(lambda: [FakeHandle("a")], interval=0.01, console=console, iterations=2)
