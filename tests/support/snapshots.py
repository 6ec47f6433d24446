"""Hand-made snapshots for the tests of what reads them (the metrics collector, `top`): a
machine's statistics (`stats`), a process (`proc`), a migration record (`record`), and the
balancer's state (`balancer_state`, with its `drain_report`s) built as the real
`BalancerState` / `DrainReport`. No machine, no Ray.

The numbers are fixed: tests of the collector and of `top` assert on them.
"""

from __future__ import annotations

import time

from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.computation import ComputationStatistics
from tender_ray.resources.manager import ManagerStatistics
from tender_ray.resources.real_memory import RealMemoryStatistics


def stats(name: str, *, free: int = 900, used: int = 100, cordoned: bool = False,
          migrations: dict[str, int] | None = None) -> MachineStatistics:
    """Statistics of a running machine `name`: two computations (one running pid 1001), four
    processes, `free` + `used` frames, two managers, a few system calls and migrations."""
    return MachineStatistics(
        name=name, state="running",
        computations=(ComputationStatistics(0, "running", 1001, 2.5, 40),
                      ComputationStatistics(1, "idle", None, 1.5, 20)),
        processes={"running": 1, "runnable": 2, "frozen": 1}, runnable=3, load=1.5,
        utilisation=0.4, memory=RealMemoryStatistics(free + used, free, used),
        managers=(ManagerStatistics("process", 5, 1, 3, 2, 1, 2, True),
                  ManagerStatistics("virtual_space", 4, 0, 2, 2, 1, 0, True)),
        syscalls={"write": 10, "brk": 3, "socket": 1}, unsupported={"socket": 1},
        exited=4, uptime=12.0, cordoned=cordoned,
        migrations=migrations if migrations is not None else {"out_ok": 2, "in_ok": 1},
        migration_bytes=8192, migration_phase_seconds={"freeze": 0.001, "create": 0.002})


def proc(pid: int, machine: str, state: str, pages: int) -> ProcessInfo:
    """A live process `p<pid>` on `machine`, in `state`, with `pages` resident, 3 s old."""
    return ProcessInfo(pid=pid, name=f"p{pid}", machine=machine, state=state, exit_status=None,
                       exit_reason="", cpu_seconds=1.25, run_seconds=3.0, resident_pages=pages,
                       syscalls={}, unsupported={}, migrations=(), created_at=time.time() - 3)


def record(pid: int, src: str, dst: str, started: float, *, result: str = "ok",
           transfer: str = "dsm", reuse: bool = True, seconds: float = 0.02,
           reason: str = "", error: str = "") -> MigrationRecord:
    """The record of a migration of `pid` from `src` to `dst` begun at `started` (time.time):
    3 pages, four phases (freeze 0.2 ms, create 4 ms, export 3 ms, commit 500 ms); `error`
    says why one that failed did."""
    return MigrationRecord(pid=pid, source=src, destination=dst, seconds=seconds,
                           bytes=4096 * 3, pages=3,
                           phases={"freeze": 0.0002, "create": 0.004, "export": 0.003,
                                   "commit": 0.5},
                           transfer=transfer, reuse=reuse, resources="needed", result=result,
                           error=error, started_at=started, reason=reason)


def drain_report(machine: str, seconds: float, moved: tuple[MigrationRecord, ...],
                 ok: bool) -> DrainReport:
    """The report of a drain of `machine` that took `seconds` (deadline 10 s) and moved
    `moved`, leaving nothing behind."""
    return DrainReport(machine=machine, seconds=seconds, deadline=10.0, moved=moved, left=(),
                       ok=ok)


def balancer_state() -> BalancerState:
    """The balancer's state: policy threshold, 7 rounds, 3 decisions, two migrations (a drain
    and a cost decision), one failure, one drain of b, nothing draining now."""
    return BalancerState(
        rounds=7, decisions=3,
        migrations=(record(1, "b", "a", 0.0, reason="drain"),
                    record(2, "a", "b", 0.0, reason="cost: saves 1.2s > 0.1s")),
        failures=("boom",),
        drains=(drain_report("b", 1.5, (record(1, "b", "a", 0.0),), True),),
        draining=(), policy="threshold")
