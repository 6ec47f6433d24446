"""The restart watch of `tender-ray up` clusters on real Ray actors: with the balancer started
with `restart_dead`, a SIGKILLed machine's checkpointed processes restart on another machine
with no driver calling the supervisor, and their output is byte-identical to the native runs
of the same binaries."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.clusters import own_cluster
from support.machines import frames_free, wait_until
from support.programs import native, workload

from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.cli.scenario.run import Tracked
from tender_ray.cluster import Cluster
from tender_ray.cluster.supervisor import crash
from tender_ray.config import CheckpointSpec, MachineConfig
from tender_ray.migration.options import MigrationOptions

RUN_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster() as c:
        yield c


def _config(name: str) -> MachineConfig:
    return MachineConfig(name=name, memory_mib=96, computations=1, engine="emulated",
                         checkpoint=CheckpointSpec(every=0.3))


def test_a_dead_machines_processes_restart_with_no_driver_acting(cluster: Cluster) -> None:
    a = cluster.add_machine(_config("w0"))
    b = cluster.add_machine(_config("w1"))
    cluster.start_balancer(BalancerParams(policy=Policy.NONE), MigrationOptions(), 0.2,
                           restart_dead=True)
    workloads = {"compute_sleep": ("150",), "memhold": ("8", "200", "10")}
    pids = {a.exec(workload(name).read_bytes(), name, [name, *args]): (name, args)
            for name, args in workloads.items()}
    deadline = time.monotonic() + 30
    while not set(pids) <= set(a.checkpointed()):  # each has a checkpoint
        assert time.monotonic() < deadline, "no checkpoints"
        time.sleep(0.1)
    time.sleep(0.4)  # the balancer's watch has listed them since
    crash(a)  # the drill only: nothing here calls recover()
    tracked = {pid: Tracked(arrival=None, where="w1") for pid in pids}  # type: ignore[arg-type]
    ended: set[int] = set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while ended != set(pids):
        assert time.monotonic() < deadline, f"{set(pids) - ended} did not come back and end"
        result = b.poll()
        for chunk in result.output:
            if chunk.pid in tracked:
                tracked[chunk.pid].chunks[chunk.fd][chunk.offset] = chunk.data
        ended |= {i.pid for i in result.ended}
        time.sleep(0.05)
    for pid, (name, args) in pids.items():
        assert tracked[pid].output(1) == native(name, *args)[1], name
    stats = b.statistics()
    assert {r.pid for r in stats.restarts} == set(pids)  # each restarted once, on w1
    assert stats.checkpoints["restarts"] == len(pids)
    wait_until(lambda: frames_free(b), what="w1's frames back")
    cluster.stop_balancer()
    cluster.stop_machine("w1")
