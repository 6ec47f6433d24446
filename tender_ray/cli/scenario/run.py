"""Running a load-balancing scenario (configs/*.yaml) against a cluster.

The driver starts the machines and the balancer actor, starts processes as they arrive, fires
the timed events (drain, undrain, add or stop a machine), follows every process's output by
polling the machines, and at the end compares each process's output with its native run and
writes the report (`report.py`) and its figures (`plot.py`). The figures are drawn from exact
times, not polls: arrivals and ends from the machines' own clocks (`created_at`,
`run_seconds`), migrations from their records, drains and losses as the driver saw them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live

from tender_ray.balancing.policies import Policy
from tender_ray.cli.live import scenario_view
from tender_ray.cli.scenario.model import EventAction, EventSpec, Scenario
from tender_ray.cli.scenario.plot import (
    DrainSpan,
    Mark,
    ProcessEvent,
    plot_load,
    plot_timeline,
)
from tender_ray.cli.scenario.report import (
    CheckpointAges,
    DrainSummary,
    FailedEvent,
    LostProcess,
    MigrationSummary,
    NotStarted,
    Parallelism,
    PendingEvent,
    ProcessReport,
    QueuedProcess,
    Report,
    RestartedProcess,
    node_drain_summaries,
)
from tender_ray.cluster import Cluster, DrainReport, Pending
from tender_ray.cluster.supervisor import crash, recover
from tender_ray.errors import (
    CordonedError,
    MachineError,
    MachineStoppedError,
    NoReplyError,
    OutOfMemoryError,
    TenderError,
    UsageError,
)
from tender_ray.kernel.snapshots import PollResult, ProcessInfo
from tender_ray.migration.checkpoint import CheckpointRecord
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.real_memory import PAGE_SIZE

TICK = 0.5  # seconds between polls of the machines, at most (sooner when an arrival or
# an event is due); the machines share their processors with the driver
QUIET_TICK = 1.0  # the same when nobody watches a live view


@dataclass
class Arrival:
    index: int
    name: str
    program: Path
    args: list[str]
    at: float
    machine: str | None
    started: float | None = None
    pid: int | None = None
    placed_on: str = ""
    queued_reason: str = ""  # why it waited to start (memory, cordons), if it did
    memory: int = 0  # bytes it declared it will touch
    failed: str = ""  # why it could not be started at all
    files: FileViewSpec | None = None  # its view of the host tree
    stdin: str | None = None  # the file that is its standard input


@dataclass
class Tracked:
    """What the driver knows of one process."""

    arrival: Arrival
    where: str
    chunks: dict[int, dict[int, bytes]] = field(default_factory=lambda: {1: {}, 2: {}})
    info: ProcessInfo | None = None
    ended: bool = False
    lost: bool = False

    def output(self, fd: int) -> bytes:
        """The stream from its chunks by offset. Chunks overlap after a restart from a
        checkpoint (its machine sends again what the checkpoint had not yet handed over):
        each byte is kept once."""
        out = bytearray()
        for offset, data in sorted(self.chunks[fd].items()):
            if offset + len(data) > len(out):
                out += data[max(0, len(out) - offset):]
        return bytes(out)


@dataclass(frozen=True)
class RunResult:
    report: Report
    report_dir: Path | None  # where report.json, load.png and timeline.png are, if written


def native_run(program: Path, args: list[str], timeout: float = 120.0, *,
               stdin: str | None = None, cwd: str | None = None) -> bytes | None:
    """The program's stdout when run natively (from `cwd`, reading the file `stdin`), or None
    where that is impossible here."""
    if os.uname().machine != "x86_64" or os.uname().sysname != "Linux":
        return None
    try:
        with open(stdin if stdin is not None else os.devnull, "rb") as source:
            done = subprocess.run([str(program), *args], stdin=source, cwd=cwd,
                                  capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ScenarioRun:
    """One run of a scenario on a cluster, step by step (the CLI draws it live)."""

    def __init__(self, scenario: Scenario, programs: dict[int, Path], *,
                 address: str | None = None, policy: str | None = None,
                 problems: tuple[str, ...] = (),
                 on_event: Callable[[str], None] | None = None,
                 metrics_port: int | None = None) -> None:
        self.scenario = scenario
        # Serve Prometheus metrics on 127.0.0.1:metrics_port (0: a free port; None: no
        # exporter); the port bound once set up.
        self.metrics_port = metrics_port
        self.policy = Policy(policy) if policy else scenario.balancer.policy
        self.on_event = on_event or (lambda _msg: None)
        self.arrivals: list[Arrival] = []
        self.problems = list(problems)
        for i, w in enumerate(scenario.workloads):
            for k in range(w.count):
                at = w.at + (k / w.rate if w.rate else 0.0)
                name = f"{Path(w.program).name}#{len(self.arrivals)}"
                arrival = Arrival(len(self.arrivals), name, programs.get(i, Path(w.program)),
                                  list(w.args), at, w.machine, memory=w.memory_mib << 20,
                                  files=FileViewSpec(cwd=w.cwd or os.getcwd(),
                                                     writable=tuple(w.writable)),
                                  stdin=w.stdin)
                if i not in programs:  # a problem the file check reported: never started
                    arrival.failed = next((msg for msg in problems
                                           if f"workloads[{i}]." in msg), "cannot start")
                self.arrivals.append(arrival)
        self.arrivals.sort(key=lambda a: (a.at, a.index))
        self.events = sorted(scenario.events, key=lambda e: e.at)
        ray_opts = scenario.ray
        self.cluster = Cluster(address or ray_opts.address, num_cpus=ray_opts.num_cpus,
                               object_store_mib=ray_opts.object_store_mib,
                               prefix=f"{uuid.uuid4().hex[:6]}-")
        self.tracked: dict[int, Tracked] = {}
        self.marks: list[Mark] = []  # drains, stops, adds for load.png
        self.losses: list[ProcessEvent] = []  # processes lost with a stopped machine
        self.drain_spans: list[DrainSpan] = []  # for load.png
        # (machine, its drain, when it was asked for: seconds after the start)
        self.drain_refs: list[tuple[str, Pending[DrainReport], float]] = []
        self.drains: list[DrainSummary] = []
        self.lost: list[LostProcess] = []
        self.restarts: list[RestartedProcess] = []  # processes of crashed machines
        # Checkpoints as the polls saw them, each once: for the report's checkpoint ages.
        self.checkpoints: dict[tuple[int, str, int, float], CheckpointRecord] = {}
        self.events_failed: list[FailedEvent] = []
        # Memory promised to processes started since the last poll, by machine.
        self.promised_since_poll: dict[str, int] = {}
        self.last_poll: dict[str, PollResult] = {}
        self.queue: list[Arrival] = []
        self.start = 0.0
        self.start_wall = 0.0
        self.images: dict[Path, bytes] = {}
        # Machines that left without a drain, by name: how ("crashed at t=3.0s"). An arrival
        # named for one is placed on another instead.
        self.gone: dict[str, str] = {}

    # --- setting up ------------------------------------------------------------------------

    def setup(self) -> None:
        for config in self.scenario.machine_configs():
            self.cluster.add_machine(config)
        b = self.scenario.balancer
        self.cluster.start_balancer(b.params(self.policy), self.scenario.migration.options(),
                                    b.interval)
        if self.metrics_port is not None:
            try:
                self.metrics_port = self.cluster.start_exporter(self.metrics_port)
                self.on_event(f"metrics: http://127.0.0.1:{self.metrics_port}/metrics")
            except TenderError as exc:  # a busy port must not stop the run
                self.metrics_port = None
                self.on_event(f"metrics not served: {exc}")
        self.start = time.monotonic()
        self.start_wall = time.time()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    # --- one step --------------------------------------------------------------------------

    def step(self) -> bool:
        """Poll, fire due events, start due arrivals; False when everything has ended."""
        self._poll()
        now = self.elapsed
        while self.events and self.events[0].at <= now:
            self._fire(self.events.pop(0))
        due = [a for a in self.arrivals if a.started is None and not a.failed and a.at <= now
               and a not in self.queue]
        for a in [*self.queue, *due]:
            self._start(a)
        self._collect_drains()
        pending = any(a.started is None and not a.failed for a in self.arrivals)
        live = any(not t.ended and not t.lost for t in self.tracked.values())
        # Events still ahead once every process has ended are not waited for; the report
        # lists them as not fired.
        return pending or live or bool(self.drain_refs)

    def wait_next(self, tick: float = TICK) -> None:
        """Sleep until the next step is due: a tick, or sooner an arrival or an event."""
        now = self.elapsed
        due = [a.at for a in self.arrivals if a.started is None and not a.failed]
        due += [e.at for e in self.events]
        ahead = [t - now for t in due if t > now]
        time.sleep(max(0.0, min([tick, *ahead])))

    def _choose_machine(self, a: Arrival) -> list[str]:
        """Where to try starting a process: the named machine, else (or once the named one
        has crashed or been stopped) the least loaded first."""
        if a.machine is not None and a.machine not in self.gone:
            return [a.machine]
        candidates = []
        for name, poll in self.last_poll.items():
            s = poll.statistics
            if s.cordoned or name not in self.cluster.machines:
                continue
            candidates.append((s.load, -s.memory.frames_free, name))
        names = [n for *_, n in sorted(candidates)]
        return names or [n for n in self.cluster.machines]

    def _room(self, name: str) -> int | None:
        """Bytes machine `name` can still promise: free memory less what processes started
        there (or moved there) declared and have not touched yet. None: not polled yet."""
        poll = self.last_poll.get(name)
        if poll is None:
            return None
        promised = 0
        for info in poll.processes:
            t = self.tracked.get(info.pid)
            if t is not None:
                promised += max(0, t.arrival.memory - info.resident_pages * PAGE_SIZE)
        promised += self.promised_since_poll.get(name, 0)
        return poll.statistics.memory.frames_free * PAGE_SIZE - promised

    def _start(self, a: Arrival) -> None:
        image = self.images.get(a.program)
        if image is None:
            image = self.images[a.program] = a.program.read_bytes()
        reason = ""
        if a.machine in self.gone and not self._replace(a):
            return
        for name in self._choose_machine(a):
            room = self._room(name)
            if a.memory and (room is None or room < a.memory):
                reason = (f"needs {a.memory >> 20} MiB, machine {name} can promise "
                          f"{max(0, room or 0) >> 20} MiB")
                continue
            try:
                pid = self.cluster.machine(name).exec(image, a.name,
                                                      [a.program.name, *a.args],
                                                      files=a.files, stdin=a.stdin or "empty")
            except (OutOfMemoryError, CordonedError, MachineError) as exc:
                reason = str(exc)
                continue
            except UsageError as exc:  # a bad program, or a machine that is gone
                a.failed = str(exc)
                if a in self.queue:
                    self.queue.remove(a)
                self.on_event(f"{a.name} not started: {exc}")
                return
            if a.machine in self.gone:
                self.on_event(f"{a.name} started on {name}: its machine {a.machine} "
                              f"{self.gone[a.machine]}, before it arrived")
            a.started, a.pid, a.placed_on = self.elapsed, pid, name
            self.tracked[pid] = Tracked(a, name)
            self.promised_since_poll[name] = self.promised_since_poll.get(name, 0) + a.memory
            if a in self.queue:
                self.queue.remove(a)
            return
        if a not in self.queue:
            a.queued_reason = reason
            self.queue.append(a)
            self.on_event(f"{a.name} queued: {reason}")

    def _replace(self, a: Arrival) -> bool:
        """An arrival whose named machine is gone: whether another can take it. With no
        machine left it waits for one an event adds, or, with none ahead, is lost (by name,
        in the report's processes not started)."""
        if self.cluster.machines or a.machine is None:
            return True
        why = f"its machine {a.machine} {self.gone[a.machine]} and no machine is alive"
        added = [e for e in self.events if e.action is EventAction.ADD_MACHINE]
        if added:
            reason = f"{why}: waits for the machine added at t={added[0].at:.1f}s"
            if a not in self.queue:
                a.queued_reason = reason
                self.queue.append(a)
                self.on_event(f"{a.name} queued: {reason}")
            return False
        a.failed = f"lost: {why} to start it on"
        if a in self.queue:
            self.queue.remove(a)
        self.on_event(f"{a.name} lost: {why}")
        return False

    def _poll(self) -> None:
        results = self.cluster.poll_all()
        self.promised_since_poll.clear()  # the polls now list those processes
        for name, result in results.items():
            if isinstance(result, MachineStoppedError) and not isinstance(result, NoReplyError):
                self._machine_died(name)  # Ray says its actor is dead (not merely slow)
                continue
            if isinstance(result, BaseException):
                continue
            self.last_poll[name] = result
            for c in result.statistics.checkpoint_records:
                self.checkpoints[(c.pid, c.machine, c.seq, c.taken_at)] = c
            for info in result.processes:
                t = self.tracked.get(info.pid)
                if t is not None:
                    t.where, t.info = name, info
            for chunk in result.output:
                t = self.tracked.get(chunk.pid)
                if t is not None:
                    t.chunks[chunk.fd][chunk.offset] = chunk.data
            for info in result.ended:
                t = self.tracked.get(info.pid)
                if t is not None:
                    t.info, t.ended, t.where = info, True, name

    def _fire(self, event: EventSpec) -> None:
        at = self.elapsed
        action = event.action.value
        self.marks.append(Mark(at, action, event.machine))
        self.on_event(f"t={at:.1f}s {action} {event.machine}")
        try:
            if event.action is EventAction.DRAIN:
                ref = self.cluster.drain_async(event.machine, event.deadline)
                self.drain_refs.append((event.machine, ref, at))
            elif event.action is EventAction.UNDRAIN:
                self.cluster.undrain(event.machine)
            elif event.action is EventAction.ADD_MACHINE:
                config = event.machine_config()
                if self.scenario.checkpoint is not None:
                    config = config.model_copy(update={"checkpoint": self.scenario.checkpoint})
                self.cluster.add_machine(config)
                self.gone.pop(config.name, None)  # back: arrivals named for it go there
            elif event.action is EventAction.STOP_MACHINE:
                self._stop_machine(event.machine)
            elif event.action is EventAction.CRASH_MACHINE:
                crash(self.cluster.machine(event.machine))
                self._machine_died(event.machine)
        except TenderError as exc:
            self.events_failed.append(FailedEvent(at, event.action, event.machine, str(exc)))
            self.on_event(f"{action} {event.machine} failed: {exc}")

    def _stop_machine(self, name: str) -> None:
        """Stop a machine without draining: whatever ran there is lost (reported by name)."""
        self.cluster.stop_machine(name, graceful=False)
        at = self.elapsed
        self.gone[name] = f"was stopped at t={at:.1f}s"
        self.last_poll.pop(name, None)
        for pid, t in self.tracked.items():
            if t.where == name and not t.ended:
                t.lost = True
                self.losses.append(ProcessEvent(at, "lost", pid, name))
                self.lost.append(LostProcess(pid, t.arrival.name, name))
                self.on_event(f"{t.arrival.name} lost with machine {name}")

    def _machine_died(self, name: str) -> None:
        """A machine died (crashed, or Ray reports its actor dead): what ran there restarts
        from its last checkpoint on another machine; the rest is lost, with the reason."""
        at = self.elapsed
        self.gone.setdefault(name, f"crashed at t={at:.1f}s")
        self.last_poll.pop(name, None)
        pids = [pid for pid, t in self.tracked.items()
                if t.where == name and not t.ended and not t.lost]
        recovery = recover(self.cluster, name, pids)
        for e in recovery.elsewhere:  # another restarter was first: its copy is the one
            t = self.tracked[e.pid]
            t.where = e.machine
            self.losses.append(ProcessEvent(at, "move", e.pid, name, e.machine))
            self.on_event(f"{t.arrival.name} restarted on {e.machine} by another restarter")
        for r in recovery.restarted:
            t = self.tracked[r.pid]
            t.where = r.machine
            self.restarts.append(RestartedProcess(r.pid, t.arrival.name, name, r.machine,
                                                  r.seq, r.age_seconds, at))
            self.losses.append(ProcessEvent(at, "move", r.pid, name, r.machine))
            self.on_event(f"{t.arrival.name} restarted on {r.machine} from checkpoint "
                          f"{r.seq} ({r.age_seconds:.1f} s old)")
        for x in recovery.lost:
            t = self.tracked[x.pid]
            t.lost = True
            self.losses.append(ProcessEvent(at, "lost", x.pid, name))
            self.lost.append(LostProcess(x.pid, t.arrival.name, name, x.reason))
            self.on_event(f"{t.arrival.name} lost with machine {name}: {x.reason}")

    def _collect_drains(self) -> None:
        for machine, ref, asked in list(self.drain_refs):
            try:
                report = self.cluster.resolve_drain(ref, timeout=0)
            except Exception:  # not finished yet
                continue
            self.drain_refs.remove((machine, ref, asked))
            # The span starts when the drain was asked for and lasts as long as the balancer
            # says it took, not until this poll happened to see it finished.
            self.drain_spans.append(DrainSpan(machine, asked, report.seconds,
                                              len(report.moved), report.ok))
            self.drains.append(DrainSummary(report.machine, report.seconds, report.deadline,
                                            report.ok, tuple(report.left),
                                            tuple(report.moved), report.why))
            self.marks.append(Mark(self.elapsed, "drained", machine))
            self.on_event(f"drain of {machine}: {len(report.moved)} moved in "
                          f"{report.seconds:.2f}s, {len(report.left)} left")

    # --- the end ---------------------------------------------------------------------------

    def finish(self, report_dir: Path | None) -> RunResult:
        """Stop the balancer and the cluster; the report, also written with its plot to
        `report_dir` unless that is None."""
        state = self.cluster.stop_balancer()
        migrations = list(state.migrations) if state else []
        failures = list(state.failures) if state else []
        node_cpus = self.cluster.node_cpus()
        node_drains: tuple[DrainReport, ...] = state.drains if state else ()
        if state is None:  # Ray's node drains, followed by the drain watcher
            with contextlib.suppress(TenderError):
                node_drains = self.cluster.node_drains()
        self.cluster.shutdown()
        report = self.build_report(migrations, failures, node_cpus)
        report = dataclasses.replace(report, node_drains=node_drain_summaries(node_drains))
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            report.write(report_dir / "report.json")
            title = f"{self.scenario.name} — policy {self.policy.value}"
            machines = [c.name for c in self.scenario.machine_configs()]
            plot_load(self.process_events(migrations), migrations, self.drain_spans,
                      self.marks, report_dir / "load.png", title=title, t0=self.start_wall,
                      machines=machines)
            plot_timeline(migrations, report_dir / "timeline.png", title=title,
                          t0=self.start_wall, names=report.process_names())
        return RunResult(report, report_dir)

    def process_events(self, migrations: list[MigrationRecord]) -> list[ProcessEvent]:
        """Where every process was, as exact events (seconds after the start): it arrived
        when its machine created it, moved when its migration ended, ended when its machine
        says it did (creation plus run time), or was lost when its machine was stopped."""
        events = list(self.losses)
        for pid, t in self.tracked.items():
            a, info = t.arrival, t.info
            # The machines' clock is this host's wall clock (`created_at` is time.time());
            # the driver's own time of the exec call stands in before the first poll.
            born = info.created_at - self.start_wall if info else a.started or 0.0
            events.append(ProcessEvent(born, "arrive", pid, a.placed_on))
            if t.ended and info is not None:
                events.append(ProcessEvent(born + info.run_seconds, "end", pid, t.where))
        events += [ProcessEvent(r.started_at - self.start_wall + r.seconds, "move", r.pid,
                                r.source, r.destination) for r in migrations if r.ok]
        return events

    def _checkpoint_ages(self) -> CheckpointAges | None:
        spec = self.scenario.checkpoint
        if spec is None:
            return None
        names = {pid: t.arrival.name for pid, t in self.tracked.items()}
        return CheckpointAges.of(self.checkpoints.values(), self.restarts, names, spec.every)

    def build_report(self, migrations: list[MigrationRecord], failures: list[str],
                     node_cpus: dict[str, float]) -> Report:
        """The report of the run so far: every process against its native run, with the
        balancer's `migrations` and `failures`; `node_cpus` (by Ray node) bound how many
        processes could run at once."""
        natives: dict[tuple[Path, tuple[str, ...], str | None, str | None],
                      bytes | None] = {}
        processes: list[ProcessReport] = []
        total_cpu = 0.0
        first = min((a.started for a in self.arrivals if a.started is not None), default=0.0)
        last_end = first
        for pid, t in sorted(self.tracked.items()):
            a = t.arrival
            cwd = a.files.cwd if a.files is not None else None
            key = (a.program, tuple(a.args), a.stdin, cwd)
            if key not in natives:
                natives[key] = native_run(a.program, a.args, stdin=a.stdin, cwd=cwd)
            out = t.output(1)
            info = t.info
            machines = [a.placed_on]
            for m in (info.migrations if info else ()):
                if m.ok and m.destination != machines[-1]:
                    machines.append(m.destination)
            native = natives[key]
            cpu = info.cpu_seconds if info else 0.0
            total_cpu += cpu
            if info is not None and t.ended:
                last_end = max(last_end, (a.started or 0.0) + info.run_seconds)
            processes.append(ProcessReport(
                name=a.name, pid=pid, program=a.program.name, args=tuple(a.args),
                exit_status=info.exit_status if info and t.ended else None,
                exit_reason=info.exit_reason if info and t.ended else
                ("lost" if t.lost else "unfinished"),
                stdout_sha256=_sha(out),
                native_stdout_sha256=_sha(native) if native is not None else None,
                output_matches_native=native == out if native is not None else None,
                machines=tuple(machines), cpu_seconds=cpu,
                run_seconds=info.run_seconds if info else None,
                arrived_at=a.at, started_at=a.started,
                queued_seconds=(a.started or 0.0) - a.at if a.started is not None else None,
                queued_reason=a.queued_reason))
        computations = sum(c.computations for c in self.scenario.machine_configs())
        host_cores = int(sum(node_cpus.values())) or (os.cpu_count() or 1)
        parallelism = max(1, min(computations, host_cores))
        makespan = last_end - first
        ideal = total_cpu / parallelism
        slowdowns = [p.run_seconds / p.cpu_seconds for p in processes
                     if p.run_seconds and p.cpu_seconds]
        return Report(
            scenario=self.scenario.name, policy=self.policy, started_unix=self.start_wall,
            makespan_seconds=makespan, ideal_makespan_seconds=ideal,
            makespan_over_ideal=makespan / ideal if ideal else None,
            parallelism=Parallelism(computations, host_cores, parallelism),
            mean_slowdown=sum(slowdowns) / len(slowdowns) if slowdowns else None,
            migrations=MigrationSummary(len(migrations), sum(m.bytes for m in migrations),
                                        tuple(migrations), tuple(failures)),
            drains=tuple(self.drains), lost=tuple(self.lost), restarts=tuple(self.restarts),
            checkpoint_ages=self._checkpoint_ages(),
            events_failed=tuple(self.events_failed), problems=tuple(self.problems),
            events_not_fired=tuple(PendingEvent(e.at, e.action, e.machine)
                                   for e in self.events),
            queued=tuple(QueuedProcess(a.name, a.queued_reason,
                                       (a.started - a.at) if a.started is not None else None)
                         for a in self.arrivals if a.queued_reason),
            not_started=tuple(NotStarted(a.name, a.failed)
                              for a in self.arrivals if a.failed),
            processes=tuple(processes))


def run_live(scenario: Scenario, programs: dict[int, Path], *, address: str | None,
             policy: str | None, report_dir: Path | None, live: bool,
             problems: tuple[str, ...] = (),
             metrics_port: int | None = None) -> RunResult:
    """Run a scenario to its end, drawing it live (or logging lines); its result.
    `metrics_port`: serve Prometheus metrics there while it runs (None: not at all)."""
    console = Console()
    log: deque[str] = deque(maxlen=8)

    def note(msg: str) -> None:
        log.append(msg)
        if not live:
            console.print(f"[dim]{msg}[/dim]")

    for problem in problems:
        console.print(f"[yellow]warning:[/yellow] {problem}")
    run = ScenarioRun(scenario, programs, address=address, policy=policy, on_event=note,
                      problems=problems,
                      metrics_port=metrics_port)
    note(f"scenario {scenario.name}: {len(run.arrivals)} processes, "
         f"{len(scenario.machine_configs())} machines, policy {run.policy.value}")
    run.setup()
    deadline = time.monotonic() + scenario.timeout
    try:
        if live:
            # Drawn once per step, not by a refresh thread: the view changes only then.
            with Live(scenario_view(run, log), console=console, auto_refresh=False,
                      transient=False) as view:
                while run.step():
                    view.update(scenario_view(run, log), refresh=True)
                    if time.monotonic() > deadline:
                        note(f"timeout after {scenario.timeout:.0f}s")
                        break
                    run.wait_next()
                view.update(scenario_view(run, log), refresh=True)
        else:
            while run.step():
                if time.monotonic() > deadline:
                    note(f"timeout after {scenario.timeout:.0f}s")
                    break
                run.wait_next(QUIET_TICK)
    except BaseException:
        run.cluster.shutdown()
        raise
    return run.finish(report_dir)
