"""Ray's own drain of a node, followed before its deadline: a `ray.cluster_utils.Cluster` (a
head without CPUs, two worker nodes told apart by custom resources), machines pinned to each,
processes on the node to drain; the node is drained through Ray's drain API (reason
PREEMPTION, a deadline seconds ahead), the drain watcher moves every process to the other
node before the deadline, and the test then removes the node at the deadline, as a
preemption would. The processes' outputs must be those of their native runs.

The same again with a balancer running (what `up` and `run` start), on a third node. Both
times the metrics exporter's endpoint shows the node's drain with the watcher that followed it.

Its own module: a pytest session cannot mix this Ray with the embedded one of other modules.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray.cluster_utils import Cluster as RayCluster
from support.programs import native, workload

from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.cluster import Cluster
from tender_ray.cluster.drain_watch import RayDrainSignal, request_drain
from tender_ray.config import MachineConfig
from tender_ray.migration.options import MigrationOptions

STORE = 100 << 20
DEADLINE = 8.0  # seconds from the drain request to the node's removal
# Each lives ~10 s, past the deadline: nothing can end where it is instead of moving.
PROGRAMS = [("memhold", ("8", "1000", "10")), ("memhold", ("2", "1000", "10")),
            ("memhold", ("4", "1000", "10"))]

pytestmark = pytest.mark.slow  # a three-node Ray cluster: ~30-60 s on this host


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[RayCluster, Cluster, dict[str, object]]]:
    if ray.is_initialized():
        ray.shutdown()
    rc = RayCluster(initialize_head=True,
                    head_node_args={"num_cpus": 0, "object_store_memory": STORE})
    cluster: Cluster | None = None
    try:
        rc.add_node(num_cpus=1, resources={"node_a": 1}, object_store_memory=STORE)
        nodes = {resource: rc.add_node(num_cpus=1, resources={resource: 1},
                                       object_store_memory=STORE)
                 for resource in ("node_b", "node_c")}
        rc.wait_for_nodes()
        ray.init(address=rc.address, log_to_driver=False)
        cluster = Cluster(address=rc.address)
        for name, resource in (("a1", "node_a"), ("a2", "node_a"), ("b1", "node_b"),
                               ("b2", "node_b"), ("c1", "node_c")):
            cluster.add_machine(MachineConfig(name=name, memory_mib=64, quantum_us=2000,
                                              engine="emulated"),
                                resources={resource: 0.01})
        yield rc, cluster, nodes
    finally:
        if cluster is not None:
            cluster.shutdown()
        ray.shutdown()
        rc.shutdown()


def start(cluster: Cluster, machines: tuple[str, ...]) -> dict[int, tuple[str, tuple[str, ...]]]:
    """PROGRAMS started round robin on `machines`: pid -> (workload, args)."""
    pids = {}
    for i, (name, args) in enumerate(PROGRAMS):
        machine = cluster.machine(machines[i % len(machines)])
        path = workload(name)
        pids[machine.exec(path.read_bytes(), name, [os.fspath(path), *args], [])] = (name, args)
    return pids


def follow(rc: RayCluster, cluster: Cluster, node: object, drained: str,
           pids: dict[int, tuple[str, tuple[str, ...]]], sources: set[str],
           targets: tuple[str, ...]) -> None:
    """Drain `drained` through Ray with a DEADLINE; every process must be on one of `targets`
    (the machines on other nodes) before it, the drain reports say so, the node is removed at
    the deadline, and the processes end there with their native outputs."""
    time.sleep(0.5)  # running there
    deadline_at = time.time() + DEADLINE
    request_drain(drained, deadline_at, "test preemption")
    assert drained in RayDrainSignal().draining()
    moved: dict[int, str] = {}
    while time.time() < deadline_at - 0.5 and len(moved) < len(pids):
        for machine in targets:
            for p in cluster.machine(machine).list_processes():
                if p.pid in pids:
                    moved[p.pid] = machine
        time.sleep(0.1)
    assert set(moved) == set(pids), (f"still on {drained} at the deadline: "
                                     f"{set(pids) - set(moved)}; {cluster.node_drains()}")
    reports = [r for r in cluster.node_drains() if r.node == drained]
    while {r.machine for r in reports} != sources and time.time() < deadline_at:
        time.sleep(0.1)  # the last move is recorded just after the process arrives
        reports = [r for r in cluster.node_drains() if r.node == drained]
    assert {r.machine for r in reports} == sources
    for r in reports:
        assert (r.ok, r.outcome, r.left) == (True, "evacuated", ())
        assert r.deadline_at == pytest.approx(deadline_at, abs=0.01)
        assert all(m.destination in targets and m.reason == "drain" for m in r.moved)
        print(f"drain of {r.machine}: {len(r.moved)} moved in {r.seconds:.2f} s, "
              f"{r.deadline:.2f} s before the deadline; moves "
              f"{[round(m.seconds, 3) for m in r.moved]} s")
    assert sorted(m.pid for r in reports for m in r.moved) == sorted(pids)
    # The preemption itself: the node goes away at its deadline.
    time.sleep(max(0.0, deadline_at - time.time()))
    rc.remove_node(node)
    for machine in sources:
        cluster.stop_machine(machine, graceful=False)
    for pid, (name, args) in pids.items():
        where = cluster.machine(moved[pid])
        info = where.wait(pid, timeout=120)
        assert info.state == "zombie"
        info, out, err = where.reap(pid)
        assert (info.exit_status, out, err) == native(name, *args)


def node_drain_samples(cluster: Cluster, watcher: str) -> dict[tuple[str, str, str], float]:
    """The exporter's node-drain samples of `watcher`: (sample, machine, outcome) -> value."""
    port = cluster.start_exporter(port=0)  # the running one's port after the first call
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {(s.name, s.labels.get("machine", ""), s.labels.get("outcome", "")): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("tender_node_drain")
            for s in family.samples if s.labels.get("watcher") == watcher}


