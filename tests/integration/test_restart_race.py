"""Two restarters of one crashed process on real Ray actors: however they race — two restart
calls on two machines at once, or two supervisors (say an `exec` driver and `up`'s restart
watch) each recovering the dead machine through a view of the cluster that offers it another
machine — exactly one copy runs, the other restarter is told where it runs (handled, not
lost), and the process's output is byte-identical to its native run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.clusters import own_cluster
from support.programs import native, workload

from tender_ray.cli.scenario.run import Tracked
from tender_ray.cluster import Cluster, MachineHandle
from tender_ray.cluster.supervisor import Recovery, crash, recover
from tender_ray.config import CheckpointSpec, Engine, MachineConfig
from tender_ray.migration.checkpoint import AlreadyRestartedError, RestartRecord

RUN_TIMEOUT = 120.0
ROUNDS = "150"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster() as c:
        yield c


def _config(name: str) -> MachineConfig:
    return MachineConfig(name=name, memory_mib=96, computations=1, engine=Engine.EMULATED,
                         checkpoint=CheckpointSpec(every=0.3))


def _checkpointed_then_crashed(cluster: Cluster, a: MachineHandle) -> int:
    """compute_sleep run on `a` until it has a checkpoint and a little past it, then `a`'s
    worker killed; its pid."""
    pid = a.exec(workload("compute_sleep").read_bytes(), "compute_sleep",
                 ["compute_sleep", ROUNDS])
    deadline = time.monotonic() + 30
    while pid not in a.checkpointed():
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.1)
    time.sleep(0.4)  # run past the checkpoint, which the restart does again
    crash(a)
    return pid


def _holders(cluster: Cluster, pid: int) -> list[str]:
    return sorted(name for name, procs in cluster.list_all().items()
                  if not isinstance(procs, BaseException) and any(p.pid == pid for p in procs))


def _follow_to_native(cluster: Cluster, pid: int) -> None:
    """Poll every machine until `pid` ends; its stdout, by offset, is the native one."""
    tracked = Tracked(arrival=None, where="")  # type: ignore[arg-type]
    deadline = time.monotonic() + RUN_TIMEOUT
    ended = False
    while not ended:
        assert time.monotonic() < deadline, f"{pid} did not end"
        assert len(_holders(cluster, pid)) <= 1, "two copies run"
        for result in cluster.poll_all().values():
            if isinstance(result, BaseException):
                continue
            for chunk in result.output:
                if chunk.pid == pid:
                    tracked.chunks[chunk.fd][chunk.offset] = chunk.data
            ended = ended or any(i.pid == pid and i.exit_status == 0 for i in result.ended)
        time.sleep(0.05)
    assert tracked.output(1) == native("compute_sleep", ROUNDS)[1]


def _race(*calls: Any) -> list[Any]:
    """Run the calls at once (each in a thread, released together); their results or
    errors, in order."""
    go = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        go.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the loser's refusal is a result here
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_TIMEOUT)
    return results


def test_two_restart_calls_on_two_machines_make_one_copy(cluster: Cluster) -> None:
    a = cluster.add_machine(_config("x0"))
    b = cluster.add_machine(_config("x1"))
    c = cluster.add_machine(_config("x2"))
    pid = _checkpointed_then_crashed(cluster, a)
    cluster.stop_machine("x0", graceful=False)
    lost_at = time.time()
    results = _race(lambda: b.restart(pid, timeout=RUN_TIMEOUT, lost_machine="x0",
                                      lost_at=lost_at),
                    lambda: c.restart(pid, timeout=RUN_TIMEOUT, lost_machine="x0",
                                      lost_at=lost_at))
    records = [r for r in results if isinstance(r, RestartRecord)]
    refused = [r for r in results if isinstance(r, AlreadyRestartedError)]
    assert len(records) == 1 and len(refused) == 1, results
    winner = records[0].machine
    # The refusal crossed the actor boundary whole: who runs it, and since when.
    assert refused[0].machine == winner and refused[0].pid == pid
    assert f"already restarted from checkpoint {records[0].seq} on machine {winner}" in str(
        refused[0])
    assert _holders(cluster, pid) == [winner]
    loser = "x2" if winner == "x1" else "x1"
    assert cluster.machine(loser).statistics().checkpoints.get("restarts", 0) == 0
    _follow_to_native(cluster, pid)
    cluster.stop_machine("x1")
    cluster.stop_machine("x2")


def _view(cluster: Cluster, names: list[str]) -> Cluster:
    """Another driver's view of some of the cluster's machines (as `up`'s restart watch
    keeps one): the same actors, found by name."""
    view = Cluster(prefix=cluster.prefix, watch_drains=False)
    view.attach(dict.fromkeys(names, 0), balancer=False)
    return view


def test_two_supervisors_recovering_one_crash_restart_it_once(cluster: Cluster) -> None:
    a = cluster.add_machine(_config("y0"))
    cluster.add_machine(_config("y1"))
    cluster.add_machine(_config("y2"))
    # Each supervisor sees the dead machine and one live one: its restart goes there.
    first, second = _view(cluster, ["y0", "y1"]), _view(cluster, ["y0", "y2"])
    try:
        pid = _checkpointed_then_crashed(cluster, a)
        results = _race(lambda: recover(first, "y0", [pid]),
                        lambda: recover(second, "y0", [pid]))
        assert all(isinstance(r, Recovery) for r in results), results
        recoveries: list[Recovery] = results
        assert [r.lost for r in recoveries] == [(), ()]
        restarted = [x for r in recoveries for x in r.restarted]
        elsewhere = [x for r in recoveries for x in r.elsewhere]
        assert len(restarted) == 1 and len(elsewhere) == 1, recoveries
        assert elsewhere[0].pid == pid and elsewhere[0].machine == restarted[0].machine
        cluster.stop_machine("y0", graceful=False)  # the fixture's cluster forgets it too
        assert _holders(cluster, pid) == [restarted[0].machine]
        _follow_to_native(cluster, pid)
    finally:
        first.forget()
        second.forget()
    cluster.stop_machine("y1")
    cluster.stop_machine("y2")
