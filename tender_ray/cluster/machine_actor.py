"""The machine actor: a kernel `Machine` inside a threaded Ray actor, so its computations keep
running while calls arrive. A thin shell: one method per remote operation, each forwarding to
the machine, plus the source's side of a migration, which reaches the destination's actor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from tender_ray import logs
from tender_ray.cluster.handles import CALL_TIMEOUT, BalancerHandle, MachineHandle
from tender_ray.cluster.transport import transport_for
from tender_ray.config import MachineConfig
from tender_ray.errors import MachineStoppedError, UnknownMachineError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import MachineStatistics, PollResult, ProcessInfo
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.protocol import run_migration
from tender_ray.migration.record import MigrationRecord


class MachineActor:
    """The actor body: a Machine and nothing else; callers reach it through `MachineHandle`."""

    def __init__(self, config: MachineConfig, pid_base: int, shared_plate: str,
                 prefix: str = "") -> None:
        logs.configure()  # once per actor process
        self._machine = Machine(config, pid_base=pid_base)
        self._shared = shared_plate
        # Destinations, looked up once. Nothing private is a method here: Ray lets a caller
        # reach every method of an actor class, so this one has only its remote operations.
        self._peers = _Peers(prefix)

    # Processes.
    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = ()) -> int:
        return self._machine.exec(image, name, argv, envp)

    def info(self, pid: int) -> ProcessInfo:
        return self._machine.info(pid)

    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo:
        return self._machine.wait(pid, timeout)

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        return self._machine.take_output(pid)

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
                                   transport_for(options, self._shared), options)
        except MachineStoppedError:
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
                                   transport_for(options, self._shared), options)
            peer = fresh
        peer.handle.record_migration(pid, record)  # no need to wait
        return record

    # Migration, the destination side.
    def create_incoming(self, pid: int, frames: int, reuse: bool) -> float:
        return self._machine.create_incoming(pid, frames, reuse)

    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]:
        return self._machine.transform(image, transport_for(options, self._shared), options)

    def commit(self, pid: int) -> None:
        self._machine.commit(pid)

    def abort(self, pid: int) -> None:
        self._machine.abort(pid)

    def record_migration(self, pid: int, record: MigrationRecord) -> None:
        self._machine.record_migration(pid, record)


RemoteMachine: Any = ray.remote(MachineActor)


class _ActorPeer:
    """The destination machine, reached from inside the source machine's actor (the
    migration protocol's `Peer`)."""

    def __init__(self, name: str, prefix: str) -> None:
        try:
            actor = ray.get_actor(prefix + name, namespace=ray.get_runtime_context().namespace)
        except ValueError:
            raise UnknownMachineError(f"unknown machine {name!r}: no such actor") from None
        self.name = name
        self.handle = MachineHandle(name, actor)

    def create(self, pid: int, frames: int, reuse: bool) -> float:
        return self.handle.create_incoming(pid, frames, reuse, timeout=CALL_TIMEOUT)

    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]:
        return self.handle.transform(image, options, timeout=options.timeout)

    def commit(self, pid: int) -> None:
        self.handle.commit(pid, timeout=CALL_TIMEOUT)

    def abort(self, pid: int) -> None:
        self.handle.abort(pid, timeout=CALL_TIMEOUT)


class _Peers:
    """The destinations a source machine has reached, by name (actor names: prefix + name)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._peers: dict[str, _ActorPeer] = {}

    def get(self, name: str) -> _ActorPeer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _ActorPeer(name, self._prefix)
        return peer

    def forget(self, name: str) -> None:
        self._peers.pop(name, None)
