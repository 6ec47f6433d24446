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
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .balancer import Balancer, BalancerParams, MachineLoad, Move, snapshot
from .config import MachineConfig
from .errors import (
    MachineStoppedError,
    TenderError,
    UnknownMachineError,
    UnknownProcessError,
)
from .machine import Machine, MachineStatistics, PollResult, ProcessInfo
from .metrics import DEFAULT_HOST as METRICS_HOST
from .metrics import DEFAULT_PORT as METRICS_PORT
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
# An embedded Ray runs on the machines' own processors, and nobody reads its dashboard: it
# keeps neither Ray's own metrics nor its per-task event records (tender_ray exports its own).
EMBEDDED_RAY_CONFIG: dict[str, Any] = {"enable_metrics_collection": False,
                                       "task_events_report_interval_ms": 0}
IDLE_BACKOFF = 8  # a quiet balancer waits up to this many intervals between rounds
PARALLEL_MOVES = 4  # migrations of one round under way at once, at most
KICK_SETTLE = 0.05  # seconds a balancer told of a change waits for the changes after it
NODE_CHECK_INTERVAL = 1.0  # seconds between questions about Ray nodes being drained
BALANCER_NAME = "tender-balancer"
PID_STRIDE = 1_000_000  # machine k gives its processes pids k*stride+1000 ...


class _MachineActor:
    """The actor body: a Machine and nothing else. Only `cluster.py` knows this class."""

    def __init__(self, config: dict[str, Any], pid_base: int, shared_plate: str,
                 prefix: str = "") -> None:
        from . import logs  # configured once per actor process

        logs.configure()
        self._machine = Machine(MachineConfig(**config), pid_base=pid_base)
        self._shared = shared_plate
        self._prefix = prefix  # actor names are prefix + machine name
        self._peers: dict[str, _ActorPeer] = {}  # destination handles, looked up once

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._machine, method)(*args, **kwargs)

    def watch(self, balancer: Any) -> None:
        """Tell `balancer` (an actor handle; None: nobody) of every change to the processes
        here, without waiting (its `kick`)."""
        self._machine.on_change = None if balancer is None else balancer.kick.remote

    # Migration, the source side: this machine drives it.
    def migrate(self, pid: int, destination: str, options: MigrationOptions) -> dict[str, Any]:
        peer = self._peer(destination)
        try:
            record = run_migration(self._machine, pid, peer,
                                   _transport(options, self._shared), options)
        except MachineStoppedError:
            # The destination we knew died (the migration rolled back). A machine of the same
            # name may have been started since: look it up afresh and, if it is a new one,
            # try once more; otherwise the error stands.
            self._peers.pop(destination, None)
            try:
                fresh = self._peer(destination)
            except UnknownMachineError:
                raise MachineStoppedError(f"machine {destination} is gone") from None
            if fresh.handle.actor._actor_id == peer.handle.actor._actor_id:
                raise
            record = run_migration(self._machine, pid, fresh,
                                   _transport(options, self._shared), options)
            peer = fresh
        done = record.as_dict()
        peer.handle.actor.call.remote("record_migration", pid, done)  # no need to wait
        return done

    # Migration, the destination side.
    def transform(self, image: ProcessImage, options: MigrationOptions) -> dict[str, float]:
        return self._machine.transform(image, _transport(options, self._shared), options)

    def _peer(self, name: str) -> _ActorPeer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _ActorPeer(name, self._prefix)
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


@dataclass(frozen=True)
class DrainReport:
    """What a drain did: each process moved off, how long it took, and what was left."""

    machine: str
    seconds: float
    deadline: float
    moved: tuple[dict[str, Any], ...]  # migration records
    left: tuple[int, ...]  # pids still there at the deadline
    ok: bool


@dataclass(frozen=True)
class BalancerState:
    rounds: int
    decisions: int
    migrations: tuple[dict[str, Any], ...]
    failures: tuple[str, ...]
    drains: tuple[DrainReport, ...]
    draining: tuple[str, ...]
    policy: str = ""  # [metrics #5] the balancer's policy, a label of its metrics


