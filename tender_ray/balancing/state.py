"""What the balancer reports: the record of one drain, and the balancer's whole state (rounds,
decisions, migrations, failures, drains). Frozen values that travel as themselves to the
metrics collector, `tender-ray top` and scenario reports."""

from __future__ import annotations

from dataclasses import dataclass

from tender_ray.migration.record import MigrationRecord


@dataclass(frozen=True)
class DrainReport:
    """What a drain did: each process moved off, how long it took, and what was left."""

    machine: str
    seconds: float
    deadline: float
    moved: tuple[MigrationRecord, ...]
    left: tuple[int, ...]  # pids still there at the deadline
    ok: bool


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
