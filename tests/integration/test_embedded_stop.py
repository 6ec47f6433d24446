"""Stopping the embedded Ray a driver started: every process Ray started for it ends with it,
the autoscaler's monitor (ended first, by pid) included."""

from __future__ import annotations

import ray

from tender_ray.cluster import Cluster
from tender_ray.cluster.embedded import _ray_autoscaler_monitors, _ray_children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_a_cluster_with_its_own_ray_leaves_none_of_ray_running() -> None:
    if ray.is_initialized():  # another module's Ray: this one must be its own
        ray.shutdown()
    cluster = Cluster(num_cpus=1, object_store_mib=128)
    started = _ray_children()
    monitors = _ray_autoscaler_monitors()
    assert monitors and monitors <= started, started  # what the quick stop ends itself
    cluster.shutdown()
    assert not ray.is_initialized()
    assert [pid for pid in started if _alive(pid)] == []