class _BalancerActor:
    """Watches every machine and migrates processes as its `Balancer` plans (policy, drains,
    and machines on Ray nodes that Ray itself is draining)."""

    def __init__(self, machines: list[str], params: BalancerParams, options: MigrationOptions,
                 interval: float, prefix: str) -> None:
        from . import logs

        logs.configure()
        self._log = logs.get("balancer")
        self._prefix = prefix
        self._handles: dict[str, MachineHandle] = {}
        self._nodes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()  # ends the wait before the next round
        # Machines call this actor back on changes; a balancer made as a plain object (in
        # tests) has no handle and relies on its interval alone.
        try:
            self._self_handle: Any = ray.get_runtime_context().current_actor
        except RuntimeError:
            self._self_handle = None
        for name in machines:
            self.add_machine(name)
        self._balancer = Balancer(params)
        self._options = options
        self._interval = interval
        self._migrations: list[dict[str, Any]] = []
        self._in_flight: dict[str, int] = {}  # source machine -> migrations under way
        self._failures: list[str] = []
        self._drains: list[DrainReport] = []
        self._last_seen: tuple[Any, ...] = ()  # what the last round saw, to tell a change
        self._next_node_check = 0.0  # monotonic time Ray's DRAINING nodes are next asked for
        self._thread = threading.Thread(target=self._loop, daemon=True, name="balancer")
        self._thread.start()

    def ready(self) -> bool:
        return True

    def kick(self) -> None:
        """A machine's processes changed: balance now rather than at the next interval."""
        self._kick.set()

    def add_machine(self, name: str) -> None:
        actor = ray.get_actor(self._prefix + name, namespace=ray.get_runtime_context().namespace)
        handle = MachineHandle(name, actor)
        node = handle.node_id()
        if self._self_handle is not None:
            handle.resolve(actor.watch.remote(self._self_handle), CALL_TIMEOUT)
        with self._lock:
            self._handles[name] = handle
            self._nodes[name] = node
        self._kick.set()

    def remove_machine(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)
            self._nodes.pop(name, None)

    def _snapshots(self) -> list[MachineLoad]:
        with self._lock:
            handles = dict(self._handles)
        refs = {n: h.call_async("load") for n, h in handles.items()}
        now = time.time()
        loads = []
        for name, ref in refs.items():
            try:
                stats, procs = handles[name].resolve(ref, CALL_TIMEOUT)
            except TenderError:
                continue  # a dead machine is not a place to balance to or from
            loads.append(snapshot(stats, procs, now))
        return loads

    def _cordon_draining_nodes(self) -> None:
        """Ray marks a node DRAINING (preemption, `ray drain-node`); move its machines' work.
        Asked of Ray's control store at most every NODE_CHECK_INTERVAL: Ray announces a drain
        with a deadline of tens of seconds, and each question costs the control store."""
        now = time.monotonic()
        if now < self._next_node_check:
            return
        self._next_node_check = now + NODE_CHECK_INTERVAL
        try:
            draining = set(ray._private.state.state.get_draining_nodes())
        except Exception:  # an older Ray without the call: nothing to follow
            return
        with self._lock:
            hit = [n for n, node in self._nodes.items() if node in draining]
        for name in hit:
            with contextlib.suppress(TenderError):
                self._handles[name].call("cordon", timeout=CALL_TIMEOUT)

    def _loop(self) -> None:
        # A round that finds nothing changed and nothing to do doubles the wait before the
        # next (up to IDLE_BACKOFF intervals): a balanced cluster is asked less often, which
        # leaves its processors to the processes. A change, a move or a drain brings the
        # interval back.
        wait = self._interval
        while True:
            if self._kick.wait(wait):
                # Let a burst of changes (processes started together) settle into one round.
                self._stop.wait(KICK_SETTLE)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                busy = self._round()
            except Exception as exc:  # the loop must survive a bad round
                self._failures.append(f"round failed: {exc!r}")
                busy = True
            wait = self._interval if busy else min(wait * 2, self._interval * IDLE_BACKOFF)

    def _round(self) -> bool:
        """One look at every machine and the moves planned from it; whether anything had
        changed since the last round or was moved."""
        self._cordon_draining_nodes()
        machines = self._snapshots()
        # Running and runnable alternate with every quantum: both count as one state here.
        seen = tuple(sorted((m.name, m.cordoned, m.runnable,
                             tuple(sorted((p.pid, p.state.replace("running", "runnable"))
                                          for p in m.processes)))
                            for m in machines))
        changed, self._last_seen = seen != self._last_seen, seen
        moves = self._balancer.plan(machines, time.monotonic())
        if len(moves) > 1:
            # The moves of a round concern distinct processes: they go at once, so a
            # machine that was idle gets all its work in one migration time, not several.
            with ThreadPoolExecutor(min(len(moves), PARALLEL_MOVES),
                                    thread_name_prefix="move") as pool:
                list(pool.map(self._move, moves))
        else:
            for move in moves:
                self._move(move)
        return changed or bool(moves)

    def _move(self, move: Move) -> None:
        handle = self._handles.get(move.source)
        if handle is None:
            return
        with self._lock:
            self._in_flight[move.source] = self._in_flight.get(move.source, 0) + 1
        try:
            record = handle.migrate(move.pid, move.destination, self._options,
                                    timeout=self._options.timeout + CALL_TIMEOUT)
        except TenderError as exc:
            with self._lock:
                self._failures.append(f"{move}: {exc}")
            return
        finally:
            with self._lock:
                self._in_flight[move.source] -= 1
        record["reason"] = move.reason
        with self._lock:
            self._balancer.moved(move.pid, time.monotonic())
            self._balancer.observe(int(record["bytes"]), float(record["seconds"]))
            self._migrations.append(record)
        self._log.info("migrated", pid=move.pid, source=move.source,
                       destination=move.destination, reason=move.reason,
                       seconds=record["seconds"])

    def drain(self, machine: str, deadline: float) -> DrainReport:
        """Cordon `machine`, wait until the balancer has moved every process off it or the
        deadline passes; what moved and how long each took."""
        start = time.time()
        handle = self._handles[machine]
        handle.call("cordon", timeout=CALL_TIMEOUT)
        self._kick.set()  # the next round now, not after an idle wait
        left: list[int] = []
        while time.time() - start < deadline:
            try:
                procs = handle.list_processes()
            except TenderError:
                break
            left = [p.pid for p in procs if p.state != "zombie"]
            with self._lock:
                moving = self._in_flight.get(machine, 0)
            if not left and not moving:  # empty, and every move off it is recorded
                break
            time.sleep(min(self._interval, 0.05))
        with self._lock:
            moved = tuple(r for r in self._migrations
                          if r["from"] == machine and r["started_at"] >= start)
        report = DrainReport(machine, time.time() - start, deadline, moved, tuple(left),
                             not left)
        with self._lock:
            self._drains.append(report)
        return report

    def state(self) -> BalancerState:
        with self._lock:
            return BalancerState(self._balancer.rounds, self._balancer.decisions,
                                 tuple(self._migrations), tuple(self._failures),
                                 tuple(self._drains), (),
                                 self._balancer.params.policy.value)

    def stop(self) -> BalancerState:
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout=30)
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:  # machines outliving the balancer stop telling it
            with contextlib.suppress(TenderError):
                handle.resolve(handle.actor.watch.remote(None), 5.0)
        return self.state()


