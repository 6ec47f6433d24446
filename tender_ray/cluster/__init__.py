"""The Ray layer, the only place that imports `ray`: typed handles with one method per remote
operation, thin actor shells around the kernel's machine, the balancing loop and the metrics
exporter, the object-store transport (DSM), and the probe actor the benchmarks measure with.
A call to a machine that died fails with `MachineStoppedError` instead of hanging.
"""

from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.cluster.cluster import EMBEDDED_RAY_CONFIG, NAMESPACE, PID_STRIDE, Cluster
from tender_ray.cluster.handles import (
    CALL_TIMEOUT,
    BalancerHandle,
    ExporterHandle,
    MachineHandle,
    Pending,
    ProbeHandle,
)
from tender_ray.cluster.transport import RayTransport

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
