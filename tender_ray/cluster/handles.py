"""Typed references to the actors: a `MachineHandle` offers one method per remote operation of a
machine (an allow-list: nothing else of the machine can be called from outside), a
`BalancerHandle` the same for the balancer, and `Pending` a call under way. Ray's failures
become Tender's: a dead actor raises `MachineStoppedError`, one that does not answer in time
`NoReplyError` (a `MachineStoppedError` that may still be alive and may have acted), and a
Tender error raised inside an actor is raised again as itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.errors import MachineStoppedError, NoReplyError, TenderError
from tender_ray.kernel.snapshots import MachineStatistics, OutputChunk, PollResult, ProcessInfo
from tender_ray.migration.checkpoint import CheckpointRecord, RestartRecord
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord, Outcome
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import FileReply, FileRequest

T = TypeVar("T")

CALL_TIMEOUT = 30.0  # seconds for a control call between machines


def unwrap(exc: BaseException) -> BaseException:
    """The Tender error inside a Ray task error, so callers catch what the actor raised."""
    if isinstance(exc, RayTaskError):
        inner = getattr(exc, "cause", None)
        while isinstance(inner, RayTaskError):  # raised through another actor's call
            inner = getattr(inner, "cause", None)
        if isinstance(inner, TenderError):
            return inner
    return exc


def resolve(who: str, ref: Any, timeout: float | None = None) -> Any:
    """The result of the call `ref` to `who` (an actor, by the name errors give it)."""
    try:
        return ray.get(ref, timeout=timeout)
    except RayActorError as exc:
        raise MachineStoppedError(f"{who} is gone: {exc.__class__.__name__}") from exc
    except GetTimeoutError as exc:
        raise NoReplyError(f"{who} did not answer within {timeout} s") from exc
    except RayTaskError as exc:
        raise unwrap(exc) from None


class Pending(Generic[T]):
    """A call under way, started by one of a handle's `*_async` methods: start several, then
    collect them, and the calls overlap."""

    __slots__ = ("_ref", "_who")

    def __init__(self, who: str, ref: Any) -> None:
        self._who = who
        self._ref = ref  # a ray.ObjectRef

    def result(self, timeout: float | None = None) -> T:
        """The answer, once it has come (within `timeout` seconds)."""
        return cast(T, resolve(self._who, self._ref, timeout))


@dataclass(frozen=True)
class MachineHandle:
    """A reference to one machine actor; cheap to copy and to send to other actors."""

    name: str
    actor: Any  # ray.actor.ActorHandle of a `machine_actor.MachineActor`

    def _pending(self, ref: Any) -> Pending[Any]:
        return Pending(f"machine {self.name}", ref)

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        return resolve(f"machine {self.name}", ref, timeout)

    def same_actor(self, other: MachineHandle) -> bool:
        """Whether both reach the same actor (not merely a machine of the same name)."""
        return bool(self.actor._actor_id == other.actor._actor_id)

    # --- processes ------------------------------------------------------------------------

    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = (), *, files: FileViewSpec | None = None,
             stdin: str = "empty") -> int:
        """Start a program; `files` is its view of the host tree, `stdin` "empty", "none",
        "stream" (then `feed_stdin`) or a path in the view (see `Machine.exec`)."""
        return int(self._get(self.actor.exec.remote(image, name, list(argv), list(envp),
                                                    files, stdin)))

    def info(self, pid: int) -> ProcessInfo:
        return cast(ProcessInfo, self._get(self.actor.info.remote(pid)))

    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo:
        """Wait until the process has ended, or `timeout` passed (on the machine)."""
        return cast(ProcessInfo, self._get(self.actor.wait.remote(pid, timeout)))

    def feed_stdin(self, pid: int, data: bytes, eof: bool = False) -> int:
        """Data for a stdin="stream" process; the bytes now buffered there (at most 1 MiB)."""
        return int(self._get(self.actor.feed_stdin.remote(pid, data, eof)))

    def close_output(self, pid: int, fd: int) -> None:
        """The reader of the process's stream `fd` (1, 2) has gone: its next write there
        raises SIGPIPE and fails with EPIPE (see `Machine.close_output`)."""
        self._get(self.actor.close_output.remote(pid, fd))

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        return cast(tuple[bytes, bytes], self._get(self.actor.take_output.remote(pid)))

    def take_chunks(self, pid: int) -> tuple[OutputChunk, ...]:
        """What `take_output` takes, with where each piece starts in its stream."""
        return cast(tuple[OutputChunk, ...], self._get(self.actor.take_chunks.remote(pid)))

    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]:
        return cast(tuple[ProcessInfo, bytes, bytes], self._get(self.actor.reap.remote(pid)))

    def kill(self, pid: int, signal: int = 9) -> ProcessInfo:
        return cast(ProcessInfo, self._get(self.actor.kill.remote(pid, signal)))

    # --- looking at the machine -----------------------------------------------------------

    def list_processes(self, timeout: float | None = None) -> list[ProcessInfo]:
        return self.list_processes_async().result(timeout)

    def list_processes_async(self) -> Pending[list[ProcessInfo]]:
        return self._pending(self.actor.list_processes.remote())

    def statistics(self, timeout: float | None = None) -> MachineStatistics:
        return self.statistics_async().result(timeout)

    def statistics_async(self) -> Pending[MachineStatistics]:
        return self._pending(self.actor.statistics.remote())

    def load(self, timeout: float | None = None
             ) -> tuple[MachineStatistics, list[ProcessInfo]]:
        """The statistics and the processes, in one call (what the balancer reads)."""
        return self.load_async().result(timeout)

    def load_async(self) -> Pending[tuple[MachineStatistics, list[ProcessInfo]]]:
        return self._pending(self.actor.load.remote())

    def poll(self, reap: bool = True, timeout: float | None = None) -> PollResult:
        """Statistics, processes and the output written since the last poll, in one call."""
        return self.poll_async(reap).result(timeout)

    def poll_async(self, reap: bool = True) -> Pending[PollResult]:
        return self._pending(self.actor.poll.remote(reap))

    def recent_migrations(self, timeout: float | None = None) -> list[MigrationRecord]:
        return self.recent_migrations_async().result(timeout)

    def recent_migrations_async(self) -> Pending[list[MigrationRecord]]:
        return self._pending(self.actor.recent_migrations.remote())

    def node_id(self) -> str:
        """The Ray node the machine runs on."""
        return str(self._get(self.actor.node_id.remote()))

    def ping(self, timeout: float | None = None) -> str:
        """The machine's name, once it answers."""
        return str(self._get(self.actor.ping.remote(), timeout))

    # --- running the machine --------------------------------------------------------------

    def cordon(self, timeout: float | None = None) -> None:
        """Take no new processes (exec or migration in) until `uncordon`."""
        self._get(self.actor.cordon.remote(), timeout)

    def uncordon(self, timeout: float | None = None) -> None:
        self._get(self.actor.uncordon.remote(), timeout)

    def stop(self, timeout: float | None = None) -> None:
        """End every process and free the machine's memory (the actor stays up)."""
        self._get(self.actor.stop.remote(), timeout)

    def watch(self, balancer: BalancerHandle | None, timeout: float | None = None) -> None:
        """Have the machine tell `balancer` of every change to its processes (None: stop)."""
        self._get(self.actor.watch.remote(balancer), timeout)

    # --- migration ------------------------------------------------------------------------

    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> MigrationRecord:
        """Migrate process `pid` from this machine to `destination`; the migration record."""
        ref = self.actor.migrate.remote(pid, destination, options or MigrationOptions())
        return cast(MigrationRecord, self._get(ref, timeout))

    # The destination's side, called by the source machine's actor during a migration; each
    # call names the migration by id (see migration/protocol.py).
    def create_incoming(self, mid: str, source: str, pid: int, frames: int, reuse: bool,
                        timeout: float | None = None) -> float:
        ref = self.actor.create_incoming.remote(mid, source, pid, frames, reuse)
        return float(self._get(ref, timeout))

    def transform(self, mid: str, image: ProcessImage, options: MigrationOptions,
                  timeout: float | None = None) -> dict[str, float]:
        ref = self.actor.transform.remote(mid, image, options)
        return cast(dict[str, float], self._get(ref, timeout))

    def commit(self, mid: str, timeout: float | None = None) -> Outcome:
        return Outcome(self._get(self.actor.commit.remote(mid), timeout))

    def abort(self, mid: str, timeout: float | None = None) -> Outcome:
        return Outcome(self._get(self.actor.abort.remote(mid), timeout))

    def outcome(self, mid: str, timeout: float | None = None) -> Outcome:
        """What became of migration `mid` on this machine."""
        return Outcome(self._get(self.actor.outcome.remote(mid), timeout))

    def renew(self, mid: str, timeout: float | None = None) -> Outcome:
        """Keep migration `mid`'s lease on this machine (a heartbeat); its outcome so far."""
        return Outcome(self._get(self.actor.renew.remote(mid), timeout))

    def holds_text(self, program_digest: str, digest: str,
                   timeout: float | None = None) -> bool:
        """Whether this machine already maps text with `digest` (content-addressed text)."""
        return bool(self._get(self.actor.holds_text.remote(program_digest, digest), timeout))

    def serve_files_async(self, request: FileRequest) -> Pending[FileReply]:
        """A file call of a process that started here and moved on (this is its home)."""
        return self._pending(self.actor.serve_files.remote(request))

    def record_migration(self, pid: int, record: MigrationRecord,
                         timeout: float | None = None) -> None:
        """Give the destination the finished record of the migration that brought `pid`;
        returns once it is stored there."""
        self._get(self.actor.record_migration.remote(pid, record), timeout)

    # --- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, pid: int, timeout: float | None = None) -> CheckpointRecord:
        """Write process `pid`'s image where it survives this machine (the cluster's shared
        plate unless the machine's config names a directory); what it cost. The process is
        frozen only while its pages are copied and runs on here. ProcessStateError when a
        migration owns it (checkpoint it where it lands) or it has ended; CheckpointError
        when the store cannot be written (the previous checkpoint stays valid)."""
        return cast(CheckpointRecord, self._get(self.actor.checkpoint.remote(pid), timeout))

    def restart(self, pid: int, timeout: float | None = None, *, lost_machine: str = "",
                lost_at: float | None = None) -> RestartRecord:
        """Run process `pid` on this machine from its last checkpoint (its machine
        `lost_machine` was lost, found so at `lost_at`). CheckpointError when it has none, or
        it is corrupt; AlreadyRestartedError when another restart ran it already (where and
        when); nothing is made then."""
        return cast(RestartRecord, self._get(
            self.actor.restart.remote(pid, lost_machine, lost_at), timeout))

    def checkpointed(self, timeout: float | None = None) -> list[int]:
        """The pids that have a checkpoint in this machine's store."""
        return cast(list[int], self._get(self.actor.checkpointed.remote(), timeout))

    def worker_pid(self, timeout: float | None = None) -> int:
        """The host pid of the actor's worker process (what a crash drill kills)."""
        return int(self._get(self.actor.worker_pid.remote(), timeout))