_RemoteBalancer: Any = ray.remote(_BalancerActor)


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

    def __init__(self, name: str, prefix: str) -> None:
        try:
            actor = ray.get_actor(prefix + name, namespace=ray.get_runtime_context().namespace)
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
                 shared_plate: str | None = None, prefix: str = "") -> None:
        self.prefix = prefix  # actor names: prefix + machine name (runs side by side)
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(namespace=namespace, include_dashboard=False,
                                          logging_level="ERROR", log_to_driver=False,
                                          configure_logging=True)
            if address in (None, "local"):
                # Loopback only: an embedded cluster never listens on other interfaces.
                kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 2,
                              object_store_memory=object_store_mib << 20,
                              _node_ip_address="127.0.0.1",
                              _system_config=EMBEDDED_RAY_CONFIG)
            else:
                kwargs.update(address=address)
            ray.init(**kwargs)
            self._owns_ray = True
        self._machines: dict[str, MachineHandle] = {}
        self._next_index = 0
        self._balancer: Any = None
        self._exporter: Any = None  # [metrics #5] the metrics exporter actor, when one runs
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
        options: dict[str, Any] = dict(num_cpus=0, max_concurrency=64,
                                       name=self.prefix + config.name, max_restarts=0)
        if detached:
            options["lifetime"] = "detached"
        if node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
        if resources:
            options["resources"] = resources
        actor = _RemoteMachine.options(**options).remote(
            config.model_dump(), (index + 1) * PID_STRIDE + 1000, self.shared_plate, self.prefix)
        handle = MachineHandle(config.name, actor)
        ray.get(actor.ping.remote())
        self._machines[config.name] = handle
        if self._balancer is not None:
            ray.get(self._balancer.add_machine.remote(config.name), timeout=CALL_TIMEOUT)
        self._tell_exporter("add_machine", handle)  # [metrics #5]
        return handle

    def stop_machine(self, name: str, *, graceful: bool = True) -> None:
        """Stop a machine. Graceful: its processes end and its memory is freed first; not
        graceful: the actor is killed at once (a crash, as far as its processes know)."""
        handle = self.machine(name)
        if graceful:
            with contextlib.suppress(MachineStoppedError):
                handle.call("stop", timeout=60)
        with contextlib.suppress(Exception):
            ray.kill(handle.actor, no_restart=True)
        del self._machines[name]
        if self._balancer is not None:
            with contextlib.suppress(Exception):
                ray.get(self._balancer.remove_machine.remote(name), timeout=CALL_TIMEOUT)
        self._tell_exporter("remove_machine", name)  # [metrics #5]

    # --- the balancer --------------------------------------------------------------------

    def start_balancer(self, params: BalancerParams, options: MigrationOptions,
                       interval: float, *, detached: bool = False) -> None:
        opts: dict[str, Any] = dict(num_cpus=0, max_concurrency=16)
        if detached:
            opts.update(lifetime="detached", name=self.prefix + BALANCER_NAME)
        self._balancer = _RemoteBalancer.options(**opts).remote(
            list(self._machines), params, options, interval, self.prefix)
        ray.get(self._balancer.ready.remote())
        self._tell_exporter("set_balancer", self._balancer)  # [metrics #5]

    def attach(self, machines: dict[str, int], *, balancer: bool = True) -> None:
        """Use machines (name -> index) that `tender-ray up` started as detached actors."""
        namespace = ray.get_runtime_context().namespace
        for name, index in machines.items():
            try:
                actor = ray.get_actor(self.prefix + name, namespace=namespace)
            except ValueError:
                raise UnknownMachineError(
                    f"machine {name!r} is not running on this Ray cluster (was it stopped? "
                    "run `tender-ray up` again)") from None
            self._machines[name] = MachineHandle(name, actor)
            self._next_index = max(self._next_index, index + 1)
        if balancer:
            with contextlib.suppress(ValueError):
                self._balancer = ray.get_actor(self.prefix + BALANCER_NAME, namespace=namespace)

    def forget(self) -> None:
        """Drop the handles without stopping anything (the actors are detached)."""
        self._machines.clear()
        self._balancer = None
        self._exporter = None  # [metrics #5]

    def _require_balancer(self) -> Any:
        if self._balancer is None:
            raise UnknownMachineError("no balancer runs on this cluster")
        return self._balancer

    def drain_async(self, machine: str, deadline: float) -> Any:
        """Cordon `machine` and have the balancer move everything off it; a ref to the
        DrainReport (resolve with `resolve_drain`)."""
        self.machine(machine)
        return self._require_balancer().drain.remote(machine, deadline)

    def resolve_drain(self, ref: Any, timeout: float | None = None) -> DrainReport:
        return ray.get(ref, timeout=timeout)

    def undrain(self, machine: str) -> None:
        self.machine(machine).call("uncordon")

    def balancer_state(self) -> BalancerState:
        return ray.get(self._require_balancer().state.remote(),
                       timeout=CALL_TIMEOUT)

    def stop_balancer(self) -> BalancerState | None:
        if self._balancer is None:
            return None
        state: BalancerState = ray.get(self._balancer.stop.remote(), timeout=CALL_TIMEOUT)
        self._tell_exporter("set_balancer", None)  # [metrics #5] it keeps the last state
        ray.kill(self._balancer, no_restart=True)
        self._balancer = None
        return state

    def _ask_all(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT
                 ) -> dict[str, Any]:
        """Call `method` on every machine at once; a machine that fails answers with its
        error instead of a result."""
        refs = {name: h.call_async(method, *args) for name, h in self._machines.items()}
        out: dict[str, Any] = {}
        for name, ref in refs.items():
            try:
                out[name] = self._machines[name].resolve(ref, timeout)
            except TenderError as exc:
                out[name] = exc
        return out

    def poll_all(self, timeout: float = CALL_TIMEOUT,
                 reap: bool = True) -> dict[str, PollResult | BaseException]:
        """Poll every machine at once (taking their output; reaping ended processes)."""
        return self._ask_all("poll", reap, timeout=timeout)

    def list_all(self, timeout: float = CALL_TIMEOUT
                 ) -> dict[str, list[ProcessInfo] | BaseException]:
        """Every machine's processes, asked at once (without taking their output)."""
        return self._ask_all("list_processes", timeout=timeout)

    def locate(self, pid: int) -> MachineHandle:
        """The machine process `pid` is on now."""
        for name, procs in self.list_all().items():
            if not isinstance(procs, BaseException) and any(p.pid == pid for p in procs):
                return self._machines[name]
        raise UnknownProcessError(f"no process {pid} on any machine "
                                  f"({', '.join(self._machines) or 'none'})")

    def node_cpus(self) -> dict[str, float]:
        """CPUs of every alive Ray node, by node id."""
        return {n["NodeID"]: float(n.get("Resources", {}).get("CPU", 0.0))
                for n in ray.nodes() if n.get("Alive")}

    # --- the metrics exporter [metrics #5] ----------------------------------------------

    def start_exporter(self, port: int = METRICS_PORT, host: str = METRICS_HOST, *,
                       detached: bool = False, interval: float = 1.0) -> int:
        """Serve every machine's metrics (and the balancer's) on one Prometheus endpoint,
        http://host:port/metrics (port 0: a free one), from an exporter actor on this
        driver's node; the port bound. If an exporter runs already, its port."""
        if self._exporter is not None:
            return int(ray.get(self._exporter.port.remote(), timeout=CALL_TIMEOUT))
        opts: dict[str, Any] = dict(
            num_cpus=0, max_concurrency=4, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False))
        if detached:
            opts.update(lifetime="detached", name=self.prefix + EXPORTER_NAME)
        actor = _RemoteExporter.options(**opts).remote(
            list(self._machines.values()), self._balancer, interval)
        try:
            bound = int(ray.get(actor.start.remote(port, host), timeout=CALL_TIMEOUT))
        except RayTaskError as exc:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            raise _unwrap(exc) from None
        self._exporter = actor
        return bound

    def attach_exporter(self) -> int | None:
        """Use the exporter a detached cluster (`tender-ray up`) started; its port, or None
        when none runs."""
        with contextlib.suppress(ValueError):
            self._exporter = ray.get_actor(self.prefix + EXPORTER_NAME,
                                           namespace=ray.get_runtime_context().namespace)
        if self._exporter is None:
            return None
        try:
            return int(ray.get(self._exporter.port.remote(), timeout=CALL_TIMEOUT))
        except Exception:  # not answering: `shutdown` still kills it
            return None

    def stop_exporter(self) -> None:
        exporter, self._exporter = self._exporter, None
        if exporter is None:
            return
        with contextlib.suppress(Exception):
            ray.get(exporter.stop.remote(), timeout=CALL_TIMEOUT)
        with contextlib.suppress(Exception):
            ray.kill(exporter, no_restart=True)

    def _tell_exporter(self, method: str, *args: Any) -> None:
        if self._exporter is not None:
            with contextlib.suppress(Exception):
                ray.get(getattr(self._exporter, method).remote(*args), timeout=CALL_TIMEOUT)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_exporter()  # [metrics #5] first: it polls the machines
        with contextlib.suppress(Exception):
            self.stop_balancer()
        for name in list(self._machines):
            self.stop_machine(name)
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        if self._shared_tmp is not None:
            self._shared_tmp.cleanup()
            self._shared_tmp = None


