"""Pre-copy between machine actors: a program that rewrites part of its heap while it is
moved every 50 ms or so over three real actors (their pages through the object store, the
live rounds staged at the destination) ends exactly as natively, and every record says it
went by pre-copy with at least one live round."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from support.clusters import own_cluster
from support.machines import actor_mover, bounce, finish, start, wait_ready
from support.programs import WRITESET_READY, native_writeset

from tender_ray.bench.precopy import precopy_benchmark
from tender_ray.cluster import Cluster
from tender_ray.config import Engine, MachineConfig
from tender_ray.migration.options import MigrationMode, MigrationOptions


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    configs = (MachineConfig(name=n, memory_mib=128, quantum_us=1000, engine=Engine.EMULATED)
               for n in ("p0", "p1", "p2"))
    with own_cluster(configs) as c:
        yield c


def test_precopy_between_actors_is_exact(cluster: Cluster) -> None:
    machines = [cluster.machine(n) for n in ("p0", "p1", "p2")]
    args = ("24", "4")  # 24 MiB, of which 4 MiB rewritten over and over
    pid = start(machines[0], "writeset", *args)
    taken = wait_ready(machines[0], pid, line=WRITESET_READY)
    move = actor_mover(MigrationOptions(mode=MigrationMode.PRECOPY))
    where, records = bounce(machines, pid, move=move, pause=0.05, max_moves=6)
    machines[where].kill(pid, int(signal.SIGUSR1))
    status, out, err, info = finish(machines[where], pid)
    assert (status, taken + out, err) == native_writeset(*args)
    assert len(records) == 6
    for r in records:
        assert r.ok and r.mode == "precopy" and r.rounds >= 1, r
        assert r.round_bytes[0] >= 24 << 20  # the first round: every page
        assert r.bytes == sum(r.round_bytes) + r.freeze_bytes
    assert [m.mode for m in info.migrations] == ["precopy"] * 6


def test_precopy_benchmark_measures_both_modes(cluster: Cluster) -> None:
    """`tender-ray bench precopy` at one small size: both working sets moved by both modes,
    the process's heap verified when it ends (the benchmark raises otherwise)."""
    result = precopy_benchmark((4,), repeats=1, engine="emulated", cluster=cluster)
    rows = result["rows"]
    assert [(r["mib"], r["write_mib"]) for r in rows] == [(4, 0), (4, 1)]
    for r in rows:
        assert r["stop"]["rounds"] == 0 and r["precopy"]["rounds"] >= 1
        assert r["precopy_bytes_ratio"] >= 1.0  # the first round alone sends every page
        assert r["precopy_freeze_ratio"] > 0
