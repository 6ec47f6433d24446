"""What a Ray user runs instead of tender_ray: each job a plain Ray task (`num_cpus=1`, retried
by Ray when its node dies) that runs the program as a subprocess, placed by Ray's scheduler.
Every attempt tells a ledger actor on the driver's node when it starts, how much CPU its
program has used so far (every `PROGRESS_INTERVAL`), and when it ends, so the CPU seconds of an
attempt killed with its node — the work a retry throws away — are known after the node has
gone."""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

PROGRESS_INTERVAL = 0.2  # seconds between an attempt's reports of its program's CPU time
MAX_RETRIES = 3  # Ray's own default for tasks, as a user would leave it or set it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Attempt:
    """One run of a job's task on a node: begun, its program's CPU so far, ended or not."""

    job: int
    node: str
    started: float  # wall seconds
    cpu_seconds: float = 0.0  # the last report (the final figure once ended)
    ended: float | None = None  # wall seconds; None: killed (or still running)

    @property
    def lost(self) -> bool:
        return self.ended is None


@dataclass(frozen=True)
class TaskResult:
    """What a job's successful attempt returned."""

    job: int
    exit_status: int
    stdout: bytes
    cpu_seconds: float
    node: str
    started: float  # wall seconds the attempt's program started
    ended: float


class Ledger:
    """The record of every attempt, on the driver's node (a killed node takes its attempts'
    own memory with it)."""

    def __init__(self) -> None:
        self._attempts: dict[str, Attempt] = {}

    def begin(self, attempt: str, job: int, node: str, started: float) -> None:
        self._attempts[attempt] = Attempt(job, node, started)

    def progress(self, attempt: str, cpu_seconds: float) -> None:
        if attempt in self._attempts:
            self._attempts[attempt].cpu_seconds = cpu_seconds

    def end(self, attempt: str, cpu_seconds: float, ended: float) -> None:
        if attempt in self._attempts:
            self._attempts[attempt].cpu_seconds = cpu_seconds
            self._attempts[attempt].ended = ended

    def attempts(self) -> list[Attempt]:
        return list(self._attempts.values())


RemoteLedger: Any = ray.remote(Ledger)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc/PID/stat (0 once gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def run_program(job: int, image: bytes, argv: list[str], ledger: Any) -> TaskResult:
    """The task's body: write the program to a temporary file, run it with `argv[1:]`, report
    its CPU time to `ledger` while it runs; its exit status, stdout and CPU seconds."""
    attempt = uuid.uuid4().hex
    node = ray.get_runtime_context().get_node_id()
    with tempfile.TemporaryDirectory(prefix="tender-vs-ray-") as tmp:
        path = os.path.join(tmp, os.path.basename(argv[0]))
        with open(path, "wb") as f:
            f.write(image)
        os.chmod(path, 0o755)
        with tempfile.TemporaryFile() as out:
            started = time.time()
            ray.get(ledger.begin.remote(attempt, job, node, started))
            proc = subprocess.Popen([path, *argv[1:]], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.DEVNULL)
            exited = os.pidfd_open(proc.pid)  # readable once the program exits
            try:
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    ledger.progress.remote(attempt, _cpu_of(proc.pid))
                    select.select([exited], [], [], PROGRESS_INTERVAL)
            finally:
                os.close(exited)
            ended = time.time()
            cpu = usage.ru_utime + usage.ru_stime
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            ray.get(ledger.end.remote(attempt, cpu, ended))
            out.seek(0)
            stdout = out.read()
    code = proc.returncode
    return TaskResult(job, code if code >= 0 else 128 - code, stdout, cpu, node, started, ended)


RemoteProgram: Any = ray.remote(run_program)


def _ready() -> bool:
    return True


RemoteReady: Any = ray.remote(_ready)


@dataclass
class RayTasks:
    """Jobs submitted as Ray tasks (each `num_cpus=1`, `max_retries`, and a sliver of
    `resource` so that only the benchmark's nodes take them), and their ledger."""

    resource: str
    max_retries: int = MAX_RETRIES
    refs: dict[Any, int] = field(default_factory=dict)  # object ref -> job
    ledger: Any = None

    def __post_init__(self) -> None:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                              soft=False)
        self.ledger = RemoteLedger.options(num_cpus=0, scheduling_strategy=here).remote()
        ray.get(self.ledger.attempts.remote())

    def warm(self, node_ids: set[str]) -> None:
        """Start a task worker on each node (a worker stays for the next task, as on a
        cluster that has run tasks before), so no job pays for a worker's start."""
        ray.get([RemoteReady.options(num_cpus=1, scheduling_strategy=
                                     NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                 for node in node_ids])

    def submit(self, job: int, image: bytes, argv: list[str]) -> None:
        ref = RemoteProgram.options(num_cpus=1, max_retries=self.max_retries,
                                    retry_exceptions=False,
                                    resources={self.resource: 0.001}).remote(
            job, image, argv, self.ledger)
        self.refs[ref] = job

    def done(self, timeout: float) -> list[TaskResult | tuple[int, BaseException]]:
        """Results of the tasks that ended within `timeout` seconds: a TaskResult, or (job,
        error) for one that failed for good."""
        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        out: list[TaskResult | tuple[int, BaseException]] = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                out.append(ray.get(ref))
            except Exception as exc:  # retries used up: the job failed, say which
                out.append((job, exc))
        return out

    def attempts(self) -> list[Attempt]:
        return list(ray.get(self.ledger.attempts.remote()))

    def close(self) -> None:
        for ref in list(self.refs):
            ray.cancel(ref, force=True)
        self.refs.clear()
        ray.kill(self.ledger, no_restart=True)
