"""The only module that calls Ray: machine actors, where they are placed, and handles to them.

A machine is a `Machine` inside a threaded Ray actor, so its computations keep running while
calls arrive. Callers hold `MachineHandle`s: the actor object stays private, only references
travel, and a call to a machine that died fails with `MachineStoppedError` instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .config import MachineConfig
from .errors import MachineStoppedError, TenderError, UnknownMachineError
from .machine import Machine, MachineStatistics, ProcessInfo
from .migration import (
    MigrationOptions,
    PlateTransport,
    ProcessImage,
    Transfer,
    Transport,
    run_migration,
)

NAMESPACE = "tender_ray"
CALL_TIMEOUT = 30.0  # seconds for a control call between machines
PID_STRIDE = 1_000_000  # machine k gives its processes pids k*stride+1000 ...


class _MachineActor:
    """The actor body: a Machine and nothing else. Only `cluster.py` knows this class."""

    def __init__(self, config: dict[str, Any], pid_base: int, shared_plate: str) -> None:
        from . import logs  # configured once per actor process

        logs.configure()
        self._machine = Machine(MachineConfig(**config), pid_base=pid_base)
        self._shared = shared_plate
        self._peers: dict[str, _ActorPeer] = {}  # destination handles, looked up once

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._machine, method)(*args, **kwargs)

    # Migration, the source side: this machine drives it.
    def migrate(self, pid: int, destination: str, options: MigrationOptions) -> dict[str, Any]:
        peer = self._peer(destination)
        record = run_migration(self._machine, pid, peer, _transport(options, self._shared),
                               options)
        done = record.as_dict()
        peer.handle.actor.call.remote("record_migration", pid, done)  # no need to wait
        return done

    # Migration, the destination side.
    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]:
        return self._machine.transform(image, _transport(options, self._shared), options)

    def _peer(self, name: str) -> _ActorPeer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _ActorPeer(name)
        return peer

    # Baselines for the migration benchmark, measured from inside this machine's actor.
    def probe_transfer(self, destination: str, nbytes: int, repeats: int) -> dict[str, float]:
        """Median seconds of a raw object-store transfer of `nbytes` to `destination` (put,
        get and a copy into memory there) and of one actor round trip."""
        peer = self._peer(destination)
        block = np.ones((max(1, nbytes // 4096), 4096), dtype=np.uint8)
        transfer, rtt = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            peer.handle.resolve(peer.handle.actor.receive_block.remote([ray.put(block)]))
            transfer.append(time.perf_counter() - t)
        for _ in range(3 * repeats):
            t = time.perf_counter()
            peer.handle.resolve(peer.handle.actor.ping.remote())
            rtt.append(time.perf_counter() - t)
        return {"transfer": statistics.median(transfer), "rtt": statistics.median(rtt)}

    def receive_block(self, refs: list[Any]) -> int:
        block = ray.get(refs[0])
        scratch = np.empty_like(block)
        scratch[...] = block  # the copy into real memory a migration makes too
        return int(scratch.nbytes)

    def probe_actor_restore(self, node_id: str, nbytes: int, repeats: int) -> float:
        """Median seconds of what a Ray user would do instead of migrating: save the state to
        the object store, start a new actor on the destination node, restore it there."""
        block = np.ones((max(1, nbytes // 4096), 4096), dtype=np.uint8)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            actor = _RemoteState.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote([ray.put(block)])
            ray.get(actor.ready.remote())
            times.append(time.perf_counter() - t)
            ray.kill(actor)
        return statistics.median(times)

    def inject_fault(self, phase: str) -> None:
        """Die (the whole actor process) when an incoming migration reaches `phase`."""
        self._machine.faults.phase = phase
        self._machine.faults.action = lambda: os._exit(17)

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def ping(self) -> str:
        return self._machine.name


_RemoteMachine: Any = ray.remote(_MachineActor)


class _StateActor:
    """A plain Ray actor holding restored state: the baseline a migration is compared with."""

    def __init__(self, refs: list[Any]) -> None:
        self.state = np.array(ray.get(refs[0]))  # restore: copy into the actor's own memory

    def ready(self) -> bool:
        return True


_RemoteState: Any = ray.remote(_StateActor)


class RayTransport:
    """DSM over the object store: a page block is one object; same-node reads are zero-copy."""

    def put(self, block: Any) -> Any:
        return ray.put(block)

    def get(self, handle: Any) -> Any:
        return ray.get(handle)

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass  # objects are freed when the last reference to them goes


def _transport(options: MigrationOptions, shared_plate: str) -> Transport:
    if options.transfer is Transfer.PLATE:
        return PlateTransport(Path(shared_plate) / "migrations")
    return RayTransport()


class _ActorPeer:
    """The destination machine, reached from inside the source machine's actor."""

    def __init__(self, name: str) -> None:
        try:
            actor = ray.get_actor(name, namespace=ray.get_runtime_context().namespace)
        except ValueError:
            raise UnknownMachineError(f"unknown machine {name!r}: no such actor") from None
        self.name = name
        self.handle = MachineHandle(name, actor)

    def create(self, pid: int, frames: int, reuse: bool) -> float:
        return float(self.handle.call("create_incoming", pid, frames, reuse,
                                      timeout=CALL_TIMEOUT))

    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]:
        ref = self.handle.actor.transform.remote(image, options)
        return self.handle.resolve(ref, timeout=options.timeout)

    def commit(self, pid: int) -> None:
        self.handle.call("commit", pid, timeout=CALL_TIMEOUT)

    def abort(self, pid: int) -> None:
        self.handle.call("abort", pid, timeout=CALL_TIMEOUT)


