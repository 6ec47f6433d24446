"""What write tracking costs: a heap-walking program run with its written pages taken every
`interval` seconds, against the same program untracked, on each engine, side by side.

Each round runs the workload once untracked and once tracked on the same machine, one after
the other, so a change in host load touches both alike; the ratio is tracked ÷ untracked of
the best run of each. The tracked run also reports its takes and the pages they held (what a
pre-copy round would send). An engine that cannot track says so by its error.

    tender-ray bench engine --tracking [--engines native,emulated] [--repeat 3]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from tender_ray.config import Engine, MachineConfig, workload
from tender_ray.errors import ProcessStateError, WriteTrackingError
from tender_ray.kernel.machine import Machine

if TYPE_CHECKING:
    from rich.console import Console

TRACKING_WORKLOAD = ("hashwalk", ["32"])
TAKE_INTERVAL = 0.05  # seconds between two takes (a pre-copy round's pace)
WAIT_TIMEOUT = 600.0


class TrackingRow(TypedDict):
    engine: str
    untracked_s: float | None  # best run time
    tracked_s: float | None
    ratio: float | None  # tracked ÷ untracked
    untracked_cpu_s: float | None  # the computation's CPU seconds in those best runs: a
    tracked_cpu_s: float | None  # shared host moves the wall times, less these
    cpu_ratio: float | None
    takes: int  # in the best tracked run
    pages_per_take: float
    write_faults: int  # stores the engine caught to mark a page (the best tracked run)
    identical: bool
    refused: str  # why the engine would not track ("" when it did)


def _run(machine: Machine, image: bytes, name: str, args: list[str], interval: float | None
         ) -> tuple[float, bytes, int | None, int, int, int, float]:
    """One run: (run s, stdout, status, takes, pages taken, write faults, CPU s); takes
    every `interval` seconds when not None."""
    pid = machine.exec(image, name, [name, *args])
    takes = pages = faults = 0
    if interval is not None:
        try:
            machine.start_tracking(pid)
        except WriteTrackingError:  # this engine cannot: end the run before saying so
            machine.kill(pid)
            machine.wait(pid, timeout=WAIT_TIMEOUT)
            machine.reap(pid)
            raise
        space = machine.scheduler.get(pid).space
        dirty = space.dirty if space is not None else None
        while True:
            time.sleep(interval)
            try:
                pages += machine.take_written(pid).pages.size
            except ProcessStateError:
                break  # it ended
            takes += 1
        faults = dirty.marks if dirty is not None else 0
    info = machine.wait(pid, timeout=WAIT_TIMEOUT)
    if info.state != "zombie":
        machine.kill(pid)
        raise TimeoutError(f"{name} (pid {pid}) did not finish in {WAIT_TIMEOUT:.0f} s")
    info, out, _err = machine.reap(pid)
    return info.run_seconds, out, info.exit_status, takes, pages, faults, info.cpu_seconds


def _engine_row(engine: str, repeat: int, interval: float) -> TrackingRow:
    name, args = TRACKING_WORKLOAD
    image = workload(name).read_bytes()
    machine = Machine(MachineConfig(name="bench", memory_mib=256, engine=Engine(engine)))
    plain: list[tuple[float, bytes, int | None, float]] = []
    tracked: list[tuple[float, bytes, int | None, int, int, int, float]] = []
    refused = ""
    try:
        for _ in range(repeat):
            run_s, out, status, *_, cpu_s = _run(machine, image, name, args, None)
            plain.append((run_s, out, status, cpu_s))
            if refused:
                continue
            try:
                tracked.append(_run(machine, image, name, args, interval))
            except WriteTrackingError as exc:
                refused = str(exc)
    finally:
        machine.stop()
    best_plain = min(plain)
    outputs = {(r[1], r[2]) for r in plain} | {(r[1], r[2]) for r in tracked}
    if not tracked:
        return TrackingRow(engine=engine, untracked_s=round(best_plain[0], 4), tracked_s=None,
                           ratio=None, untracked_cpu_s=round(best_plain[3], 4),
                           tracked_cpu_s=None, cpu_ratio=None, takes=0, pages_per_take=0.0,
                           write_faults=0,
                           identical=len(outputs) == 1, refused=refused)
    best = min(tracked)
    return TrackingRow(engine=engine, untracked_s=round(best_plain[0], 4),
                       tracked_s=round(best[0], 4), ratio=round(best[0] / best_plain[0], 3),
                       untracked_cpu_s=round(best_plain[3], 4), tracked_cpu_s=round(best[6], 4),
                       cpu_ratio=round(best[6] / best_plain[3], 3) if best_plain[3] else None,
                       takes=best[3], pages_per_take=round(best[4] / max(best[3], 1), 1),
                       write_faults=best[5], identical=len(outputs) == 1, refused=refused)


def tracking_benchmark(engines: Sequence[str], repeat: int = 3,
                       interval: float = TAKE_INTERVAL) -> dict[str, Any]:
    """Run time with write tracking (a take every `interval` s) ÷ without, per engine."""
    name, args = TRACKING_WORKLOAD
    return {"workload": [name, *args], "interval_s": interval, "repeat": repeat,
            "rows": [_engine_row(engine, repeat, interval) for engine in engines]}


def print_tracking_table(result: dict[str, Any], console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"write tracking: {' '.join(result['workload'])}, a take every "
                        f"{result['interval_s'] * 1000:.0f} ms (best of {result['repeat']})")
    for column in ("engine", "untracked s", "tracked s", "tracked ÷ untracked", "CPU ratio",
                   "takes", "pages/take", "write faults", "identical"):
        table.add_column(column)
    for row in result["rows"]:
        if row["refused"]:
            table.add_row(row["engine"], str(row["untracked_s"]), "-", "refused", "-", "-",
                          "-", "-", str(row["identical"]))
            continue
        table.add_row(row["engine"], str(row["untracked_s"]), str(row["tracked_s"]),
                      str(row["ratio"]), str(row["cpu_ratio"]), str(row["takes"]),
                      str(row["pages_per_take"]),
                      str(row["write_faults"]), str(row["identical"]))
    console = console or Console()
    console.print(table)
    for row in result["rows"]:
        if row["refused"]:
            console.print(f"{row['engine']}: {row['refused']}")
