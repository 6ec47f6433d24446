"""An embedded Ray: the single-node Ray a driver starts for itself (loopback only, its own
processors). This module imports nothing of tender_ray's but Ray, so that a driver can start
Ray before the kernel's modules load, and load them in a thread while Ray's own processes
come up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import ray

NAMESPACE = "tender_ray"
# An embedded Ray runs on the machines' own processors, and nobody reads its dashboard: it
# keeps neither Ray's own metrics nor its per-task event records (tender_ray exports its own).
EMBEDDED_RAY_CONFIG: dict[str, Any] = {"enable_metrics_collection": False,
                                       "task_events_report_interval_ms": 0}

# Ray waits a fixed 30 s for a new node's raylet to register and then gives up with a bare
# Exception; on a host busy enough for that, the second start usually makes it in time.
_RAY_START_ATTEMPTS = 2
_RAY_START_TIMEOUT = "timed out during startup"


def embedded_kwargs(num_cpus: int | None, object_store_mib: int = 256,
                    namespace: str = NAMESPACE) -> dict[str, Any]:
    """`ray.init`'s arguments for an embedded Ray."""
    return dict(namespace=namespace, include_dashboard=False, logging_level="ERROR",
                log_to_driver=False, configure_logging=True, address="local",
                num_cpus=num_cpus or os.cpu_count() or 2,
                object_store_memory=object_store_mib << 20,
                _node_ip_address="127.0.0.1",  # an embedded Ray never listens elsewhere
                _system_config=EMBEDDED_RAY_CONFIG)


def _ray_children() -> set[int]:
    """The pids of this process's children that run Ray's programs (its head processes
    are started as children; anything else this process started is left alone)."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])  # after the command
            if parent != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"/ray/" in f.read():  # gcs_server, raylet, Ray's python services
                    found.add(int(entry))
    return found


def _ray_autoscaler_monitors() -> set[int]:
    """Of this process's Ray children, the autoscaler's monitor (`monitor.py`, not
    `log_monitor.py`)."""
    found = set()
    for pid in _ray_children():
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            if any(a.endswith(b"/autoscaler/_private/monitor.py") for a in args):
                found.add(pid)
    return found


def stop_embedded_ray() -> None:
    """`ray.shutdown()` of the Ray this driver started, a second faster. Ray stops its
    processes one kind after another, each given a second to end on SIGTERM; its
    autoscaler's monitor takes that whole second every time (it has nothing to do for a
    single embedded node and nothing to save), so it is ended first, by pid, with SIGKILL."""
    for pid in _ray_autoscaler_monitors():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ray.shutdown()  # reaps it with the rest


def _start_embedded_ray(kwargs: dict[str, Any]) -> None:
    """Start the embedded Ray, once more if its node did not register in time. The failed
    attempt's processes are not Ray's to stop any more (its node object was never made), so
    the ones it started are ended here, by pid, before the next attempt."""
    for attempt in range(1, _RAY_START_ATTEMPTS + 1):
        before = _ray_children()
        try:
            ray.init(**kwargs)
            return
        except Exception as e:  # Ray raises a plain Exception for this one
            if _RAY_START_TIMEOUT not in str(e) or attempt == _RAY_START_ATTEMPTS:
                raise
            ray.shutdown()
            for pid in _ray_children() - before:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class EmbeddedRay:
    """An embedded Ray this driver started (`EmbeddedRay.start`), for a `Cluster` to own
    (`Cluster(embedded=...)`): the driver starts it itself, in its main thread (where Ray
    must start: its shutdown hangs for one started elsewhere), with other start-up work
    going on in threads of its own meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds  # how long Ray took to start

    @classmethod
    def start(cls, num_cpus: int | None, object_store_mib: int = 256,
              namespace: str = NAMESPACE) -> EmbeddedRay:
        began = time.monotonic()
        _start_embedded_ray(embedded_kwargs(num_cpus, object_store_mib, namespace))
        return cls(time.monotonic() - began)

    @staticmethod
    def abandon() -> None:
        """The driver stops before a Cluster owns the Ray it started: stop it, so that none
        of Ray's processes is left behind."""
        with contextlib.suppress(Exception):
            stop_embedded_ray()
