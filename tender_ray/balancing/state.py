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
    # A drain of the node the machine is on (the cluster manager's, with its deadline):
    node: str = ""  # the node being drained ("" for a drain of the machine alone)
    deadline_at: float | None = None  # wall seconds the node goes away (inf: not said)
    checkpointed: tuple[int, ...] = ()  # pids that could not move in time, checkpointed
    outcome: str = ""  # evacuated, checkpointed, incomplete, cancelled ("" for a machine drain)

    @property
    def result(self) -> str:
        """The drain's outcome as a metric label: ok, incomplete, checkpointed, cancelled."""
        if self.outcome in ("checkpointed", "cancelled", "incomplete"):
            return self.outcome
        return "ok" if self.ok else "incomplete"


@dataclass(frozen=True)
class BalancerState:
    """Everything the balancer did since it started."""

    rounds: int
    decisions: int
    migrations: tuple[MigrationRecord, ...]
    failures: tuple[str, ...]
    drains: tuple[DrainReport, ...]
    draining: tuple[str, ...]  # the nodes being drained now, with machines of ours on them
    policy: str = ""  # the balancer's policy, a label of its metrics
    signal_errors: int = 0  # times the draining nodes could not be read from the cluster