@dataclass(frozen=True)
class BalancerHandle:
    """A reference to the balancer actor; machines hold one to tell it of changes."""

    actor: Any  # ray.actor.ActorHandle of a `balancer_actor.BalancerActor`

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        return resolve("the balancer", ref, timeout)

    def ready(self, timeout: float | None = None) -> None:
        self._get(self.actor.ready.remote(), timeout)

    def kick(self) -> None:
        """Processes changed: balance now rather than at the next interval. Does not wait."""
        self.actor.kick.remote()

    def add_machine(self, name: str, timeout: float | None = None) -> None:
        self._get(self.actor.add_machine.remote(name), timeout)

    def remove_machine(self, name: str, timeout: float | None = None) -> None:
        self._get(self.actor.remove_machine.remote(name), timeout)

    def drain_async(self, machine: str, deadline: float) -> Pending[DrainReport]:
        """Cordon `machine` and move everything off it within `deadline` seconds."""
        return Pending("the balancer", self.actor.drain.remote(machine, deadline))

    def state(self, timeout: float | None = None) -> BalancerState:
        return self.state_async().result(timeout)

    def state_async(self) -> Pending[BalancerState]:
        return Pending("the balancer", self.actor.state.remote())

    def stop(self, timeout: float | None = None) -> BalancerState:
        """End its rounds; its final state (the actor stays until killed)."""
        return cast(BalancerState, self._get(self.actor.stop.remote(), timeout))


