"""Machines on different Ray nodes (`ray.cluster_utils.Cluster` on this host: a head without
CPUs and two worker nodes told apart by a custom resource), a process moved between them.

Its own module: a pytest session cannot mix this Ray with the embedded one of test_cluster.py,
so the fixture shuts Ray down at module end.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster as RayCluster
from support.machines import actor_mover, bounce, finish_standby, start_standby
from support.programs import native_standby

from tender_ray.cluster import Cluster
from tender_ray.config import MachineConfig
from tender_ray.migration.options import MigrationOptions, Transfer
from tender_ray.migration.record import PHASES
from tender_ray.resources.file_view import FileViewSpec

BUSYBOX = Path("/usr/bin/busybox")

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
        # A machine with no host files of its own: what its arrivals read and write, they
        # read and write at their home on the other node.
        cluster.add_machine(MachineConfig(name="nc", memory_mib=64, quantum_us=1000,
                                          engine="emulated", host_files="none"),
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
    # 8 MiB of pages to move, eight times, by a process that runs until it is told to finish.
    args = ("8",)
    pid, taken = start_standby(handles[0], *args)
    where, records = bounce(handles, pid, move=actor_mover(options), pause=0.02, max_moves=8)
    status, out, err, _ = finish_standby(handles[where], pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert len(records) == 8
    for i, r in enumerate(records):
        assert (r.source, r.destination, r.result) == (
            ("na", "nb", "ok") if i % 2 == 0 else ("nb", "na", "ok"))
        assert r.bytes == r.pages * 4096 and r.pages > 0
        assert set(PHASES) <= set(r.phases)
    for h in handles:
        stats = h.statistics()
        assert stats.processes == {}
        assert stats.memory.frames_free == stats.memory.frames_total


@pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")
def test_a_process_on_another_node_uses_its_home_files(
        clusters: tuple[RayCluster, Cluster], tmp_path: Path) -> None:
    """No file system shared by the nodes is assumed: `nc` has no host files at all, so the
    sort that moved there reads its input and writes its output through `na`, its home."""
    _, cluster = clusters
    home, away = cluster.machine("na"), cluster.machine("nc")
    text = tmp_path / "input.txt"
    text.write_text("".join(f"{(i * 7919) % 100_003:06d} line {i}\n" for i in range(40_000)))
    subprocess.run([str(BUSYBOX), "sort", "-o", str(tmp_path / "native.txt"), str(text)],
                   check=True, timeout=60)
    out = tmp_path / "sorted.txt"
    argv = [str(BUSYBOX), "sort", "-o", str(out), str(text)]
    pid = home.exec(BUSYBOX.read_bytes(), "busybox", argv, files=FileViewSpec(cwd=str(tmp_path)))
    record = home.migrate(pid, "nc", MigrationOptions(), timeout=120)
    assert record.result == "ok"
    info = away.wait(pid, timeout=120)
    assert info.state == "zombie", info
    while any(c.pid == pid for c in away.statistics().computations):
        time.sleep(0.002)
    info, stdout, err = away.reap(pid)
    assert (info.exit_status, stdout, err) == (0, b"", b""), info.exit_reason
    assert out.read_bytes() == (tmp_path / "native.txt").read_bytes()
    asked = away.statistics().host_files.remote
    assert [a.home for a in asked] == ["na"]
    assert asked[0].bytes_fetched >= text.stat().st_size  # the input came from home
    assert asked[0].bytes_sent == out.stat().st_size  # and the output went there
    served = home.statistics().host_files.served
    assert served.requests >= asked[0].requests and served.open_handles == 0
    # Started on `nc` itself, the same program finds no files: a clear error, nothing else.
    pid = away.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), "cat", str(text)],
                    files=FileViewSpec(cwd=str(tmp_path)))
    away.wait(pid, timeout=60)
    while any(c.pid == pid for c in away.statistics().computations):
        time.sleep(0.002)
    info, stdout, err = away.reap(pid)
    assert info.exit_status == 1 and stdout == b"" and b"Permission denied" in err


@pytest.mark.skipif(not Path("/usr/bin/sha256sum").is_file(), reason="coreutils not installed")
def test_the_io_benchmark_reads_through_a_home_actor(
        clusters: tuple[RayCluster, Cluster], tmp_path: Path) -> None:
    from tender_ray.bench.io import ray_home_runs

    data = tmp_path / "data"
    data.write_bytes(os.urandom(1 << 20))
    expected = subprocess.run(["/usr/bin/sha256sum", str(data)], capture_output=True,
                              check=True, timeout=60).stdout
    [(seconds, status, out, moved, _)] = ray_home_runs(["emulated"], data, 1)["emulated"]
    assert (status, out) == (0, expected)
    assert seconds > 0 and moved > 0  # it did move before it ended
