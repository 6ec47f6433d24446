"""The balancer actor: a thin shell that runs the balancing loop (`balancing.loop`) over
handles to the machine actors, hears of changes from the machines (`kick`), and tells the loop
which machines are on Ray nodes that Ray itself is draining (`drain_watch.RayDrainSignal`),
so the loop evacuates them before the node's deadline. On a `tender-ray up` cluster
(`restart_dead`) it also runs the restart watch (`restart_watch`): a machine whose actor dies
has its processes restarted from their checkpoints with no driver acting."""

from __future__ import annotations

import contextlib
from typing import Any

import ray

from tender_ray import logs
from tender_ray.balancing.loop import BalancingLoop
from tender_ray.balancing.policies import BalancerParams
from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.cluster.drain_watch import RayDrainSignal
from tender_ray.cluster.handles import CALL_TIMEOUT, BalancerHandle, MachineHandle
from tender_ray.errors import TenderError
from tender_ray.migration.options import MigrationOptions

BALANCER_NAME = "tender-balancer"  # actor name (after the cluster prefix) when detached


class BalancerActor:
    """The actor body: a `BalancingLoop` over machine handles, and one method per remote
    operation; callers reach it through `BalancerHandle`."""

    def __init__(self, machines: list[str], params: BalancerParams, options: MigrationOptions,
                 interval: float, prefix: str, restart_dead: bool = False) -> None:
        logs.configure()
        self._prefix = prefix
        self._handles: dict[str, MachineHandle] = {}
        # Machines call this actor back on changes (its `kick`).
        self._self = BalancerHandle(ray.get_runtime_context().current_actor)
        self._loop = BalancingLoop(params, options, interval, nodes=RayDrainSignal(),
                                   call_timeout=CALL_TIMEOUT)
        # Restarts a dead machine's processes: only where no driver does (`up`), or both would.
        self._restarts: Any = None
        if restart_dead:
            # Imported here: restart_watch works on a Cluster, whose module imports this one.
            from tender_ray.cluster.restart_watch import RestartWatch

            self._restarts = RestartWatch(prefix, interval, on_dead=self._machine_died)
        for name in machines:
            self.add_machine(name)
        self._loop.start()
        if self._restarts is not None:
            self._restarts.start()

    def ready(self) -> bool:
        return True

    def kick(self) -> None:
        """A machine's processes changed: balance now rather than at the next interval."""
        self._loop.kick()

    def add_machine(self, name: str) -> None:
        actor = ray.get_actor(self._prefix + name, namespace=ray.get_runtime_context().namespace)
        handle = MachineHandle(name, actor)
        node = handle.node_id()
        handle.watch(self._self, timeout=CALL_TIMEOUT)
        self._handles[name] = handle
        self._loop.add_machine(handle, node)
        if self._restarts is not None:
            self._restarts.add_machine(name)

    def remove_machine(self, name: str) -> None:
        self._handles.pop(name, None)
        self._loop.remove_machine(name)
        if self._restarts is not None:
            self._restarts.remove_machine(name)

    def _machine_died(self, name: str, _recovery: object) -> None:
        """The restart watch recovered a dead machine (and dropped it from its view): the
        loop stops balancing onto it."""
        self._handles.pop(name, None)
        self._loop.remove_machine(name)

    def restarts(self) -> list[Any]:
        """The restart watch's recoveries (`supervisor.Recovery`), oldest first."""
        return list(self._restarts.recoveries) if self._restarts is not None else []

    def drain(self, machine: str, deadline: float) -> DrainReport:
        return self._loop.drain(machine, deadline)

    def state(self) -> BalancerState:
        return self._loop.state()

    def stop(self) -> BalancerState:
        if self._restarts is not None:
            self._restarts.stop()
        self._loop.stop()
        for handle in list(self._handles.values()):  # machines outliving it stop telling it
            with contextlib.suppress(TenderError):
                handle.watch(None, timeout=5.0)
        return self._loop.state()


RemoteBalancer: Any = ray.remote(BalancerActor)
