"""The machine actor: a kernel `Machine` inside a threaded Ray actor, so its computations keep
running while calls arrive. A thin shell: one method per remote operation, each forwarding to
the machine, plus the source's side of a migration, which reaches the destination's actor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import ray

from tender_ray import logs
from tender_ray.abi.linux import Errno
from tender_ray.cluster.handles import BalancerHandle, MachineHandle, resolve
from tender_ray.cluster.transport import serve_offer, transport_for
from tender_ray.config import MachineConfig
from tender_ray.errors import MachineError, MachineStoppedError, NoReplyError, UnknownMachineError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import MachineStatistics, OutputChunk, PollResult, ProcessInfo
from tender_ray.migration.checkpoint import CheckpointRecord, PlateCheckpointStore, RestartRecord
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.protocol import run_migration
from tender_ray.migration.record import MigrationRecord, Outcome
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import FileReply, FileRequest, HomeLink, PendingReply


class MachineActor:
    """The actor body: a Machine and nothing else; callers reach it through `MachineHandle`."""

    def __init__(self, config: MachineConfig, pid_base: int, shared_plate: str,
                 prefix: str = "") -> None:
        logs.configure()  # once per actor process
        self._machine = Machine(config, pid_base=pid_base)
        self._shared = shared_plate
        if shared_plate and not (config.checkpoint and config.checkpoint.dir):
            # Checkpoints go where every machine reads them, so another restarts them (set
            # before the periodic checkpointer's first round, `every` seconds from now).
            self._machine.checkpoint_store = PlateCheckpointStore(
                os.path.join(shared_plate, "checkpoints"))
        # Destinations, looked up once. Nothing private is a method here: Ray lets a caller
        # reach every method of an actor class, so this one has only its remote operations.
        self._peers = _Peers(prefix, config.migration_call_timeout_s)
        # How long a lost commit's outcome is asked for: past the destination's lease (what it
        # does not commit by then expires) and a few calls' time.
        self._settle = 2 * config.migration_lease_s + 3 * config.migration_call_timeout_s
        # Processes that arrive from machines elsewhere reach their homes' files through
        # the homes' actors; the node says where "elsewhere" begins.
        tree = self._machine.host_tree
        tree.node = str(ray.get_runtime_context().get_node_id())
        tree.link = lambda home: _RayHomeLink(home, prefix, config.migration_call_timeout_s)

    # Processes.
    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = (), files: FileViewSpec | None = None,
             stdin: str = "empty") -> int:
        return self._machine.exec(image, name, argv, envp, files=files, stdin=stdin)

    def info(self, pid: int) -> ProcessInfo:
        return self._machine.info(pid)

    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo:
        return self._machine.wait(pid, timeout)

    def feed_stdin(self, pid: int, data: bytes, eof: bool = False) -> int:
        return self._machine.feed_stdin(pid, data, eof)

    def close_output(self, pid: int, fd: int) -> None:
        self._machine.close_output(pid, fd)

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        return self._machine.take_output(pid)

    def take_chunks(self, pid: int) -> tuple[OutputChunk, ...]:
        return self._machine.take_chunks(pid)

    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]:
        return self._machine.reap(pid)

    def kill(self, pid: int, signal: int = 9) -> ProcessInfo:
        return self._machine.kill(pid, signal)

    # Looking at the machine.
    def list_processes(self) -> list[ProcessInfo]:
        return self._machine.list_processes()

    def statistics(self) -> MachineStatistics:
        return self._machine.statistics()

    def load(self) -> tuple[MachineStatistics, list[ProcessInfo]]:
        return self._machine.load()

    def poll(self, reap: bool = True) -> PollResult:
        return self._machine.poll(reap)

    def recent_migrations(self) -> list[MigrationRecord]:
        return self._machine.recent_migrations()

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def ping(self) -> str:
        return self._machine.name

    # Running the machine.
    def cordon(self) -> None:
        self._machine.cordon()

    def uncordon(self) -> None:
        self._machine.uncordon()

    def stop(self) -> None:
        self._machine.stop()

    def watch(self, balancer: BalancerHandle | None) -> None:
        """Tell `balancer` (None: nobody) of every change to the processes here, without
        waiting (its `kick`)."""
        self._machine.on_change = None if balancer is None else balancer.kick

    # Migration, the source side: this machine drives it.
    def migrate(self, pid: int, destination: str, options: MigrationOptions
                ) -> MigrationRecord:
        peer = self._peers.get(destination)
        try:
            record = run_migration(self._machine, pid, peer,
                                   transport_for(options, self._shared), options,
                                   self._settle)
        except MachineStoppedError as exc:
            if isinstance(exc, NoReplyError) or self._machine.handed_over.get(pid):
                raise  # it may be alive, or the process is not back: no second try
            # The destination we knew died (the migration rolled back). A machine of the same
            # name may have been started since: look it up afresh and, if it is a new one,
            # try once more; otherwise the error stands.
            self._peers.forget(destination)
            try:
                fresh = self._peers.get(destination)
            except UnknownMachineError:
                raise MachineStoppedError(f"machine {destination} is gone") from None
            if fresh.handle.same_actor(peer.handle):
                raise
            record = run_migration(self._machine, pid, fresh,
                                   transport_for(options, self._shared), options,
                                   self._settle)
            peer = fresh
        try:  # the destination keeps the record too; it is stored once this returns
            peer.handle.record_migration(pid, record, timeout=peer.timeout)
        except MachineError as exc:
            # The process moved all the same; only the destination's copy of the record is
            # missing (the process's own list there lacks this move).
            logs.get("migration").warning("record not stored at destination", pid=pid,
                                          destination=destination, error=str(exc))
        return record

    # Migration, the destination side (every call names its migration by id).
    def create_incoming(self, mid: str, source: str, pid: int, frames: int,
                        reuse: bool) -> float:
        return self._machine.create_incoming(mid, source, pid, frames, reuse)

    def transform(self, mid: str, image: ProcessImage, options: MigrationOptions
                  ) -> dict[str, float]:
        return self._machine.transform(image, transport_for(options, self._shared), options,
                                       mid)

    def commit(self, mid: str) -> Outcome:
        return self._machine.commit(mid)

    def abort(self, mid: str) -> Outcome:
        return self._machine.abort(mid)

    def outcome(self, mid: str) -> Outcome:
        return self._machine.outcome(mid)

    def renew(self, mid: str) -> Outcome:
        return self._machine.renew(mid)

    def holds_text(self, program_digest: str, digest: str) -> bool:
        return self._machine.holds_text(program_digest, digest)

    def precopy_pages(self, mid: str, vpns: npt.NDArray[np.int64], handles: tuple[Any, ...],
                      options: MigrationOptions) -> int:
        """One live round of a pre-copy arriving here: stage its pages."""
        return self._machine.precopy_pages(mid, vpns, handles,
                                           transport_for(options, self._shared))

    def record_migration(self, pid: int, record: MigrationRecord) -> None:
        self._machine.record_migration(pid, record)

    def read_offer(self, token: str, group: int) -> list[Any]:
        """Page blocks a migration driven here left for its destination to fetch."""
        return serve_offer(token, group)

    # Home files: calls of processes that started here and moved to another machine.
    def serve_files(self, request: FileRequest) -> FileReply:
        return self._machine.host_tree.home.serve(request)

    # Checkpoints.
    def checkpoint(self, pid: int) -> CheckpointRecord:
        return self._machine.checkpoint(pid)

    def restart(self, pid: int, lost_machine: str = "",
                lost_at: float | None = None) -> RestartRecord:
        return self._machine.restart(pid, lost_machine=lost_machine, lost_at=lost_at)

    def checkpointed(self) -> list[int]:
        return self._machine.checkpoint_store.pids()

    def worker_pid(self) -> int:
        return os.getpid()


RemoteMachine: Any = ray.remote(MachineActor)


class _ActorPeer:
    """The destination machine, reached from inside the source machine's actor (the
    migration protocol's `Peer`)."""

    def __init__(self, name: str, prefix: str, timeout: float) -> None:
        try:
            actor = ray.get_actor(prefix + name, namespace=ray.get_runtime_context().namespace)
        except ValueError:
            raise UnknownMachineError(f"unknown machine {name!r}: no such actor") from None
        self.name = name
        self.handle = MachineHandle(name, actor)
        self.timeout = timeout  # seconds for create, commit, abort (the source's config)

    def create(self, mid: str, source: str, pid: int, frames: int, reuse: bool) -> float:
        return self.handle.create_incoming(mid, source, pid, frames, reuse,
                                           timeout=self.timeout)

    def transform(self, mid: str, image: ProcessImage,
                  options: MigrationOptions) -> dict[str, float]:
        return self.handle.transform(mid, image, options, timeout=options.timeout)

    def commit(self, mid: str) -> Outcome:
        return self.handle.commit(mid, timeout=self.timeout)

    def abort(self, mid: str) -> Outcome:
        return self.handle.abort(mid, timeout=self.timeout)

    def outcome(self, mid: str) -> Outcome:
        return self.handle.outcome(mid, timeout=self.timeout)

    def renew(self, mid: str) -> Outcome:
        return self.handle.renew(mid, timeout=self.timeout)

    def holds_text(self, program_digest: str, digest: str) -> bool:
        return self.handle.holds_text(program_digest, digest, timeout=self.timeout)

    def precopy(self, mid: str, vpns: npt.NDArray[np.int64], handles: tuple[Any, ...],
                options: MigrationOptions) -> int:
        ref = self.handle.actor.precopy_pages.remote(mid, vpns, handles, options)
        return int(resolve(f"machine {self.name}", ref, options.timeout))


