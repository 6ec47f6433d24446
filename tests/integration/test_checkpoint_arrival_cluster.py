"""A machine killed right after a process arrived there, on real Ray actors with periodic
checkpoints on: the process restarts on another machine from a checkpoint that covers its
arrival (the one the arrival wrote, or its source's younger one), its output byte-identical to
the native run, nothing lost; and the crash scenario with moves onto the machines that crash."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.clusters import exec_workload, follow_output, own_cluster, run_scenario_to_end
from support.machines import wait_until
from support.programs import ROOT, native

from tender_ray.cli.scenario.model import read_scenario
from tender_ray.cli.scenario.run import Tracked
from tender_ray.cluster import Cluster
from tender_ray.cluster.supervisor import crash, recover
from tender_ray.config import CheckpointSpec, MachineConfig

RUN_TIMEOUT = 120.0
EVERY = 5.0  # seconds between two checkpoints of a process


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster() as c:
        yield c


def _config(name: str) -> MachineConfig:
    return MachineConfig(name=name, memory_mib=96, computations=1, engine="emulated",
                         checkpoint=CheckpointSpec(every=EVERY))


def test_a_machine_killed_right_after_an_arrival_loses_nothing(cluster: Cluster) -> None:
    """The destination's actor is killed as soon as the arrival is on record there.

    Why the age bound holds on a busy host: the arrival either wrote a checkpoint while it
    committed (when the process had none younger than the interval), or kept its source's,
    younger than the interval when the commit checked it. So the checkpoint restarted from
    was taken less than EVERY before the migration finished, which the records show whatever
    the speed (asserted first); from there to the loss the test only reads the arrival record
    and kills the actor, a few calls, which EVERY (5 s) covers many times over."""
    a = cluster.add_machine(_config("k0"))
    b = cluster.add_machine(_config("k1"))
    cluster.add_machine(_config("k2"))
    args = ("150",)
    pid = exec_workload(a, "compute_sleep", *args)
    tracked = {pid: Tracked(arrival=None, where="k0")}  # type: ignore[arg-type]
    moved = a.migrate(pid, "k1", timeout=RUN_TIMEOUT)
    assert moved.result == "ok", moved
    # The arrival record: the process, in k1's table, lists the migration that brought it.
    wait_until(lambda: any(m.destination == "k1" for m in b.info(pid).migrations),
               what="the arrival record on k1")
    crash(b)
    recovery = recover(cluster, "k1", [pid])
    assert recovery.lost == () and recovery.elsewhere == ()
    [restart] = recovery.restarted
    assert restart.pid == pid and restart.machine in ("k0", "k2")
    # covered from its arrival: a checkpoint younger than an interval when the move began
    # (the source's, kept) or one taken at the commit
    assert restart.taken_at > moved.started_at - EVERY, (restart, moved)
    assert 0 <= restart.age_seconds <= 2 * EVERY, restart
    follow_output(cluster, tracked, {pid})
    assert tracked[pid].output(1) == native("compute_sleep", *args)[1]
    for name in ("k0", "k2"):
        cluster.stop_machine(name)


@pytest.mark.slow  # a whole scenario of four machines, two of them crashed, and native runs
def test_crash_scenario_with_moves_loses_nothing(cluster: Cluster) -> None:
    report, events = run_scenario_to_end(
        read_scenario(ROOT / "configs" / "crash-moving.yaml"), 300.0)
    assert report.lost == (), events
    assert report.restarts, events
    for p in report.processes:
        assert p.exit_status == 0 and p.output_matches_native is True, p
    assert report.checkpoint_ages is not None
    assert report.checkpoint_ages.max_seconds is not None
    assert report.ok
