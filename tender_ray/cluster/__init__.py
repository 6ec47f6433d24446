"""The Ray layer, the only place that imports `ray`: typed handles with one method per remote
operation, thin actor shells around the kernel's machine, the balancing loop and the metrics
exporter, the object-store transport (DSM), and the probe actor the benchmarks measure with.
A call to a machine that died fails with `MachineStoppedError` instead of hanging.

The names below load with their modules on first use, so that a process needing one module
of this layer (a machine actor's worker, an embedded Ray starting) loads only that one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tender_ray.balancing.state import BalancerState as BalancerState
    from tender_ray.balancing.state import DrainReport as DrainReport
    from tender_ray.cluster.cluster import PID_STRIDE as PID_STRIDE
    from tender_ray.cluster.cluster import Cluster as Cluster
    from tender_ray.cluster.embedded import EMBEDDED_RAY_CONFIG as EMBEDDED_RAY_CONFIG
    from tender_ray.cluster.embedded import NAMESPACE as NAMESPACE
    from tender_ray.cluster.handles import CALL_TIMEOUT as CALL_TIMEOUT
    from tender_ray.cluster.handles import BalancerHandle as BalancerHandle
    from tender_ray.cluster.handles import ExporterHandle as ExporterHandle
    from tender_ray.cluster.handles import MachineHandle as MachineHandle
    from tender_ray.cluster.handles import Pending as Pending
    from tender_ray.cluster.handles import ProbeHandle as ProbeHandle
    from tender_ray.cluster.transport import RayTransport as RayTransport

_WHERE = {
    "CALL_TIMEOUT": "tender_ray.cluster.handles",
    "EMBEDDED_RAY_CONFIG": "tender_ray.cluster.embedded",
    "NAMESPACE": "tender_ray.cluster.embedded",
    "PID_STRIDE": "tender_ray.cluster.cluster",
    "BalancerHandle": "tender_ray.cluster.handles",
    "BalancerState": "tender_ray.balancing.state",
    "Cluster": "tender_ray.cluster.cluster",
    "DrainReport": "tender_ray.balancing.state",
    "ExporterHandle": "tender_ray.cluster.handles",
    "MachineHandle": "tender_ray.cluster.handles",
    "Pending": "tender_ray.cluster.handles",
    "ProbeHandle": "tender_ray.cluster.handles",
    "RayTransport": "tender_ray.cluster.transport",
}

__all__ = [
    "CALL_TIMEOUT",
    "EMBEDDED_RAY_CONFIG",
    "NAMESPACE",
    "PID_STRIDE",
    "BalancerHandle",
    "BalancerState",
    "Cluster",
    "DrainReport",
    "ExporterHandle",
    "MachineHandle",
    "Pending",
    "ProbeHandle",
    "RayTransport",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