@dataclass(frozen=True)
class ExporterHandle:
    """A reference to the metrics exporter actor."""

    actor: Any  # ray.actor.ActorHandle of an `exporter_actor.ExporterActor`

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        return resolve("the metrics exporter", ref, timeout)

    def start(self, port: int, host: str, timeout: float | None = None) -> int:
        """Serve on host:port (0: a free port) and start polling; the port bound."""
        return int(self._get(self.actor.start.remote(port, host), timeout))

    def port(self, timeout: float | None = None) -> int:
        return int(self._get(self.actor.port.remote(), timeout))

    def add_machine(self, machine: MachineHandle, timeout: float | None = None) -> None:
        self._get(self.actor.add_machine.remote(machine), timeout)

    def remove_machine(self, name: str, timeout: float | None = None) -> None:
        self._get(self.actor.remove_machine.remote(name), timeout)

    def set_balancer(self, balancer: BalancerHandle | None,
                     timeout: float | None = None) -> None:
        """Poll this balancer from now on (None: keep the last state it reported)."""
        self._get(self.actor.set_balancer.remote(balancer), timeout)

    def stop(self, timeout: float | None = None) -> None:
        self._get(self.actor.stop.remote(), timeout)


@dataclass(frozen=True)
class ProbeHandle:
    """A reference to a benchmark probe actor (one next to a machine, on its node)."""

    node: str  # the Ray node it runs on
    actor: Any  # ray.actor.ActorHandle of a `probe_actor.ProbeActor`

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        return resolve("a probe", ref, timeout)

    def ping(self) -> str:
        return str(self._get(self.actor.ping.remote()))

    def receive(self, block: Any) -> int:
        """Fetch the object `block` (an ObjectRef) and copy it into memory; its bytes."""
        return int(self._get(self.actor.receive_block.remote([block])))

    def transfer(self, destination: ProbeHandle, nbytes: int, repeats: int
                 ) -> dict[str, float]:
        """Median seconds of a raw object-store transfer of `nbytes` from this probe's node
        to `destination` (put, get and a copy into memory there) and of one actor round
        trip."""
        return cast(dict[str, float], self._get(
            self.actor.transfer.remote(destination, nbytes, repeats)))

    def actor_restore(self, node_id: str, nbytes: int, repeats: int) -> float:
        """Median seconds to save `nbytes` of state to the object store and restore it in a
        new actor started on `node_id`: what a Ray user would do instead of migrating."""
        return float(self._get(self.actor.actor_restore.remote(node_id, nbytes, repeats)))
