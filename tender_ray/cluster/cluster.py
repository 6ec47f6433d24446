"""The cluster: machine actors on a Ray cluster (an embedded local one, or an existing one),
where they are placed, the balancer and the metrics exporter next to them, and lookups across
all of them. What callers use to start, find and stop machines."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tender_ray.balancing.policies import BalancerParams
from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.cluster.balancer_actor import BALANCER_NAME, RemoteBalancer
from tender_ray.cluster.drain_watch import DrainWatchHandle
from tender_ray.cluster.embedded import (
    NAMESPACE,
    EmbeddedRay,
    _start_embedded_ray,
    embedded_kwargs,
    stop_embedded_ray,
)
from tender_ray.cluster.exporter_actor import EXPORTER_NAME, RemoteExporter
from tender_ray.cluster.handles import (
    CALL_TIMEOUT,
    BalancerHandle,
    ExporterHandle,
    MachineHandle,
    Pending,
    ProbeHandle,
)
from tender_ray.cluster.machine_actor import RemoteMachine
from tender_ray.cluster.probe_actor import RemoteProbe
from tender_ray.config import MachineConfig
from tender_ray.errors import (
    MachineStoppedError,
    TenderError,
    UnknownMachineError,
    UnknownProcessError,
)
from tender_ray.kernel.snapshots import PollResult, ProcessInfo
from tender_ray.metrics.collector import DEFAULT_HOST as METRICS_HOST
from tender_ray.metrics.collector import DEFAULT_PORT as METRICS_PORT
from tender_ray.migration.options import MigrationOptions

T = TypeVar("T")

PID_STRIDE = 1_000_000  # machine k gives its processes pids k*stride+1000 ...


class Cluster:
    """Machine actors on a Ray cluster: an embedded local one, or an existing one (`address`)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 object_store_mib: int = 256, namespace: str = NAMESPACE,
                 shared_plate: str | None = None, prefix: str = "",
                 watch_drains: bool = True, embedded: EmbeddedRay | None = None) -> None:
        """`embedded`: the embedded Ray the driver started already (`EmbeddedRay.start`), to
        own instead of starting one here."""
        self.prefix = prefix  # actor names: prefix + machine name (runs side by side)
        self._owns_ray = False
        # Follow Ray's node drains even with no balancer (a drain watcher actor, once the Ray
        # cluster has more than one node). An embedded Ray never has: no watcher there.
        self._watch_drains = watch_drains and not (
            not ray.is_initialized() and address in (None, "local"))
        if embedded is not None:
            self._owns_ray = True
            self._watch_drains = False
        elif not ray.is_initialized():
            if address in (None, "local"):
                _start_embedded_ray(embedded_kwargs(num_cpus, object_store_mib, namespace))
            else:
                kwargs: dict[str, Any] = dict(namespace=namespace, include_dashboard=False,
                                              logging_level="ERROR", log_to_driver=False,
                                              configure_logging=True, address=address)
                ray.init(**kwargs)
            self._owns_ray = True
        self._machines: dict[str, MachineHandle] = {}
        self._next_index = 0
        self._balancer: BalancerHandle | None = None
        # Follows Ray's node drains while no balancer runs (the balancer does it when it runs).
        self._drain_watch: DrainWatchHandle | None = None
        self._exporter: ExporterHandle | None = None  # the metrics exporter, when one runs
        self._probes: dict[str, ProbeHandle] = {}  # benchmark probes, by the machine they sit by
        # The plate every machine can reach, for the plate transfer path. On one host a
        # temporary directory; on a real cluster pass a shared (NFS) mount.
        self._shared_tmp = None if shared_plate else tempfile.TemporaryDirectory(
            prefix="tender-shared-plate-")
        self.shared_plate = shared_plate or (self._shared_tmp.name if self._shared_tmp else "")

    # --- machines ------------------------------------------------------------------------

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
        handle, ready = self._create(config, node_id, resources, detached)
        self._ready(handle, ready)
        self._register(handle, detached)
        return handle

    def add_machines(self, configs: list[MachineConfig], *, detached: bool = False
                     ) -> list[MachineHandle]:
        """Start machine actors side by side (each one's worker starts while the others'
        do), then wait until every one answers."""
        started = [self._create(c, None, None, detached) for c in configs]
        try:
            for handle, ready in started:
                self._ready(handle, ready)
        except BaseException:
            for handle, _ in started:  # none is the cluster's: none is left behind
                with contextlib.suppress(Exception):
                    ray.kill(handle.actor, no_restart=True)
            raise
        for handle, _ in started:
            self._register(handle, detached)
        return [h for h, _ in started]

    def _create(self, config: MachineConfig, node_id: str | None,
                resources: dict[str, float] | None, detached: bool) -> tuple[MachineHandle, Any]:
        """The actor of a new machine, created, and its first call (answered once it runs)."""
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
        actor = RemoteMachine.options(**options).remote(
            config, (index + 1) * PID_STRIDE + 1000, self.shared_plate, self.prefix)
        return MachineHandle(config.name, actor), actor.ping.remote()

    @staticmethod
    def _ready(handle: MachineHandle, ready: Any) -> None:
        try:
            ray.get(ready)
        except RayActorError as exc:
            # Its cause (the error its start raised) is the last line of Ray's long message.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise MachineStoppedError(f"machine {handle.name} could not start: "
                                      f"{lines[-1] if lines else type(exc).__name__}") from exc

    def _register(self, handle: MachineHandle, detached: bool) -> None:
        self._machines[handle.name] = handle
        if self._balancer is not None:
            self._balancer.add_machine(handle.name, timeout=CALL_TIMEOUT)
        elif self._drain_watch is not None:
            self._drain_watch.add_machine(handle.name)
        elif self._watch_drains and len(self.node_cpus()) > 1:
            # A Ray of one node has nowhere to evacuate a drained node to: no watcher there.
            self._drain_watch = DrainWatchHandle.start(list(self._machines), self.prefix,
                                                       detached=detached)
        if self._exporter is not None:
            with contextlib.suppress(Exception):
                self._exporter.add_machine(handle, timeout=CALL_TIMEOUT)

    def stop_machine(self, name: str, *, graceful: bool = True) -> None:
        """Stop a machine. Graceful: its processes end and its memory is freed first; not
        graceful: the actor is killed at once (a crash, as far as its processes know)."""
        handle = self.machine(name)
        if graceful:
            with contextlib.suppress(MachineStoppedError):
                handle.stop(timeout=60)
        with contextlib.suppress(Exception):
            ray.kill(handle.actor, no_restart=True)
        del self._machines[name]
        self._stop_probe(name)
        if self._balancer is not None:
            with contextlib.suppress(Exception):
                self._balancer.remove_machine(name, timeout=CALL_TIMEOUT)
        if self._drain_watch is not None:
            with contextlib.suppress(Exception):
                self._drain_watch.remove_machine(name)
        if self._exporter is not None:
            with contextlib.suppress(Exception):
                self._exporter.remove_machine(name, timeout=CALL_TIMEOUT)

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
                self._balancer = BalancerHandle(
                    ray.get_actor(self.prefix + BALANCER_NAME, namespace=namespace))
        if self._balancer is None:
            self._drain_watch = DrainWatchHandle.find(self.prefix)

    def forget(self) -> None:
        """Drop the handles without stopping anything (the actors are detached)."""
        self._machines.clear()
        self._balancer = None
        self._drain_watch = None
        self._exporter = None

    # --- asking every machine ------------------------------------------------------------

    def _ask_all(self, start: Callable[[MachineHandle], Pending[T]], timeout: float
                 ) -> dict[str, T | BaseException]:
        """Start a call on every machine at once, then collect the answers; a machine that
        fails answers with its error instead of a result."""
        pending = {name: start(h) for name, h in self._machines.items()}
        out: dict[str, T | BaseException] = {}
        for name, reply in pending.items():
            try:
                out[name] = reply.result(timeout)
            except TenderError as exc:
                out[name] = exc
        return out

    def poll_all(self, timeout: float = CALL_TIMEOUT,
                 reap: bool = True) -> dict[str, PollResult | BaseException]:
        """Poll every machine at once (taking their output; reaping ended processes)."""
        return self._ask_all(lambda h: h.poll_async(reap), timeout)

    def list_all(self, timeout: float = CALL_TIMEOUT
                 ) -> dict[str, list[ProcessInfo] | BaseException]:
        """Every machine's processes, asked at once (without taking their output)."""
        return self._ask_all(lambda h: h.list_processes_async(), timeout)

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

    # --- the balancer --------------------------------------------------------------------

    def start_balancer(self, params: BalancerParams, options: MigrationOptions,
                       interval: float, *, detached: bool = False,
                       restart_dead: bool = False) -> None:
        """Start the balancer actor. `restart_dead`: it also restarts a dead machine's
        processes from their checkpoints (for `up`, where no scenario or exec driver does)."""
        # On the driver's node: a balancer on a node being drained would go with it, and it
        # is the one that must evacuate that node.
        opts: dict[str, Any] = dict(num_cpus=0, max_concurrency=16,
                                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                                        ray.get_runtime_context().get_node_id(), soft=False))
        if detached:
            opts.update(lifetime="detached", name=self.prefix + BALANCER_NAME)
        self._balancer = BalancerHandle(RemoteBalancer.options(**opts).remote(
            list(self._machines), params, options, interval, self.prefix, restart_dead))
        self._balancer.ready()
        watch, self._drain_watch = self._drain_watch, None
        if watch is not None:  # the balancer follows the node drains from now on
            watch.stop()
        if self._exporter is not None:
            with contextlib.suppress(Exception):
                self._exporter.set_balancer(self._balancer, timeout=CALL_TIMEOUT)

    def _require_balancer(self) -> BalancerHandle:
        if self._balancer is None:
            raise UnknownMachineError("no balancer runs on this cluster")
        return self._balancer

    def drain_async(self, machine: str, deadline: float) -> Pending[DrainReport]:
        """Cordon `machine` and have the balancer move everything off it; the drain under way
        (its `result`, or `resolve_drain`, is the DrainReport)."""
        self.machine(machine)
        return self._require_balancer().drain_async(machine, deadline)

    def resolve_drain(self, pending: Pending[DrainReport], timeout: float | None = None
                      ) -> DrainReport:
        return pending.result(timeout)

    def undrain(self, machine: str) -> None:
        self.machine(machine).uncordon()

    def node_drains(self) -> tuple[DrainReport, ...]:
        """Every drain of a Ray node followed so far (by the balancer, or the drain watcher
        when no balancer runs): what moved, was checkpointed or was left, by machine."""
        if self._balancer is not None:
            return tuple(d for d in self.balancer_state().drains if d.node)
        if self._drain_watch is not None:
            return self._drain_watch.reports()
        return ()

    def balancer_state(self) -> BalancerState:
        return self._require_balancer().state(timeout=CALL_TIMEOUT)

    def stop_balancer(self) -> BalancerState | None:
        balancer = self._balancer
        if balancer is None:
            return None
        state = balancer.stop(timeout=CALL_TIMEOUT)
        if self._exporter is not None:  # it keeps the last state it read
            with contextlib.suppress(Exception):
                self._exporter.set_balancer(None, timeout=CALL_TIMEOUT)
        ray.kill(balancer.actor, no_restart=True)
        self._balancer = None
        return state

    # --- the metrics exporter ------------------------------------------------------------

    def start_exporter(self, port: int = METRICS_PORT, host: str = METRICS_HOST, *,
                       detached: bool = False, interval: float = 1.0) -> int:
        """Serve every machine's metrics (and the balancer's) on one Prometheus endpoint,
        http://host:port/metrics (port 0: a free one), from an exporter actor on this
        driver's node; the port bound. If an exporter runs already, its port."""
        if self._exporter is not None:
            return self._exporter.port(timeout=CALL_TIMEOUT)
        opts: dict[str, Any] = dict(
            num_cpus=0, max_concurrency=4, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False))
        if detached:
            opts.update(lifetime="detached", name=self.prefix + EXPORTER_NAME)
        exporter = ExporterHandle(RemoteExporter.options(**opts).remote(
            list(self._machines.values()), self._balancer, interval, self.prefix))
        try:
            bound = exporter.start(port, host, timeout=CALL_TIMEOUT)
        except Exception:
            with contextlib.suppress(Exception):
                ray.kill(exporter.actor, no_restart=True)
            raise
        self._exporter = exporter
        return bound

    def attach_exporter(self) -> int | None:
        """Use the exporter a detached cluster (`tender-ray up`) started; its port, or None
        when none runs."""
        with contextlib.suppress(ValueError):
            self._exporter = ExporterHandle(ray.get_actor(
                self.prefix + EXPORTER_NAME, namespace=ray.get_runtime_context().namespace))
        if self._exporter is None:
            return None
        try:
            return self._exporter.port(timeout=CALL_TIMEOUT)
        except Exception:  # not answering: `shutdown` still kills it
            return None

    def stop_exporter(self) -> None:
        exporter, self._exporter = self._exporter, None
        if exporter is None:
            return
        with contextlib.suppress(Exception):
            exporter.stop(timeout=CALL_TIMEOUT)
        with contextlib.suppress(Exception):
            ray.kill(exporter.actor, no_restart=True)

    # --- benchmark probes ----------------------------------------------------------------

    def probe(self, machine: str) -> ProbeHandle:
        """A probe actor on `machine`'s Ray node (started on first use, stopped with the
        machine): what the migration benchmark measures its baselines with."""
        probe = self._probes.get(machine)
        if probe is None:
            node = self.machine(machine).node_id()
            actor = RemoteProbe.options(
                num_cpus=0, max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            probe = self._probes[machine] = ProbeHandle(node, actor)
            probe.ping()
        return probe

    def _stop_probe(self, machine: str) -> None:
        probe = self._probes.pop(machine, None)
        if probe is not None:
            with contextlib.suppress(Exception):
                ray.kill(probe.actor, no_restart=True)

    def shutdown(self, *, quick: bool = False) -> None:
        """Stop everything started here (and the embedded Ray, if this started it). `quick`:
        with an embedded Ray of its own, skip stopping each actor gracefully: stopping Ray
        ends them all, with the processes of their machines (for a driver that has nothing
        more to take from them)."""
        if quick and self._owns_ray and not self._watch_drains:
            self.forget()
        with contextlib.suppress(Exception):
            self.stop_exporter()  # first: it polls the machines
        with contextlib.suppress(Exception):
            self.stop_balancer()
        watch, self._drain_watch = self._drain_watch, None
        if watch is not None:
            watch.stop()
        for name in list(self._probes):
            self._stop_probe(name)
        for name in list(self._machines):
            self.stop_machine(name)
        if self._owns_ray:
            stop_embedded_ray()
            self._owns_ray = False
        if self._shared_tmp is not None:
            self._shared_tmp.cleanup()
            self._shared_tmp = None
