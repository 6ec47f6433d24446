"""Machines on different Ray nodes (`ray.cluster_utils.Cluster` on this host: a head without
CPUs and two worker nodes told apart by a custom resource), a process moved between them.

Its own module: a pytest session cannot mix this Ray with the embedded one of test_cluster.py,
so the fixture shuts Ray down at module end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster as RayCluster
from support.programs import native, workload

from tender_ray.cluster import Cluster
from tender_ray.config import MachineConfig
from tender_ray.errors import ProcessStateError
from tender_ray.kernel.snapshots import ProcessInfo
from tender_ray.migration.options import MigrationOptions, Transfer
from tender_ray.migration.record import PHASES

STORE = 100 << 20


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[RayCluster, Cluster]]:
    if ray.is_initialized():
        ray.shutdown()
    rc = RayCluster(initialize_head=True,
                    head_node_args={"num_cpus": 0, "object_store_memory": STORE})
    cluster: Cluster | None = None
    joined = False
    try:
        rc.add_node(num_cpus=1, resources={"node_a": 1}, object_store_memory=STORE)
        rc.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=STORE)
        rc.wait_for_nodes()
        ray.init(address=rc.address, log_to_driver=False)
        cluster = Cluster(address=rc.address)  # Ray is up already: it must not init again
        cluster.add_machine(MachineConfig(name="na", memory_mib=64, quantum_us=1000,
                                          engine="emulated"),
                            resources={"node_a": 0.01})
        cluster.add_machine(MachineConfig(name="nb", memory_mib=64, quantum_us=1000,
                                          engine="emulated"),
                            resources={"node_b": 0.01})
        yield rc, cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
            # It joined a Ray it did not start: shutting the machines down leaves Ray up.
            joined = ray.is_initialized()
        ray.shutdown()
        rc.shutdown()
    assert joined, "Cluster.shutdown() shut down a Ray it had not started"


def test_machines_on_different_nodes(clusters: tuple[RayCluster, Cluster]) -> None:
    rc, cluster = clusters
    head = rc.head_node.node_id
    na, nb = cluster.machine("na").node_id(), cluster.machine("nb").node_id()
    assert na != nb
    assert head not in (na, nb)
    alive = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    assert "node_a" in alive[na] and "node_b" in alive[nb]


@pytest.mark.parametrize("transfer", ["dsm", "plate"])
def test_migrate_between_nodes(clusters: tuple[RayCluster, Cluster], transfer: str) -> None:
    _, cluster = clusters
    handles = [cluster.machine("na"), cluster.machine("nb")]
    options = MigrationOptions(transfer=Transfer(transfer))
    # 8 MiB of pages to move, and a second of sleeps however fast the host runs the code:
    # a sieve could end before its third move on a fast host.
    path = workload("memhold")
    args = ("8", "100", "10")
    pid = handles[0].exec(path.read_bytes(), "memhold", [os.fspath(path), *args], [])
    where, records = 0, []
    while len(records) < 8:
        source = handles[where]
        if source.info(pid).state == "zombie":
            break
        try:
            records.append(source.migrate(pid, handles[1 - where].name, options, timeout=120))
        except ProcessStateError:
            break
        where = 1 - where
        time.sleep(0.02)
    last = handles[where]
    info: ProcessInfo = last.wait(pid, timeout=120)
    assert info.state == "zombie"
    while any(c.pid == pid for c in last.statistics().computations):
        time.sleep(0.002)
    info, out, err = last.reap(pid)
    assert (info.exit_status, out, err) == native("memhold", *args)
    assert len(records) >= 3
    for i, r in enumerate(records):
        assert (r.source, r.destination, r.result) == (
            ("na", "nb", "ok") if i % 2 == 0 else ("nb", "na", "ok"))
        assert r.bytes == r.pages * 4096 and r.pages > 0
        assert set(PHASES) <= set(r.phases)
    for h in handles:
        stats = h.statistics()
        assert stats.processes == {}
        assert stats.memory.frames_free == stats.memory.frames_total