# =========================================================================================
# Metrics exporter (issue #5). One actor polls every machine (and the balancer) about once a
# second and serves all their metrics on one Prometheus endpoint: machine actors never start
# HTTP servers of their own (several on one port collide). See tender_ray/metrics.py.
# =========================================================================================

EXPORTER_NAME = "tender-exporter"  # actor name (after the cluster prefix) when detached
# The exporter polls the machines when scraped (unless its last poll is younger than
# EXPORT_FRESH), and on its own every EXPORT_INTERVAL, often enough that no migration record
# falls out of a machine's recent list between two polls. Unscraped, it costs the machines
# little of their processors.
EXPORT_INTERVAL = 5.0
EXPORT_FRESH = 1.0
EXPORT_TIMEOUT = 5.0  # seconds a machine may take to answer a poll


class _ExporterActor:
    """Polls statistics, processes and migration records of every machine, and the
    balancer's state, into a `MetricsServer` it serves on one port."""

    def __init__(self, machines: list[MachineHandle], balancer: Any,
                 interval: float = EXPORT_INTERVAL) -> None:
        from . import logs
        from .metrics import MetricsServer

        logs.configure()
        self._log = logs.get("exporter")
        self._lock = threading.Lock()
        self._handles = {h.name: h for h in machines}
        self._balancer = balancer
        self._last_balancer: BalancerState | None = None
        self._interval = interval
        self._server = MetricsServer()
        self._server.collector.refresh = self._refresh
        self._poll_lock = threading.Lock()  # one poll at a time (scrapes, the loop)
        self._polled_at = 0.0  # monotonic time of the last poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str) -> int:
        """Serve on host:port (0: a free port) and start polling; the port bound."""
        from .errors import UsageError

        try:
            bound = self._server.start(port, host)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {host}:{port}: "
                             f"{exc.strerror or exc}") from None
        self._poll()  # the first scrape already has every machine
        self._thread = threading.Thread(target=self._loop, daemon=True, name="exporter")
        self._thread.start()
        self._log.info("serving metrics", url=self._server.url)
        return bound

    def add_machine(self, handle: MachineHandle) -> None:
        with self._lock:
            self._handles[handle.name] = handle

    def remove_machine(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)

    def set_balancer(self, balancer: Any) -> None:
        with self._lock:
            self._balancer = balancer

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._poll()
            except Exception as exc:  # the exporter must outlive a bad poll
                self._log.warning("poll failed", error=repr(exc))

    def _refresh(self) -> None:
        """Before a scrape: poll, unless a poll is younger than EXPORT_FRESH."""
        self._poll(EXPORT_FRESH)

    def _poll(self, fresh: float = 0.0) -> None:
        with self._poll_lock:
            if time.monotonic() - self._polled_at < fresh:  # polled while we waited
                return
            self._polled_at = time.monotonic()
            self._poll_locked()

    def _poll_locked(self) -> None:
        start = time.perf_counter()
        with self._lock:
            handles, balancer = dict(self._handles), self._balancer
        refs = {name: (h.call_async("load"), h.call_async("recent_migrations"))
                for name, h in handles.items()}
        balancer_ref = balancer.state.remote() if balancer is not None else None
        stats: dict[str, MachineStatistics] = {}
        processes: dict[str, list[ProcessInfo]] = {}
        records: dict[str, list[dict[str, Any]]] = {}
        down: list[str] = []
        for name, (l_ref, r_ref) in refs.items():
            handle = handles[name]
            try:
                stats[name], processes[name] = handle.resolve(l_ref, EXPORT_TIMEOUT)
                records[name] = handle.resolve(r_ref, EXPORT_TIMEOUT)
            except TenderError:
                stats.pop(name, None)
                processes.pop(name, None)
                down.append(name)
        if balancer_ref is not None:
            with contextlib.suppress(Exception):  # a stopped balancer keeps its last state
                self._last_balancer = ray.get(balancer_ref, timeout=EXPORT_TIMEOUT)
        self._server.update(stats, processes=processes, migrations=records,
                            balancer=self._last_balancer, down=down,
                            poll_seconds=time.perf_counter() - start)

    def port(self) -> int:
        return self._server.port

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server.stop()


_RemoteExporter: Any = ray.remote(_ExporterActor)
