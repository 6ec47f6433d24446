"""Prometheus metrics: one endpoint serving every machine of a cluster (prometheus_client).

Machines export nothing themselves. One exporter (the Ray layer's exporter actor) polls
every machine's `statistics()`, process list and recent migration records, the balancer's
state and the drain watcher's node drains (`metrics.node_drains`), about once a second, and
hands them to `MetricsServer.update`. At each scrape the `TenderCollector` builds the metric
families from the latest snapshots, so the counters are the machines' own cumulative totals:
nothing is counted twice, and a restarted machine shows as an ordinary counter reset.

What the machines do not keep as totals — migrations by source *and* destination, migration
bytes and the duration histograms by phase — is accumulated here from the migration records,
each record counted once (records are deduplicated by pid, start time and source).

Names follow the Prometheus conventions: the `tender_` prefix, the unit in the name, `_total`
on counters. Labels are low-cardinality only (machine, source, destination, state, phase,
resource, syscall, strategy, result, policy, reason, watcher, outcome): never a pid or a page.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tender_ray.balancing.state import BalancerState
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.metrics.node_drains import NodeDrainView, node_drain_families
from tender_ray.migration.checkpoint import CheckpointRecord
from tender_ray.migration.record import EXTRA_PHASES, PHASES, MigrationRecord
from tender_ray.resources.process import ProcessState
from tender_ray.resources.real_memory import PAGE_SIZE

DEFAULT_PORT = 9464  # the default of --metrics-port and of grafana/prometheus.yml
DEFAULT_HOST = "127.0.0.1"

# Seconds. Phases run from tens of microseconds (a pooled create) to seconds (a large copy).
PHASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0)
# The machine's migration counters, always exported (zero until they happen) so that panels
# of failures have data before the first failure.
MACHINE_MIGRATION_KEYS = ("out_ok", "out_failed", "in_ok", "in_aborted", "local_ok")
BALANCER_REASONS = ("drain", "threshold", "greedy", "age", "cost")
DRAIN_RESULTS = ("ok", "incomplete", "checkpointed", "cancelled")  # DrainReport.result
FRAME_STATES = ("free", "used", "held")
RESOURCE_STATES = ("live", "held", "pool")


def reason_label(reason: str) -> str:
    """A balancer move's reason without its details ("cost: saves 0.3s > ..." -> "cost")."""
    return reason.split(":", 1)[0].strip() or "unknown"


def frames_by_state(stats: MachineStatistics,
                    processes: Sequence[ProcessInfo] | None) -> dict[str, int]:
    """Real-memory frames split into free, used (by processes in the table that are not
    migrating) and held (by migrations in flight: frozen processes the source keeps until the
    destination commits, and arriving processes being transformed). The three add up to the
    machine's frames. Without a process list every frame in use counts as used."""
    mem = stats.memory
    held = 0
    if processes is not None:
        in_use = sum(p.resident_pages for p in processes if p.state != ProcessState.FROZEN.value)
        held = min(max(mem.frames_used - in_use, 0), mem.frames_used)
    return {"free": mem.frames_free, "used": mem.frames_used - held, "held": held}


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class MigrationHistory:
    """Migration records accumulated into counters and histograms, each record once.

    The machines keep only their last records; the exporter hands the current window of each
    machine at every poll, and only the records not seen in the previous window are added.
    """

    def __init__(self) -> None:
        self._seen: dict[str, set[tuple[int, float, str]]] = {}
        self.count: Counter[tuple[str, str, str, str]] = Counter()  # src, dst, result, strat
        self.bytes: Counter[tuple[str, str, str]] = Counter()  # src, dst, strategy
        self.phases: dict[tuple[str, str], _Histogram] = {}  # phase, strategy
        self.durations: dict[tuple[str, str], _Histogram] = {}  # strategy, result
        # By mode (stop, precopy): moves, their live rounds, the bytes sent while the process
        # ran and while it was frozen, and the freeze against the whole move.
        self.mode_count: Counter[tuple[str, str]] = Counter()  # mode, result
        self.mode_rounds: Counter[str] = Counter()  # mode
        self.mode_bytes: Counter[tuple[str, str]] = Counter()  # mode, "live" or "frozen"
        self.freezes: dict[str, _Histogram] = {}  # mode
        self.mode_durations: dict[str, _Histogram] = {}  # mode
        self.records = 0

    @staticmethod
    def key(record: MigrationRecord) -> tuple[int, float, str]:
        return (record.pid, record.started_at, record.source)

    def add(self, machine: str, records: Iterable[MigrationRecord]) -> int:
        """Add the records of `machine`'s current window that are new; how many were."""
        window = list(records)
        keys = {self.key(r) for r in window}
        seen = self._seen.get(machine, set())
        new = 0
        for record in window:
            k = self.key(record)
            if k in seen:
                continue
            seen.add(k)
            self._observe(record)
            new += 1
        self._seen[machine] = keys  # older records left the window: they never come back
        return new

    def _observe(self, record: MigrationRecord) -> None:
        src, dst, result = record.source, record.destination, record.result
        strat = record.strategy
        self.records += 1
        self.count[(src, dst, result, strat)] += 1
        if record.ok:
            self.bytes[(src, dst, strat)] += record.bytes
        for phase, seconds in record.phases.items():
            hist = self.phases.get((phase, strat))
            if hist is None:
                hist = self.phases[(phase, strat)] = _Histogram(PHASE_BUCKETS)
            hist.observe(seconds)
        hist = self.durations.get((strat, result))
        if hist is None:
            hist = self.durations[(strat, result)] = _Histogram(DURATION_BUCKETS)
        hist.observe(record.seconds)
        mode = record.mode
        self.mode_count[(mode, result)] += 1
        if record.ok:  # a failed move's freeze and bytes are no move's cost
            self.mode_rounds[mode] += record.rounds
            live = sum(record.round_bytes)
            self.mode_bytes[(mode, "live")] += live
            self.mode_bytes[(mode, "frozen")] += record.bytes - live
            for hists, seconds in ((self.freezes, record.freeze_seconds),
                                   (self.mode_durations, record.seconds)):
                if mode not in hists:
                    hists[mode] = _Histogram(DURATION_BUCKETS)
                hists[mode].observe(seconds)


