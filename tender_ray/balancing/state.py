"""What the balancer reports: the record of one drain, and the balancer's whole state (rounds,
decisions, migrations, failures, drains). Frozen values that travel as themselves to the
metrics collector, `tender-ray top` and scenario reports."""

from __future__ import annotations

from dataclasses import dataclass

from tender_ray.migration.record import MigrationRecord


@dataclass(frozen=True)
class DrainReport:
    """What a drain did: each process moved off, how long it took, what was left, and why
    what did not move could not (from the last look the balancer had at the machines)."""

    machine: str
    seconds: float
    deadline: float
    moved: tuple[MigrationRecord, ...]
    left: tuple[int, ...]  # pids still there at the deadline
    ok: bool  # emptied before the deadline (by moves, or by its processes ending there)
    why: str = ""  # why processes stayed ("no other machine has room ..."); "" if none did
    ended: tuple[int, ...] = ()  # pids that ended on the machine instead of moving off


@dataclass(frozen=True)
class BalancerState:
    """Everything the balancer did since it started."""

    rounds: int
    decisions: int
    migrations: tuple[MigrationRecord, ...]
    failures: tuple[str, ...]
    drains: tuple[DrainReport, ...]
    draining: tuple[str, ...]
    policy: str = ""  # the balancer's policy, a label of its metrics
