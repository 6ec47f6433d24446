"""The report of a scenario run: what became of every process, the migrations (as their
records), the drains, what was lost, queued or never started, and how close the run came to
the ideal makespan. Typed from end to end; turned into JSON only for report.json (`to_json`),
whose field names and shape these classes keep."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tender_ray.balancing.policies import Policy
from tender_ray.cli.scenario.model import EventAction
from tender_ray.migration.record import MigrationRecord


def _plain(obj: Any) -> dict[str, Any]:
    """A leaf of the report (no records inside) as JSON-ready data: enums as their values."""
    return {k: v.value if isinstance(v, EventAction) else v
            for k, v in dataclasses.asdict(obj).items()}


@dataclass(frozen=True)
class ProcessReport:
    """One process of the run: how it ended, where it ran, and whether its output is native."""

    name: str
    pid: int
    program: str  # the file's name
    args: tuple[str, ...]
    exit_status: int | None  # None: it did not end (lost, unfinished)
    exit_reason: str  # the machine's, or "lost" or "unfinished"
    stdout_sha256: str
    native_stdout_sha256: str | None  # None: no native run here
    output_matches_native: bool | None
    machines: tuple[str, ...]  # where it started, then each machine it moved to
    cpu_seconds: float
    run_seconds: float | None
    arrived_at: float  # seconds after the start
    started_at: float | None
    queued_seconds: float | None
    queued_reason: str  # why it waited to start, if it did

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["args"], out["machines"] = list(self.args), list(self.machines)
        return out


@dataclass(frozen=True)
class Parallelism:
    """How many processes could run at once: computations, host cores, and the lesser."""

    computations: int
    host_cores: int
    used: int


@dataclass(frozen=True)
class MigrationSummary:
    count: int
    bytes: int
    records: tuple[MigrationRecord, ...]  # the balancer's, drains' moves included
    failures: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "bytes": self.bytes,
                "records": [m.as_dict() for m in self.records],
                "failures": list(self.failures)}


@dataclass(frozen=True)
class DrainSummary:
    """One drain: how long it took against its deadline, what moved and what stayed."""

    machine: str
    seconds: float
    deadline: float
    ok: bool
    left: tuple[int, ...]  # pids still there at the deadline
    moved: tuple[MigrationRecord, ...]
    why: str = ""  # why the processes left were not moved ("" when none was left)

    def as_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "seconds": self.seconds, "deadline": self.deadline,
                "ok": self.ok, "left": list(self.left), "why": self.why,
                "moved": [{"pid": r.pid, "to": r.destination, "seconds": r.seconds}
                          for r in self.moved]}


@dataclass(frozen=True)
class LostProcess:
    """A process that was on a machine stopped without a drain, or crashed without a usable
    checkpoint of it."""

    pid: int
    name: str
    machine: str
    reason: str = "machine stopped"  # or "no checkpoint", or what was wrong with it


@dataclass(frozen=True)
class RestartedProcess:
    """A process of a crashed machine that restarted elsewhere from its last checkpoint."""

    pid: int
    name: str
    lost_machine: str  # the machine that crashed
    machine: str  # where it restarted
    checkpoint_seq: int
    checkpoint_age_seconds: float  # how much of its run was done again
    crashed_at: float  # seconds after the start


@dataclass(frozen=True)
class FailedEvent:
    at: float
    action: EventAction
    machine: str
    error: str


@dataclass(frozen=True)
class PendingEvent:
    """An event still ahead when every process had ended: not waited for, never fired."""

    at: float
    action: EventAction
    machine: str


@dataclass(frozen=True)
class QueuedProcess:
    """A process that had to wait to start (memory, cordons), and for how long."""

    name: str
    reason: str
    waited_seconds: float | None  # None: it never started


@dataclass(frozen=True)
class NotStarted:
    name: str
    reason: str


@dataclass(frozen=True)
class Report:
    """A scenario run, as the summary shows it and report.json records it."""

    scenario: str
    policy: Policy
    started_unix: float  # when t=0 was, to line up with metrics
    makespan_seconds: float
    ideal_makespan_seconds: float
    makespan_over_ideal: float | None  # None: no process finished
    parallelism: Parallelism
    mean_slowdown: float | None
    migrations: MigrationSummary
    drains: tuple[DrainSummary, ...]
    lost: tuple[LostProcess, ...]
    events_failed: tuple[FailedEvent, ...]
    problems: tuple[str, ...]  # of the scenario file, that did not stop the run
    events_not_fired: tuple[PendingEvent, ...]
    queued: tuple[QueuedProcess, ...]
    not_started: tuple[NotStarted, ...]
    processes: tuple[ProcessReport, ...]
    restarts: tuple[RestartedProcess, ...] = ()

    @property
    def all_match_native(self) -> bool:
        """No process's output differs from its native run (one without a native run here
        counts as matching)."""
        return all(p.output_matches_native is not False for p in self.processes)

    @property
    def ok(self) -> bool:
        """Everything ran, as natively: what `tender-ray run` exits 0 for."""
        return (self.all_match_native and not self.lost and not self.not_started
                and not self.events_failed)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, in report.json's shape."""
        return {
            "scenario": self.scenario, "policy": self.policy.value,
            "started_unix": self.started_unix,
            "makespan_seconds": self.makespan_seconds,
            "ideal_makespan_seconds": self.ideal_makespan_seconds,
            "makespan_over_ideal": self.makespan_over_ideal,
            "parallelism": dataclasses.asdict(self.parallelism),
            "mean_slowdown": self.mean_slowdown,
            "migrations": self.migrations.as_dict(),
            "drains": [d.as_dict() for d in self.drains],
            "lost": [_plain(x) for x in self.lost],
            "restarts": [_plain(x) for x in self.restarts],
            "events_failed": [_plain(e) for e in self.events_failed],
            "problems": list(self.problems),
            "events_not_fired": [_plain(e) for e in self.events_not_fired],
            "queued": [_plain(q) for q in self.queued],
            "not_started": [_plain(n) for n in self.not_started],
            "processes": [p.as_dict() for p in self.processes],
            "all_match_native": self.all_match_native,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def write(self, path: Path) -> None:
        """Write report.json (or whatever `path` names)."""
        path.write_text(self.to_json())