def _unwrap(exc: BaseException) -> BaseException:
    """The Tender error inside a Ray task error, so callers catch what the machine raised."""
    if isinstance(exc, RayTaskError):
        inner = getattr(exc, "cause", None)
        while isinstance(inner, RayTaskError):  # raised through another actor's call
            inner = getattr(inner, "cause", None)
        if isinstance(inner, TenderError):
            return inner
    return exc


@dataclass(frozen=True)
class MachineHandle:
    """A reference to one machine actor; cheap to copy and to send to other actors."""

    name: str
    actor: Any  # ray.actor.ActorHandle

    def call_async(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Start a call; an ObjectRef to `resolve` later."""
        return self.actor.call.remote(method, *args, **kwargs)

    def resolve(self, ref: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(ref, timeout=timeout)
        except RayActorError as exc:
            raise MachineStoppedError(f"machine {self.name} is gone: {exc.__class__.__name__}"
                                      ) from exc
        except GetTimeoutError as exc:
            raise MachineStoppedError(f"machine {self.name} did not answer within "
                                      f"{timeout} s") from exc
        except RayTaskError as exc:
            raise _unwrap(exc) from None

    def call(self, method: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        return self.resolve(self.call_async(method, *args, **kwargs), timeout)

    # The machine's API, typed.
    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = ()) -> int:
        return int(self.call("exec", image, name, list(argv), list(envp)))

    def info(self, pid: int) -> ProcessInfo:
        return self.call("info", pid)

    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo:
        return self.call("wait", pid, timeout)

    def take_output(self, pid: int) -> tuple[bytes, bytes]:
        return self.call("take_output", pid)

    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]:
        return self.call("reap", pid)

    def kill(self, pid: int, signal: int = 9) -> ProcessInfo:
        return self.call("kill", pid, signal)

    def list_processes(self) -> list[ProcessInfo]:
        return self.call("list_processes")

    def statistics(self, timeout: float | None = None) -> MachineStatistics:
        return self.call("statistics", timeout=timeout)

    def node_id(self) -> str:
        return str(self.resolve(self.actor.node_id.remote()))

    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """Migrate process `pid` from this machine to `destination`; the migration record."""
        ref = self.actor.migrate.remote(pid, destination, options or MigrationOptions())
        return self.resolve(ref, timeout)

    def inject_fault(self, phase: str) -> None:
        self.resolve(self.actor.inject_fault.remote(phase))

    def probe_transfer(self, destination: str, nbytes: int, repeats: int) -> dict[str, float]:
        return self.resolve(
            self.actor.probe_transfer.remote(destination, nbytes, repeats))

    def probe_actor_restore(self, node_id: str, nbytes: int, repeats: int) -> float:
        return float(self.resolve(self.actor.probe_actor_restore.remote(node_id, nbytes,
                                                                        repeats)))


class Cluster:
    """Machine actors on a Ray cluster: an embedded local one, or an existing one (`address`)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 object_store_mib: int = 256, namespace: str = NAMESPACE,
                 shared_plate: str | None = None) -> None:
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(namespace=namespace, include_dashboard=False,
                                          logging_level="ERROR", log_to_driver=False,
                                          configure_logging=True)
            if address in (None, "local"):
                kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 2,
                              object_store_memory=object_store_mib << 20)
            else:
                kwargs.update(address=address)
            ray.init(**kwargs)
            self._owns_ray = True
        self._machines: dict[str, MachineHandle] = {}
        self._next_index = 0
        # The plate every machine can reach, for the plate transfer path. On one host a
        # temporary directory; on a real cluster pass a shared (NFS) mount.
        self._shared_tmp = None if shared_plate else tempfile.TemporaryDirectory(
            prefix="tender-shared-plate-")
        self.shared_plate = shared_plate or (self._shared_tmp.name if self._shared_tmp else "")

    @property
    def machines(self) -> dict[str, MachineHandle]:
        return dict(self._machines)

    def machine(self, name: str) -> MachineHandle:
        try:
            return self._machines[name]
        except KeyError:
            known = ", ".join(sorted(self._machines)) or "none"
            raise UnknownMachineError(f"unknown machine {name!r} (machines: {known})") from None

    def add_machine(self, config: MachineConfig, *, node_id: str | None = None,
                    resources: dict[str, float] | None = None,
                    detached: bool = False) -> MachineHandle:
        """Start a machine actor, on a given Ray node or where a custom resource is."""
        if config.name in self._machines:
            raise UnknownMachineError(f"machine {config.name!r} exists already")
        index = self._next_index
        self._next_index += 1
        options: dict[str, Any] = dict(num_cpus=0, max_concurrency=64, name=config.name,
                                       max_restarts=0)
        if detached:
            options["lifetime"] = "detached"
        if node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
        if resources:
            options["resources"] = resources
        actor = _RemoteMachine.options(**options).remote(
            config.model_dump(), (index + 1) * PID_STRIDE + 1000, self.shared_plate)
        handle = MachineHandle(config.name, actor)
        ray.get(actor.ping.remote())
        self._machines[config.name] = handle
        return handle

    def stop_machine(self, name: str, *, graceful: bool = True) -> None:
        handle = self.machine(name)
        if graceful:
            with contextlib.suppress(MachineStoppedError):
                handle.call("stop", timeout=60)
        ray.kill(handle.actor, no_restart=True)
        del self._machines[name]

    def shutdown(self) -> None:
        for name in list(self._machines):
            self.stop_machine(name)
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        if self._shared_tmp is not None:
            self._shared_tmp.cleanup()
            self._shared_tmp = None


def wait_all(refs: Sequence[Any], timeout: float | None = None) -> list[Any]:
    """Resolve several calls at once."""
    return list(ray.get(list(refs), timeout=timeout))