class CheckpointHistory:
    """Checkpoint records (from each machine's statistics snapshot) accumulated into
    histograms of their time and freeze, by kind (full, incremental), each record once."""

    def __init__(self) -> None:
        self._seen: dict[str, set[tuple[int, int, float]]] = {}
        self.durations: dict[str, _Histogram] = {}  # kind
        self.frozen: dict[str, _Histogram] = {}  # kind

    def add(self, machine: str, records: Iterable[CheckpointRecord]) -> None:
        window = list(records)
        seen = self._seen.get(machine, set())
        for r in window:
            if (r.pid, r.seq, r.taken_at) in seen:
                continue
            kind = "full" if r.full else "incremental"
            for hists, value in ((self.durations, r.seconds), (self.frozen, r.frozen_seconds)):
                hist = hists.get(kind)
                if hist is None:
                    hist = hists[kind] = _Histogram(PHASE_BUCKETS)
                hist.observe(value)
        self._seen[machine] = {(r.pid, r.seq, r.taken_at) for r in window}


@dataclass(frozen=True)
class _Machine:
    statistics: MachineStatistics
    processes: tuple[ProcessInfo, ...] | None
    up: bool


class TenderCollector:
    """A prometheus_client collector over the latest snapshots of every machine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._machines: dict[str, _Machine] = {}
        self._balancer: BalancerState | None = None
        self._watched: NodeDrainView | None = None  # the drain watcher's, when one ran
        self._policy = ""
        self._errors: Counter[str] = Counter()
        self._updates = 0
        self._last_update = 0.0
        self._poll_seconds = 0.0
        self.history = MigrationHistory()
        self.checkpoints = CheckpointHistory()
        # Called before each scrape (by whoever polls the machines) so the scrape sees the
        # cluster as it is now; it polls only when the last poll is older than it wants.
        self.refresh: Callable[[], None] | None = None

    def update(self, machines: Mapping[str, MachineStatistics], *,
               processes: Mapping[str, Sequence[ProcessInfo]] | None = None,
               migrations: Mapping[str, Iterable[MigrationRecord]] | None = None,
               balancer: BalancerState | None = None, node_drains: NodeDrainView | None = None,
               down: Iterable[str] = (), poll_seconds: float = 0.0) -> None:
        """The machines that answered this poll (name -> statistics), their processes and
        migration records, the balancer's state, the drain watcher's node drains (None: keep
        the last), and the machines that did not answer (their last snapshot stays, marked
        down). Machines in neither are forgotten."""
        processes = processes or {}
        with self._lock:
            current: dict[str, _Machine] = {}
            for name, stats in machines.items():
                procs = processes.get(name)
                current[name] = _Machine(stats, tuple(procs) if procs is not None else None,
                                         True)
            for name in down:
                self._errors[name] += 1
                old = self._machines.get(name)
                if old is not None and name not in current:
                    current[name] = _Machine(old.statistics, old.processes, False)
            self._machines = current
            for name, stats in machines.items():
                self.checkpoints.add(name, stats.checkpoint_records)
            for name, records in (migrations or {}).items():
                self.history.add(name, records)
            if balancer is not None:
                self._balancer = balancer
                self._policy = balancer.policy or self._policy
            if node_drains is not None:
                self._watched = node_drains
            self._updates += 1
            self._last_update = time.time()
            self._poll_seconds = poll_seconds

    def collect(self) -> Iterator[Metric]:
        refresh = self.refresh
        if refresh is not None:
            with contextlib.suppress(Exception):  # a failed poll serves the last snapshot
                refresh()
        with self._lock:  # families are built under the lock, yielded after it
            machines = dict(sorted(self._machines.items()))
            balancer, policy = self._balancer, self._policy or "unknown"
            views = [NodeDrainView.of_balancer(balancer)] if balancer is not None else []
            if self._watched is not None:
                views.append(self._watched)
            families = [*self._machine_families(machines, self._errors),
                        *self._migration_families(self.history),
                        *self._checkpoint_families(machines, self.checkpoints),
                        *self._balancer_families(balancer, policy, list(machines)),
                        *node_drain_families(views, time.time(), list(machines)),
                        *self._exporter_families(self._updates, self._last_update,
                                                 self._poll_seconds)]
        yield from families

    # --- families ----------------------------------------------------------------------

    @staticmethod
    def _machine_families(machines: Mapping[str, _Machine],
                          errors: Mapping[str, int]) -> Iterator[Metric]:
        m = ["machine"]
        up = GaugeMetricFamily("tender_machine_up", "1 when the machine answered the "
                               "exporter's last poll, 0 when it did not", labels=m)
        info = GaugeMetricFamily("tender_machine_info", "Always 1: the machine's engine and "
                                 "state as labels", labels=["machine", "engine", "state"])
        draining = GaugeMetricFamily("tender_machine_draining", "1 when the machine is "
                                     "cordoned (draining: it takes no new processes)", labels=m)
        uptime = GaugeMetricFamily("tender_machine_uptime_seconds", "Seconds since the "
                                   "machine started", labels=m)
        comps = GaugeMetricFamily("tender_machine_computations", "Computations (processor "
                                  "slots) of the machine", labels=m)
        runnable = GaugeMetricFamily("tender_machine_runnable", "Processes in the run queue "
                                     "or running (run-queue length)", labels=m)
        load = GaugeMetricFamily("tender_machine_runnable_per_computation", "Run-queue load: "
                                 "runnable and running processes per computation", labels=m)
        util = GaugeMetricFamily("tender_machine_utilisation_ratio", "Fraction of computation "
                                 "time spent running processes since the machine started",
                                 labels=m)
        procs = GaugeMetricFamily("tender_processes", "Processes in the machine's process "
                                  "table, by state", labels=["machine", "state"])
        exited = CounterMetricFamily("tender_machine_exited_processes", "Processes that ended "
                                     "on the machine", labels=m)
        busy = CounterMetricFamily("tender_computation_busy_seconds", "Seconds the machine's "
                                   "computations spent running processes", labels=m)
        quanta = CounterMetricFamily("tender_computation_quanta", "Quanta (time slices) run "
                                     "by the machine's computations", labels=m)
        frames = GaugeMetricFamily("tender_memory_frames", "Real-memory frames (4 KiB) by "
                                   "state: free, used by processes, held by migrations in "
                                   "flight", labels=["machine", "state"])
        size = GaugeMetricFamily("tender_memory_size_bytes", "Real memory of the machine",
                                 labels=m)
        res = GaugeMetricFamily("tender_resources", "Resources by manager and state: live "
                                "(in use), held (kept after deletion for reuse), pool "
                                "(pre-created)", labels=["machine", "resource", "state"])
        created = CounterMetricFamily("tender_resources_created", "Resources constructed from "
                                      "scratch (pool fills included)",
                                      labels=["machine", "resource"])
        deleted = CounterMetricFamily("tender_resources_deleted", "Resources destroyed for "
                                      "good", labels=["machine", "resource"])
        reused = CounterMetricFamily("tender_resources_reused", "Requests served from the pool "
                                     "or the held resources", labels=["machine", "resource"])
        sys_calls = CounterMetricFamily("tender_syscalls", "System calls made by processes that "
                                        "ended on the machine, by name",
                                        labels=["machine", "syscall"])
        unsupported = CounterMetricFamily("tender_unsupported_syscalls", "System calls "
                                          "answered -ENOSYS, by name",
                                          labels=["machine", "syscall"])
        mig = CounterMetricFamily("tender_machine_migrations", "Migrations as the machine "
                                  "counts them: direction out (it was the source), in (the "
                                  "destination) or local, and result",
                                  labels=["machine", "direction", "result"])
        mig_bytes = CounterMetricFamily("tender_machine_migrated_bytes", "Bytes of processes "
                                        "that migrated away from the machine", labels=m)
        mig_phase = CounterMetricFamily("tender_machine_migration_phase_seconds", "Seconds "
                                        "spent in each migration phase of migrations the "
                                        "machine drove", labels=["machine", "phase"])
        poll_errors = CounterMetricFamily("tender_exporter_poll_errors", "Polls of the machine "
                                          "that failed", labels=m)
        states = [s.value for s in ProcessState]
        for name, entry in machines.items():
            s = entry.statistics
            up.add_metric([name], 1.0 if entry.up else 0.0)
            info.add_metric([name, s.engine, s.state], 1.0)
            draining.add_metric([name], 1.0 if s.cordoned else 0.0)
            uptime.add_metric([name], s.uptime)
            comps.add_metric([name], float(len(s.computations)))
            runnable.add_metric([name], float(s.runnable))
            load.add_metric([name], s.load)
            util.add_metric([name], s.utilisation)
            for state in [*states, *sorted(set(s.processes) - set(states))]:
                procs.add_metric([name, state], float(s.processes.get(state, 0)))
            exited.add_metric([name], float(s.exited))
            busy.add_metric([name], sum(c.busy_seconds for c in s.computations))
            quanta.add_metric([name], float(sum(c.quanta for c in s.computations)))
            for state, n in frames_by_state(s, entry.processes).items():
                frames.add_metric([name, state], float(n))
            size.add_metric([name], float(s.memory.frames_total * PAGE_SIZE))
            for ms in s.managers:
                res.add_metric([name, ms.resource, "live"], float(ms.live))
                res.add_metric([name, ms.resource, "held"], float(ms.held))
                res.add_metric([name, ms.resource, "pool"], float(ms.pool))
                created.add_metric([name, ms.resource], float(ms.created))
                deleted.add_metric([name, ms.resource], float(ms.deleted))
                reused.add_metric([name, ms.resource], float(ms.reused))
            for call, n in sorted(s.syscalls.items()):
                sys_calls.add_metric([name, call], float(n))
            for call, n in sorted(s.unsupported.items()):
                unsupported.add_metric([name, call], float(n))
            for key in [*MACHINE_MIGRATION_KEYS,
                        *sorted(set(s.migrations) - set(MACHINE_MIGRATION_KEYS))]:
                direction, _, result = key.partition("_")
                mig.add_metric([name, direction, result or "ok"],
                               float(s.migrations.get(key, 0)))
            mig_bytes.add_metric([name], float(s.migration_bytes))
            for phase in [*PHASES, *EXTRA_PHASES,
                          *sorted(set(s.migration_phase_seconds) - {*PHASES, *EXTRA_PHASES})]:
                mig_phase.add_metric([name, phase], s.migration_phase_seconds.get(phase, 0.0))
            poll_errors.add_metric([name], float(errors.get(name, 0)))
        yield from (up, info, draining, uptime, comps, runnable, load, util, procs, exited,
                    busy, quanta, frames, size, res, created, deleted, reused, sys_calls,
                    unsupported, mig, mig_bytes, mig_phase, poll_errors)

    @staticmethod
    def _migration_families(history: MigrationHistory) -> Iterator[Metric]:
        count = CounterMetricFamily("tender_migrations", "Migrations between machines, by "
                                    "source, destination, result and strategy",
                                    labels=["source", "destination", "result", "strategy"])
        for labels, n in sorted(history.count.items()):
            count.add_metric(list(labels), float(n))
        nbytes = CounterMetricFamily("tender_migration_bytes", "Bytes moved by successful "
                                     "migrations (touched pages, plus the program with "
                                     "strategy +all)",
                                     labels=["source", "destination", "strategy"])
        for labels3, n in sorted(history.bytes.items()):
            nbytes.add_metric(list(labels3), float(n))
        phases = HistogramMetricFamily("tender_migration_phase_duration_seconds", "Duration "
                                       "of each migration phase", labels=["phase", "strategy"])
        for (phase, strat), hist in sorted(history.phases.items()):
            phases.add_metric([phase, strat], hist.buckets(), hist.total)
        duration = HistogramMetricFamily("tender_migration_duration_seconds", "Duration of "
                                         "whole migrations, freeze to delete",
                                         labels=["strategy", "result"])
        for (strat, result), hist in sorted(history.durations.items()):
            duration.add_metric([strat, result], hist.buckets(), hist.total)
        yield from (count, nbytes, phases, duration)
        yield from TenderCollector._mode_families(history)

    @staticmethod
    def _mode_families(history: MigrationHistory) -> Iterator[Metric]:
        count = CounterMetricFamily("tender_migrations_by_mode", "Migrations between "
                                    "machines by mode (stop, precopy) and result",
                                    labels=["mode", "result"])
        for (mode, result), n in sorted(history.mode_count.items()):
            count.add_metric([mode, result], float(n))
        rounds = CounterMetricFamily("tender_migration_rounds", "Live rounds of successful "
                                     "migrations (copies made while the process ran)",
                                     labels=["mode"])
        for mode, n in sorted(history.mode_rounds.items()):
            rounds.add_metric([mode], float(n))
        nbytes = CounterMetricFamily("tender_migration_mode_bytes", "Bytes sent by successful "
                                     "migrations while the process ran (live) and while it "
                                     "was frozen", labels=["mode", "sent"])
        for (mode, sent), n in sorted(history.mode_bytes.items()):
            nbytes.add_metric([mode, sent], float(n))
        freeze = HistogramMetricFamily("tender_migration_freeze_seconds", "How long the "
                                       "process did not run in successful migrations, freeze "
                                       "to commit", labels=["mode"])
        for mode, hist in sorted(history.freezes.items()):
            freeze.add_metric([mode], hist.buckets(), hist.total)
        duration = HistogramMetricFamily("tender_migration_mode_duration_seconds", "Duration "
                                         "of whole successful migrations by mode (the "
                                         "freeze's total to set it against)", labels=["mode"])
        for mode, hist in sorted(history.mode_durations.items()):
            duration.add_metric([mode], hist.buckets(), hist.total)
        yield from (count, rounds, nbytes, freeze, duration)

    @staticmethod
    def _checkpoint_families(machines: Mapping[str, _Machine],
                             history: CheckpointHistory) -> Iterator[Metric]:
        count = CounterMetricFamily("tender_checkpoints", "Checkpoints taken by the machine, "
                                    "by result", labels=["machine", "result"])
        nbytes = CounterMetricFamily("tender_checkpoint_bytes", "Bytes the machine's "
                                     "checkpoints wrote (changed pages only when incremental)",
                                     labels=["machine"])
        restarts = CounterMetricFamily("tender_restarts", "Processes restarted on the "
                                       "machine from a checkpoint after theirs crashed",
                                       labels=["machine"])
        for name, m in machines.items():
            totals = m.statistics.checkpoints
            for result in ("ok", "failed"):
                count.add_metric([name, result], float(totals.get(result, 0)))
            nbytes.add_metric([name], float(totals.get("bytes", 0)))
            restarts.add_metric([name], float(totals.get("restarts", 0)))
        duration = HistogramMetricFamily("tender_checkpoint_duration_seconds", "Duration of "
                                         "whole checkpoints: freeze, copy, hash, write",
                                         labels=["kind"])
        for kind, hist in sorted(history.durations.items()):
            duration.add_metric([kind], hist.buckets(), hist.total)
        frozen = HistogramMetricFamily("tender_checkpoint_frozen_seconds", "How long a "
                                       "checkpoint kept its process frozen (the page copy)",
                                       labels=["kind"])
        for kind, hist in sorted(history.frozen.items()):
            frozen.add_metric([kind], hist.buckets(), hist.total)
        yield from (count, nbytes, restarts, duration, frozen)

    @staticmethod
    def _balancer_families(balancer: BalancerState | None, policy: str,
                           machines: Sequence[str]) -> Iterator[Metric]:
        p = ["policy"]
        info = GaugeMetricFamily("tender_balancer_info", "1 while a balancer reports; its "
                                 "policy as a label", labels=p)
        rounds = CounterMetricFamily("tender_balancer_rounds", "Rounds the balancer planned",
                                     labels=p)
        decisions = CounterMetricFamily("tender_balancer_decisions", "Moves the balancer "
                                        "decided on (drains and its policy's)", labels=p)
        moves = CounterMetricFamily("tender_balancer_migrations", "Migrations the balancer "
                                    "carried out, by reason", labels=["policy", "reason"])
        failures = CounterMetricFamily("tender_balancer_failures", "Moves or rounds of the "
                                       "balancer that failed", labels=p)
        drains = CounterMetricFamily("tender_balancer_drains", "Drains finished, by machine "
                                     "and result (ok: emptied before the deadline; "
                                     "checkpointed: what could not move in time was; "
                                     "cancelled: the node's drain was called off)",
                                     labels=["machine", "result"])
        signal_errors = CounterMetricFamily("tender_balancer_drain_signal_errors", "Times "
                                            "the cluster's draining nodes could not be read",
                                            labels=p)
        drain_seconds = CounterMetricFamily("tender_balancer_drain_seconds", "Seconds the "
                                            "finished drains took", labels=["machine"])
        drain_moved = CounterMetricFamily("tender_balancer_drain_moved_processes", "Processes "
                                          "moved off machines by finished drains",
                                          labels=["machine"])
        if balancer is not None:
            info.add_metric([policy], 1.0)
            rounds.add_metric([policy], float(balancer.rounds))
            decisions.add_metric([policy], float(balancer.decisions))
            reasons = Counter(reason_label(r.reason) for r in balancer.migrations)
            for reason in [*BALANCER_REASONS, *sorted(set(reasons) - set(BALANCER_REASONS))]:
                moves.add_metric([policy, reason], float(reasons.get(reason, 0)))
            failures.add_metric([policy], float(len(balancer.failures)))
            signal_errors.add_metric([policy], float(balancer.signal_errors))
            done: Counter[tuple[str, str]] = Counter()
            seconds: dict[str, float] = {}
            moved: Counter[str] = Counter()
            for d in balancer.drains:
                done[(d.machine, d.result)] += 1
                seconds[d.machine] = seconds.get(d.machine, 0.0) + d.seconds
                moved[d.machine] += len(d.moved)
            names = sorted({*machines, *seconds})
            for name in names:
                for result in DRAIN_RESULTS:
                    drains.add_metric([name, result], float(done.get((name, result), 0)))
                drain_seconds.add_metric([name], float(seconds.get(name, 0.0)))
                drain_moved.add_metric([name], float(moved.get(name, 0)))
        yield from (info, rounds, decisions, moves, failures, drains, drain_seconds,
                    drain_moved, signal_errors)

    @staticmethod
    def _exporter_families(updates: int, last: float, poll_seconds: float) -> Iterator[Metric]:
        yield CounterMetricFamily("tender_exporter_polls", "Polls of the cluster the exporter "
                                  "made", value=float(updates))
        yield GaugeMetricFamily("tender_exporter_last_poll_timestamp_seconds", "Unix time of "
                                "the exporter's last poll", value=last)
        yield GaugeMetricFamily("tender_exporter_poll_duration_seconds", "Seconds the "
                                "exporter's last poll took", value=poll_seconds)


class MetricsServer:
    """One HTTP endpoint serving a `TenderCollector` from its own registry."""

    def __init__(self, collector: TenderCollector | None = None) -> None:
        self.collector = collector or TenderCollector()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.host = DEFAULT_HOST
        self.port = 0

    def start(self, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
        """Serve /metrics on host:port (port 0: a free one); the port bound."""
        if self._server is not None:
            raise RuntimeError(f"already serving on {self.host}:{self.port}")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        self.host, self.port = host, int(server.server_port)
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def update(self, machines: Mapping[str, MachineStatistics], **kwargs: Any) -> None:
        self.collector.update(machines, **kwargs)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
