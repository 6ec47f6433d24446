"""Ray's drain signal: the one place that reads which Ray nodes are DRAINING and their
deadlines (`RayDrainSignal`, the view Ray Serve's controller reads: the GCS client's
`get_draining_nodes`, kept to nodes still alive, 0 meaning no deadline) and that asks Ray to
drain a node (`request_drain`, what the hidden `ray drain-node` calls); and the drain watcher
actor, which follows those drains (`balancing.node_drain.NodeDrains`) for a cluster with no
balancer running. With a balancer, the balancer actor follows them in its rounds instead: one
watcher per cluster either way. The metrics exporter reads the watcher's drains (`status`) as
the balancer's state, so its drains are in Prometheus too."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, cast

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tender_ray import logs
from tender_ray.balancing.node_drain import NO_DEADLINE, NodeDrains
from tender_ray.balancing.state import DrainReport
from tender_ray.cluster.handles import CALL_TIMEOUT, MachineHandle, Pending, resolve
from tender_ray.errors import MachineError, TenderError
from tender_ray.metrics.node_drains import DRAIN_WATCH, NodeDrainView

DRAIN_WATCH_NAME = "tender-drain-watch"  # actor name (after the cluster prefix)
WATCH_INTERVAL = 1.0  # seconds between looks at the draining nodes
GCS_TIMEOUT = 10.0  # seconds one question to Ray's control store may take


class RayDrainSignal:
    """The Ray nodes being drained, node id → deadline (wall seconds; inf when Ray was given
    none), from Ray's control store (GCS). Errors are raised as they come: the caller
    (`NodeDrains.read`) logs and counts them."""

    def __init__(self) -> None:
        self._gcs: Any = None  # ray._raylet.GcsClient, made on first use

    def _client(self) -> Any:
        if self._gcs is None:
            from ray._raylet import GcsClient  # type: ignore[attr-defined]

            self._gcs = GcsClient(address=ray.get_runtime_context().gcs_address)
        return self._gcs

    def draining(self) -> dict[str, float]:
        from ray.core.generated import gcs_pb2

        gcs = self._client()
        draining = gcs.get_draining_nodes(timeout=GCS_TIMEOUT)
        alive = {node_id.hex() for node_id, info in
                 gcs.get_all_node_info(timeout=GCS_TIMEOUT).items()
                 if info.state == gcs_pb2.GcsNodeInfo.ALIVE}  # type: ignore[attr-defined]
        # A node already gone stays listed for a while; its drain is over, not pending.
        return {str(node): (ms / 1000.0 if ms else NO_DEADLINE)
                for node, ms in draining.items() if node in alive}


def request_drain(node_id: str, deadline_at: float, why: str = "tender-ray",
                  reason: str = "DRAIN_NODE_REASON_PREEMPTION") -> None:
    """Ask Ray to drain `node_id` by `deadline_at` (wall seconds; inf: no deadline), as a
    preemption notice does. Ray marks the node DRAINING and moves nothing itself."""
    from ray.core.generated import autoscaler_pb2

    gcs: Any = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]
    ms = 0 if math.isinf(deadline_at) else int(deadline_at * 1000)
    code = autoscaler_pb2.DrainNodeReason.Value(reason)  # type: ignore[attr-defined]
    accepted, rejection = gcs.drain_node(node_id, code, why, ms)
    if not accepted:
        raise MachineError(f"Ray refused to drain node {node_id}: {rejection or 'no reason'}; "
                           "an idle-termination drain may be refused, a preemption is not")


class DrainWatchActor:
    """The actor body: `NodeDrains` over machine handles, looking every WATCH_INTERVAL;
    callers reach it through `DrainWatchHandle`."""

    def __init__(self, machines: list[str], prefix: str,
                 interval: float = WATCH_INTERVAL) -> None:
        logs.configure()
        self._prefix = prefix
        self._interval = interval
        self._drains = NodeDrains(RayDrainSignal(), call_timeout=CALL_TIMEOUT)
        for name in machines:
            self.add_machine(name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="drain-watch")
        self._thread.start()

    def _run(self) -> None:
        log = logs.get("drain-watch")
        while not self._stop.wait(self._interval):
            try:
                self._drains.check()
            except Exception as exc:  # the watcher must outlive one bad look; say so
                log.warning("drain check failed", error=repr(exc))

    def ready(self) -> bool:
        return True

    def add_machine(self, name: str) -> None:
        actor = ray.get_actor(self._prefix + name, namespace=ray.get_runtime_context().namespace)
        handle = MachineHandle(name, actor)
        self._drains.add_machine(handle, handle.node_id())

    def remove_machine(self, name: str) -> None:
        self._drains.remove_machine(name)

    def reports(self) -> tuple[DrainReport, ...]:
        return self._drains.reports

    def signal_errors(self) -> int:
        return self._drains.signal_errors

    def status(self) -> NodeDrainView:
        """Its node drains: finished, under way (one being evacuated too: the watcher's
        thread is inside its look meanwhile), and the signal's errors."""
        return NodeDrainView(DRAIN_WATCH, self._drains.reports, self._drains.draining,
                             self._drains.signal_errors)

    def stop(self) -> tuple[DrainReport, ...]:
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT)
        return self._drains.reports


RemoteDrainWatch: Any = ray.remote(DrainWatchActor)


class DrainWatchHandle:
    """A reference to the drain watcher actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor  # ray.actor.ActorHandle of a `DrainWatchActor`

    def _get(self, ref: Any, timeout: float | None = CALL_TIMEOUT) -> Any:
        return resolve("the drain watcher", ref, timeout)

    @staticmethod
    def start(machines: list[str], prefix: str, *, detached: bool = False) -> DrainWatchHandle:
        """The cluster's drain watcher: the one running under its name, or a new one."""
        # On the driver's node, never on one that may be drained away under it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                              soft=False)
        opts: dict[str, Any] = dict(num_cpus=0, max_concurrency=8, max_restarts=0,
                                    name=prefix + DRAIN_WATCH_NAME, get_if_exists=True,
                                    scheduling_strategy=here)
        if detached:
            opts["lifetime"] = "detached"
        handle = DrainWatchHandle(RemoteDrainWatch.options(**opts).remote(machines, prefix))
        handle._get(handle.actor.ready.remote())
        return handle

    @staticmethod
    def find(prefix: str) -> DrainWatchHandle | None:
        with contextlib.suppress(ValueError):
            return DrainWatchHandle(ray.get_actor(
                prefix + DRAIN_WATCH_NAME, namespace=ray.get_runtime_context().namespace))
        return None

    def add_machine(self, name: str) -> None:
        self._get(self.actor.add_machine.remote(name))

    def remove_machine(self, name: str) -> None:
        self._get(self.actor.remove_machine.remote(name))

    def reports(self) -> tuple[DrainReport, ...]:
        return cast(tuple[DrainReport, ...], self._get(self.actor.reports.remote()))

    def signal_errors(self) -> int:
        return int(self._get(self.actor.signal_errors.remote()))

    def status_async(self) -> Pending[NodeDrainView]:
        """Its node drains, finished and under way (what the metrics exporter reads)."""
        return Pending("the drain watcher", self.actor.status.remote())

    def stop(self) -> None:
        """End its looks and the actor."""
        with contextlib.suppress(TenderError):
            self._get(self.actor.stop.remote())
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)
