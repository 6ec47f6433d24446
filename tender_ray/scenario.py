"""Running a load-balancing scenario (configs/*.yaml) and reporting what happened.

The driver starts the machines and the balancer actor, starts processes as they arrive, fires
the timed events (drain, undrain, add or stop a machine), follows every process's output by
polling the machines, and at the end writes `report.json` and `load.png` and compares each
process's output with its native run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .balancer import BalancerParams, Policy
from .cluster import Cluster, DrainReport
from .config import Scenario
from .errors import CordonedError, MachineError, OutOfMemoryError, TenderError, UsageError
from .machine import PollResult, ProcessInfo
from .migration import MigrationOptions, Resources, Transfer
from .resources.real_memory import PAGE_SIZE

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
        return b"".join(data for _, data in sorted(self.chunks[fd].items()))


@dataclass
class RunResult:
    report: dict[str, Any]
    report_dir: Path | None


def native_run(program: Path, args: list[str], timeout: float = 120.0) -> bytes | None:
    """The program's stdout when run natively, or None where that is impossible here."""
    if os.uname().machine != "x86_64" or os.uname().sysname != "Linux":
        return None
    try:
        done = subprocess.run([str(program), *args], stdin=subprocess.DEVNULL,
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
        # [metrics #5] Serve Prometheus metrics on 127.0.0.1:metrics_port (0: a free port;
        # None: no exporter); the port bound once set up.
        self.metrics_port = metrics_port
        self.policy = Policy(policy or scenario.balancer.policy)
        self.on_event = on_event or (lambda _msg: None)
        self.arrivals: list[Arrival] = []
        self.problems = list(problems)
        for i, w in enumerate(scenario.workloads):
            for k in range(w.count):
                at = w.at + (k / w.rate if w.rate else 0.0)
                name = f"{Path(w.program).name}#{len(self.arrivals)}"
                arrival = Arrival(len(self.arrivals), name, programs.get(i, Path(w.program)),
                                  list(w.args), at, w.machine, memory=w.memory_mib << 20)
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
        self.loads: list[dict[str, Any]] = []  # samples for load.png
        self.marks: list[dict[str, Any]] = []  # drains, stops, adds for load.png
        self.drain_refs: list[tuple[str, Any]] = []
        self.drains: list[DrainReport] = []
        self.lost: list[dict[str, Any]] = []
        self.events_failed: list[dict[str, Any]] = []
        # Memory promised to processes started since the last poll, by machine.
        self.promised_since_poll: dict[str, int] = {}
        self.last_poll: dict[str, PollResult] = {}
        self.queue: list[Arrival] = []
        self.start = 0.0
        self.start_wall = 0.0
        self.end = 0.0
        self.images: dict[Path, bytes] = {}

    # --- setting up ------------------------------------------------------------------------

    def setup(self) -> None:
        for config in self.scenario.machine_configs():
            self.cluster.add_machine(config)
        m = self.scenario.migration
        options = MigrationOptions(transfer=Transfer(m.transfer), reuse=m.reuse,
                                   resources=Resources(m.resources))
        b = self.scenario.balancer
        params = BalancerParams(policy=self.policy, margin=b.margin, max_moves=b.max_moves,
                                cooldown=b.cooldown)
        self.cluster.start_balancer(params, options, b.interval)
        if self.metrics_port is not None:  # [metrics #5]
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
        """Where to try starting a process: the named machine, else least loaded first."""
        if a.machine is not None:
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
        for name in self._choose_machine(a):
            room = self._room(name)
            if a.memory and (room is None or room < a.memory):
                reason = (f"needs {a.memory >> 20} MiB, machine {name} can promise "
                          f"{max(0, room or 0) >> 20} MiB")
                continue
            try:
                pid = self.cluster.machine(name).exec(image, a.name,
                                                      [a.program.name, *a.args])
            except (OutOfMemoryError, CordonedError, MachineError) as exc:
                reason = str(exc)
                continue
            except UsageError as exc:  # a bad program, or a machine that is gone
                a.failed = str(exc)
                if a in self.queue:
                    self.queue.remove(a)
                self.on_event(f"{a.name} not started: {exc}")
                return
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

    def _poll(self) -> None:
        results = self.cluster.poll_all()
        self.promised_since_poll.clear()  # the polls now list those processes
        sample: dict[str, Any] = {"t": self.elapsed, "machines": {}}
        for name, result in results.items():
            if isinstance(result, BaseException):
                continue
            self.last_poll[name] = result
            s = result.statistics
            sample["machines"][name] = {"load": s.load, "runnable": s.runnable,
                                        "frames_free": s.memory.frames_free,
                                        "cordoned": s.cordoned}
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
        self.loads.append(sample)

    def _fire(self, event: Any) -> None:
        at = self.elapsed
        self.marks.append({"t": at, "action": event.action, "machine": event.machine})
        self.on_event(f"t={at:.1f}s {event.action} {event.machine}")
        try:
            if event.action == "drain":
                ref = self.cluster.drain_async(event.machine, event.deadline)
                self.drain_refs.append((event.machine, ref))
            elif event.action == "undrain":
                self.cluster.undrain(event.machine)
            elif event.action == "add_machine":
                from .config import MachineConfig

                self.cluster.add_machine(MachineConfig(name=event.machine,
                                                       computations=event.computations,
                                                       memory_mib=event.memory_mib))
            elif event.action == "stop_machine":
                self._stop_machine(event.machine)
        except TenderError as exc:
            self.events_failed.append({"at": at, "action": event.action,
                                       "machine": event.machine, "error": str(exc)})
            self.on_event(f"{event.action} {event.machine} failed: {exc}")

    def _stop_machine(self, name: str) -> None:
        """Stop a machine without draining: whatever ran there is lost (reported by name)."""
        self.cluster.stop_machine(name, graceful=False)
        self.last_poll.pop(name, None)
        for pid, t in self.tracked.items():
            if t.where == name and not t.ended:
                t.lost = True
                self.lost.append({"pid": pid, "name": t.arrival.name, "machine": name})
                self.on_event(f"{t.arrival.name} lost with machine {name}")

    def _collect_drains(self) -> None:
        for machine, ref in list(self.drain_refs):
            try:
                report = self.cluster.resolve_drain(ref, timeout=0)
            except Exception:  # not finished yet
                continue
            self.drain_refs.remove((machine, ref))
            self.drains.append(report)
            self.marks.append({"t": self.elapsed, "action": "drained", "machine": machine})
            self.on_event(f"drain of {machine}: {len(report.moved)} moved in "
                          f"{report.seconds:.2f}s, {len(report.left)} left")

    # --- the end ---------------------------------------------------------------------------

    def finish(self, report_dir: Path | None) -> RunResult:
        self.end = self.elapsed
        state = self.cluster.stop_balancer()
        migrations = list(state.migrations) if state else []
        failures = list(state.failures) if state else []
        node_cpus = self.cluster.node_cpus()
        self.cluster.shutdown()
        report = self._report(migrations, failures, node_cpus)
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            plot_load(self.loads, self.marks, migrations, report_dir / "load.png",
                      title=f"{self.scenario.name} — policy {self.policy.value}",
                      t0=self.start_wall)
        return RunResult(report, report_dir)

    def _report(self, migrations: list[dict[str, Any]], failures: list[str],
                node_cpus: dict[str, float]) -> dict[str, Any]:
        natives: dict[tuple[Path, tuple[str, ...]], bytes | None] = {}
        processes: list[dict[str, Any]] = []
        total_cpu = 0.0
        first = min((a.started for a in self.arrivals if a.started is not None), default=0.0)
        last_end = first
        for pid, t in sorted(self.tracked.items()):
            a = t.arrival
            key = (a.program, tuple(a.args))
            if key not in natives:
                natives[key] = native_run(a.program, a.args)
            out = t.output(1)
            info = t.info
            machines = [a.placed_on]
            for m in (info.migrations if info else ()):
                if m.get("result", "ok") == "ok" and m.get("to") and m["to"] != machines[-1]:
                    machines.append(str(m["to"]))
            native = natives[key]
            cpu = info.cpu_seconds if info else 0.0
            total_cpu += cpu
            if info is not None and t.ended:
                last_end = max(last_end, (a.started or 0.0) + info.run_seconds)
            processes.append({
                "name": a.name, "pid": pid, "program": a.program.name, "args": a.args,
                "exit_status": info.exit_status if info and t.ended else None,
                "exit_reason": info.exit_reason if info and t.ended else
                ("lost" if t.lost else "unfinished"),
                "stdout_sha256": _sha(out),
                "native_stdout_sha256": _sha(native) if native is not None else None,
                "output_matches_native": native == out if native is not None else None,
                "machines": machines, "cpu_seconds": cpu,
                "run_seconds": info.run_seconds if info else None,
                "arrived_at": a.at, "started_at": a.started,
                "queued_seconds": (a.started or 0.0) - a.at if a.started is not None else None,
                "queued_reason": a.queued_reason,
            })
        computations = sum(c.computations for c in self.scenario.machine_configs())
        host_cores = int(sum(node_cpus.values())) or (os.cpu_count() or 1)
        parallelism = max(1, min(computations, host_cores))
        makespan = last_end - first
        ideal = total_cpu / parallelism
        moved_bytes = sum(int(m.get("bytes", 0)) for m in migrations)
        slowdowns = [p["run_seconds"] / p["cpu_seconds"] for p in processes
                     if p["run_seconds"] and p["cpu_seconds"]]
        return {
            "scenario": self.scenario.name, "policy": self.policy.value,
            "started_unix": self.start_wall,  # when t=0 was, to line up with metrics
            "makespan_seconds": makespan, "ideal_makespan_seconds": ideal,
            "makespan_over_ideal": makespan / ideal if ideal else None,
            "parallelism": {"computations": computations, "host_cores": host_cores,
                            "used": parallelism},
            "mean_slowdown": sum(slowdowns) / len(slowdowns) if slowdowns else None,
            "migrations": {"count": len(migrations), "bytes": moved_bytes,
                           "records": migrations, "failures": failures},
            "drains": [{"machine": d.machine, "seconds": d.seconds, "deadline": d.deadline,
                        "ok": d.ok, "left": list(d.left),
                        "moved": [{"pid": r["pid"], "to": r["to"], "seconds": r["seconds"]}
                                  for r in d.moved]} for d in self.drains],
            "lost": self.lost,
            "events_failed": self.events_failed,
            "problems": self.problems,
            "events_not_fired": [{"at": e.at, "action": e.action, "machine": e.machine}
                                 for e in self.events],
            "queued": [{"name": a.name, "reason": a.queued_reason,
                        "waited_seconds": (a.started - a.at) if a.started is not None else None}
                       for a in self.arrivals if a.queued_reason],
            "not_started": [{"name": a.name, "reason": a.failed}
                            for a in self.arrivals if a.failed],
            "processes": processes,
            "all_match_native": all(p["output_matches_native"] is not False
                                    for p in processes),
        }


def plot_load(loads: list[dict[str, Any]], marks: list[dict[str, Any]],
              migrations: list[dict[str, Any]], path: Path, title: str, t0: float) -> None:
    """load.png: runnable processes per computation of each machine over time, with
    migrations and drain events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    names = sorted({n for s in loads for n in s["machines"]})
    for name in names:
        pts = [(s["t"], s["machines"][name]["load"]) for s in loads if name in s["machines"]]
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
    start = loads[0]["t"] if loads else 0.0
    for i, m in enumerate(migrations):
        t = float(m.get("started_at", t0)) - t0
        ax.axvline(t, color="grey", alpha=0.25, lw=0.8,
                   label="migration" if i == 0 else None)
    for m in marks:
        ax.axvline(m["t"], color="red", ls="--", lw=1)
        ax.annotate(f"{m['action']} {m['machine']}", (m["t"], ax.get_ylim()[1] * 0.95),
                    rotation=90, fontsize=7, color="red", va="top")
    ax.set_xlim(left=start)
    ax.set_xlabel("seconds")
    ax.set_ylabel("runnable processes per computation")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