class _RayHomeLink(HomeLink):
    """A home machine's files, reached from another machine through the home's actor (looked
    up at the first call, so a machine may link to a home it has not met)."""

    def __init__(self, home: str, prefix: str, timeout: float) -> None:
        self.home = home
        self._prefix = prefix
        self._timeout = timeout
        self._handle: MachineHandle | None = None

    def _gone(self, why: str) -> FileReply:
        return FileReply(errno=int(Errno.EIO),
                         message=f"the home of this process's files, machine {self.home}, {why}")

    def submit(self, request: FileRequest) -> PendingReply:
        if self._handle is None:
            try:
                actor = ray.get_actor(self._prefix + self.home,
                                      namespace=ray.get_runtime_context().namespace)
            except ValueError:
                gone = self._gone("is not running")
                return PendingReply(lambda: gone)
            self._handle = MachineHandle(self.home, actor)
        pending = self._handle.serve_files_async(request)

        def wait() -> FileReply:
            try:
                return pending.result(self._timeout)
            except MachineError as exc:  # gone, or silent past the timeout
                return self._gone(f"cannot be reached: {exc}")
        return PendingReply(wait)


class _Peers:
    """The destinations a source machine has reached, by name (actor names: prefix + name)."""

    def __init__(self, prefix: str, timeout: float) -> None:
        self._prefix = prefix
        self._timeout = timeout
        self._peers: dict[str, _ActorPeer] = {}

    def get(self, name: str) -> _ActorPeer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _ActorPeer(name, self._prefix, self._timeout)
        return peer

    def forget(self, name: str) -> None:
        self._peers.pop(name, None)
