"""Machine crashes on real Ray actors: a machine actor's worker SIGKILLed mid-run with
checkpointing on, its processes restarted on another machine from their last checkpoints, their
output byte-identical to the native runs of the same binaries; a process without a checkpoint,
and one whose checkpoint is corrupt, reported lost with the reason and nothing else disturbed;
and configs/crash.yaml run end to end."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.clusters import exec_workload, follow_output, own_cluster, run_scenario_to_end
from support.machines import frames_free, wait_until
from support.programs import ROOT, native, workload

from tender_ray.cli.execute import ExecResult, execute
from tender_ray.cli.scenario.model import read_scenario
from tender_ray.cli.scenario.run import Tracked
from tender_ray.cluster import Cluster
from tender_ray.cluster.supervisor import crash, recover
from tender_ray.config import CheckpointSpec, MachineConfig

RUN_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster() as c:
        yield c


def _config(name: str, every: float | None) -> MachineConfig:
    return MachineConfig(name=name, memory_mib=96, computations=1, engine="emulated",
                         checkpoint=CheckpointSpec(every=every) if every else None)


def test_a_crashed_machines_processes_restart_elsewhere_with_native_output(
        cluster: Cluster) -> None:
    a = cluster.add_machine(_config("c0", every=0.3))
    cluster.add_machine(_config("c1", every=0.3))
    workloads = {"compute_sleep": ("150",), "memhold": ("8", "200", "10")}
    pids = {exec_workload(a, name, *args): (name, args) for name, args in workloads.items()}
    tracked = {pid: Tracked(arrival=None, where="c0") for pid in pids}  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while not set(pids) <= set(a.checkpointed()):  # each has a checkpoint
        assert time.monotonic() < deadline, "no checkpoints"
        time.sleep(0.1)
    time.sleep(0.4)  # a little run past the checkpoint, which the restart does again
    killed = crash(a)
    assert killed != os.getpid()
    recovery = recover(cluster, "c0", list(pids))
    assert recovery.lost == ()
    assert {r.pid for r in recovery.restarted} == set(pids)
    assert all(r.machine == "c1" and r.lost_machine == "c0" for r in recovery.restarted)
    assert "c0" not in cluster.machines
    follow_output(cluster, tracked, set(pids))
    for pid, (name, args) in pids.items():
        assert tracked[pid].output(1) == native(name, *args)[1], name
    # The machine they restarted on gives back every frame once they have ended.
    wait_until(lambda: frames_free(cluster.machine("c1")), what="c1's frames back")
    stats = cluster.machine("c1").statistics()
    assert stats.checkpoints["restarts"] == 2
    assert {r.pid for r in stats.restarts} == set(pids)
    cluster.stop_machine("c1")


def test_without_a_usable_checkpoint_a_process_is_lost_with_the_reason(
        cluster: Cluster) -> None:
    a = cluster.add_machine(_config("d0", every=None))  # checkpoints only when asked
    b = cluster.add_machine(_config("d1", every=None))
    never = exec_workload(a, "compute_sleep", "400")
    corrupt = exec_workload(a, "compute_sleep", "400")
    other = exec_workload(b, "compute_sleep", "20")  # on the machine that lives: undisturbed
    record = a.checkpoint(corrupt)
    delta = Path(record.store) / str(corrupt) / f"{record.seq}.delta"
    raw = bytearray(delta.read_bytes())
    raw[-100] ^= 0xFF
    delta.write_bytes(bytes(raw))
    crash(a)
    recovery = recover(cluster, "d0", [never, corrupt])
    assert recovery.restarted == ()
    reasons = {x.pid: x.reason for x in recovery.lost}
    assert reasons[never] == "no checkpoint"
    assert "checksum" in reasons[corrupt]
    tracked = {other: Tracked(arrival=None, where="d1")}  # type: ignore[arg-type]
    follow_output(cluster, tracked, {other})
    assert tracked[other].output(1) == native("compute_sleep", "20")[1]
    assert [p.pid for p in b.list_processes()] == []  # nothing was made for the lost ones
    cluster.stop_machine("d1")


def test_exec_follows_its_process_through_a_crash(cluster: Cluster) -> None:
    """`tender-ray exec --checkpoint-every`'s driver: the machine dies under it, the process
    restarts elsewhere, and what it forwarded is the native output, every byte once."""
    a = cluster.add_machine(_config("e0", every=0.3))
    cluster.add_machine(_config("e1", every=0.3))
    out: list[bytes] = []
    result: list[ExecResult] = []
    runner = threading.Thread(target=lambda: result.append(execute(
        cluster, os.fspath(workload("compute_sleep")), ["150"], [], machine="e0",
        sink=lambda fd, data: out.append(data) if fd == 1 else None)))
    runner.start()
    deadline = time.monotonic() + 30
    while not a.checkpointed():
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.1)
    time.sleep(0.4)
    crash(a)
    runner.join(RUN_TIMEOUT)
    assert result and result[0].exit_status == 0 and result[0].machine == "e1"
    assert b"".join(out) == native("compute_sleep", "150")[1]
    cluster.stop_machine("e1")


@pytest.mark.slow  # ~15 s here: a whole scenario, its Ray actors and its native runs
def test_crash_scenario_restarts_everything_with_native_output(cluster: Cluster) -> None:
    report, events = run_scenario_to_end(read_scenario(ROOT / "configs" / "crash.yaml"),
                                         RUN_TIMEOUT)
    assert report.lost == ()
    assert report.restarts, events
    assert all(r.lost_machine == "m0" and r.machine == "m1" for r in report.restarts)
    for p in report.processes:
        assert p.exit_status == 0 and p.output_matches_native is True, p
    assert report.ok
