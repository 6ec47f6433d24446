"""The report of a scenario run: what became of every process, the migrations (as their
records), the drains (the scenario's own, and the drains of Ray nodes the balancer or the
drain watcher followed), what was lost, queued or never started, and how close the run came to
the ideal makespan. Typed from end to end; turned into JSON only for report.json (`to_json`),
whose field names and shape these classes keep."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tender_ray.balancing.policies import Policy
from tender_ray.balancing.state import DrainReport
from tender_ray.cli.scenario.model import EventAction
from tender_ray.metrics.modes import summarise_modes
from tender_ray.migration.checkpoint import CheckpointRecord
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

    def as_dict(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """JSON-ready; with `names` (pid -> report name) each record also says `process`, the
        name the summary and the figures give the process that moved."""
        records = []
        for m in self.records:
            record = m.as_dict()
            if names and m.pid in names:
                record["process"] = names[m.pid]
            records.append(record)
        # Per mode (stop, precopy): freeze against total time, rounds and bytes, summed.
        by_mode = {mode: m.as_dict() for mode, m in summarise_modes(self.records).items()}
        return {"count": self.count, "bytes": self.bytes, "by_mode": by_mode,
                "records": records, "failures": list(self.failures)}


@dataclass(frozen=True)
class DrainSummary:
    """One drain: how long it took against its deadline, what moved and what stayed. A drain
    of a Ray node also says which node, its outcome, what was checkpointed because it could
    not move in time, and how long before the node's deadline it was done."""

    machine: str
    seconds: float
    deadline: float
    ok: bool
    left: tuple[int, ...]  # pids still there at the deadline
    moved: tuple[MigrationRecord, ...]
    why: str = ""  # why the processes left were not moved ("" when none was left)
    node: str = ""  # the Ray node drained ("" for a drain of the machine alone)
    outcome: str = ""  # evacuated, checkpointed, incomplete, cancelled (node drains)
    checkpointed: tuple[int, ...] = ()
    deadline_at: float | None = None  # wall seconds the node went away (inf: not said)

    @staticmethod
    def of(report: DrainReport) -> DrainSummary:
        return DrainSummary(report.machine, report.seconds, report.deadline, report.ok,
                            tuple(report.left), tuple(report.moved), report.why,
                            node=report.node, outcome=report.outcome,
                            checkpointed=tuple(report.checkpointed),
                            deadline_at=report.deadline_at)

    @property
    def seconds_before_deadline(self) -> float | None:
        """How long before its deadline the drain was done (negative: after); None when it
        had none."""
        if self.deadline_at is not None and math.isinf(self.deadline_at):
            return None
        if not self.deadline or self.outcome == "cancelled":
            return None
        return self.deadline - self.seconds

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "machine": self.machine, "seconds": self.seconds, "deadline": self.deadline,
            "ok": self.ok, "left": list(self.left), "why": self.why,
            "moved": [{"pid": r.pid, "to": r.destination, "seconds": r.seconds}
                      for r in self.moved]}
        if self.node:
            at = self.deadline_at
            out.update(node=self.node, outcome=self.outcome,
                       checkpointed=list(self.checkpointed),
                       # JSON has no infinity: a node drained without a deadline has null.
                       deadline_at=None if at is None or math.isinf(at) else at,
                       seconds_before_deadline=self.seconds_before_deadline)
        return out


def node_drain_summaries(reports: Iterable[DrainReport]) -> tuple[DrainSummary, ...]:
    """The drains of Ray nodes among `reports` (the balancer's drains, or the drain
    watcher's), one per machine on a drained node."""
    return tuple(DrainSummary.of(d) for d in reports if d.node)


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
class CheckpointAges:
    """How old each process's newest checkpoint grew while it ran, against the interval: the
    age just before each next checkpoint was written (from the one before it was taken, on
    whichever machine, to the next one being durable), and at each restart the age when its
    machine was found lost. p50 and max per process, and its slowest checkpoint (what bounds
    its age: the next one is durable only once written); `max_seconds` over all of them, the
    figure `every: S` promises to keep at most 2·S."""

    every: float | None
    max_seconds: float | None  # None: no process had two checkpoints, nor a restart
    # (name, p50, max, slowest checkpoint's seconds), the oldest max first
    per_process: tuple[tuple[str, float, float, float], ...]

    @staticmethod
    def of(records: Iterable[CheckpointRecord], restarts: Iterable[RestartedProcess],
           names: Mapping[int, str], every: float | None) -> CheckpointAges:
        taken: dict[int, dict[tuple[str, int, float], CheckpointRecord]] = {}
        for r in records:  # a record may be seen in several polls: once each
            taken.setdefault(r.pid, {})[(r.machine, r.seq, r.taken_at)] = r
        ages: dict[int, list[float]] = {}
        slowest = {pid: max(r.seconds for r in by_key.values()) for pid, by_key in taken.items()}
        for pid, by_key in taken.items():
            chain = sorted(by_key.values(), key=lambda r: r.taken_at)
            ages[pid] = [b.taken_at + b.seconds - a.taken_at
                         for a, b in itertools.pairwise(chain)]
        for x in restarts:
            ages.setdefault(x.pid, []).append(x.checkpoint_age_seconds)
        rows = sorted(((names.get(pid, str(pid)), _median(v), max(v), slowest.get(pid, 0.0))
                       for pid, v in ages.items() if v), key=lambda row: -row[2])
        return CheckpointAges(every, rows[0][2] if rows else None, tuple(rows))

    def as_dict(self) -> dict[str, Any]:
        return {"every": self.every, "max_seconds": self.max_seconds,
                "max_over_every": (self.max_seconds / self.every
                                   if self.max_seconds is not None and self.every else None),
                "per_process": [{"process": n, "p50_seconds": p50, "max_seconds": top,
                                 "slowest_checkpoint_seconds": cost}
                                for n, p50, top, cost in self.per_process]}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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
    node_drains: tuple[DrainSummary, ...] = ()  # of Ray nodes, by the balancer or the watcher
    checkpoint_ages: CheckpointAges | None = None  # None: the scenario checkpoints nothing

    def process_names(self) -> dict[int, str]:
        """Each process's report name (`sieve#0`) by pid: what the summary, the figures and
        report.json's migrations call it."""
        return {p.pid: p.name for p in self.processes}

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
            "migrations": self.migrations.as_dict(self.process_names()),
            "drains": [d.as_dict() for d in self.drains],
            "node_drains": [d.as_dict() for d in self.node_drains],
            "lost": [_plain(x) for x in self.lost],
            "restarts": [_plain(x) for x in self.restarts],
            "checkpoint_ages": (self.checkpoint_ages.as_dict()
                                if self.checkpoint_ages is not None else None),
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