def assert_drain_exported(cluster: Cluster, watcher: str, sources: set[str], moved: int
                          ) -> None:
    got = node_drain_samples(cluster, watcher)
    assert got[("tender_node_drains_started_total", "", "")] >= 1, got
    for machine in sources:
        assert got[("tender_node_drains_finished_total", machine, "evacuated")] == 1, got
    assert sum(v for (name, machine, _), v in got.items() if machine in sources and
               name == "tender_node_drain_evacuated_processes_total") == moved, got


def test_a_preempted_nodes_processes_leave_before_its_deadline(
        clusters: tuple[RayCluster, Cluster, dict[str, object]]) -> None:
    rc, cluster, nodes = clusters
    drained = cluster.machine("b1").node_id()
    assert cluster.machine("b2").node_id() == drained
    assert cluster.machine("a1").node_id() != drained
    cluster.start_exporter(port=0)
    follow(rc, cluster, nodes["node_b"], drained, start(cluster, ("b1", "b2")), {"b1", "b2"},
           ("a1", "a2", "c1"))
    assert_drain_exported(cluster, "drain_watch", {"b1", "b2"}, len(PROGRAMS))


def test_with_a_balancer_running_the_balancer_follows_the_drain(
        clusters: tuple[RayCluster, Cluster, dict[str, object]]) -> None:
    rc, cluster, nodes = clusters
    cluster.start_balancer(BalancerParams(policy=Policy.NONE), MigrationOptions(), 0.25)
    drained = cluster.machine("c1").node_id()
    follow(rc, cluster, nodes["node_c"], drained, start(cluster, ("c1",)), {"c1"},
           ("a1", "a2"))
    assert cluster.balancer_state().signal_errors == 0
    assert_drain_exported(cluster, "balancer", {"c1"}, len(PROGRAMS))
