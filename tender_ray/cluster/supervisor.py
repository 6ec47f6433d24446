"""The supervisor: what happens to a machine's processes when the machine dies (its actor is
gone: Ray answers its calls with ActorDiedError, or its worker was killed).

Each process that was there and has a checkpoint restarts from its last one on a live machine
(the least loaded one that takes processes; the balancer, when one runs, moves it on from there
like any other), the others are lost, each with the reason. A process another restarter (an
`exec` driver, a cluster's restart watch) brought back already is neither: the restart's claim
on its checkpoint refuses the second copy, and says where the first runs. Killing a machine's
worker process (`crash`) is the drill: a real crash, as its processes know it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tender_ray.cluster.cluster import Cluster
from tender_ray.cluster.handles import CALL_TIMEOUT, MachineHandle
from tender_ray.errors import (
    CheckpointError,
    MachineError,
    MachineStoppedError,
    NoReplyError,
    TenderError,
)
from tender_ray.migration.checkpoint import AlreadyRestartedError, RestartRecord

DEATH_PATIENCE = 30.0  # seconds a killed machine's actor may take to be reported dead


@dataclass(frozen=True)
class LostProcess:
    """A process of a dead machine that could not be brought back, and why."""

    pid: int
    machine: str  # the machine it died with
    reason: str  # "no checkpoint", or what was wrong with the checkpoint


@dataclass(frozen=True)
class RestartedElsewhere:
    """A process of a dead machine that another restart had brought back already."""

    pid: int
    machine: str  # where that restart runs it
    at: float  # time.time() of that restart (or of the checkpoint its copy took since)
    reason: str  # the refusal, as the store said it


@dataclass(frozen=True)
class Recovery:
    """What became of a dead machine's processes."""

    machine: str
    restarted: tuple[RestartRecord, ...]
    lost: tuple[LostProcess, ...]
    elsewhere: tuple[RestartedElsewhere, ...] = ()  # handled by another restarter


def crash(handle: MachineHandle) -> int:
    """Kill the machine actor's worker process with SIGKILL (only that pid), as a crash would;
    wait until Ray reports the actor dead. The pid killed."""
    pid = handle.worker_pid(timeout=CALL_TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + DEATH_PATIENCE
    while time.monotonic() < deadline:
        try:
            handle.ping(timeout=2.0)
        except NoReplyError:
            pass  # dying, not yet reported dead
        except MachineStoppedError:
            return pid
        time.sleep(0.1)
    raise MachineError(f"machine {handle.name}'s worker {pid} was killed but its actor still "
                       f"answers after {DEATH_PATIENCE} s")


def _targets(cluster: Cluster, dead: str) -> list[MachineHandle]:
    """The live machines that take processes, least loaded first."""
    # Their statistics, not a poll: a poll would take output the driver has yet to collect.
    asked = {name: h.statistics_async() for name, h in cluster.machines.items() if name != dead}
    loads: list[tuple[float, str]] = []
    for name, pending in asked.items():
        try:
            stats = pending.result(CALL_TIMEOUT)
        except TenderError:
            continue  # dead or silent too: no place to restart anything
        if not stats.cordoned:
            loads.append((stats.load, name))
    return [cluster.machine(name) for _, name in sorted(loads)]


def recover(cluster: Cluster, dead: str, pids: Iterable[int]) -> Recovery:
    """Restart the processes `pids` that ran on the dead machine `dead` from their last
    checkpoints on live machines; the others are lost, with the reason. The dead machine
    leaves the cluster first; a process of `pids` found alive on another machine (it had
    moved) is left alone, in neither list, and one that another restarter brought back
    meanwhile is in `elsewhere`."""
    # Every checkpoint of `dead`'s copies was taken before now; a newer one is another copy's.
    lost_at = time.time()
    if dead in cluster.machines:
        cluster.stop_machine(dead, graceful=False)
    targets = _targets(cluster, dead)
    # A process whose migration away committed just before the crash lives on: it must not
    # run twice.
    alive = {p.pid for procs in cluster.list_all().values()
             if not isinstance(procs, BaseException) for p in procs}
    restarted: list[RestartRecord] = []
    lost: list[LostProcess] = []
    elsewhere: list[RestartedElsewhere] = []
    for pid in (pid for pid in pids if pid not in alive):
        if not targets:
            lost.append(LostProcess(pid, dead, "no live machine takes processes"))
            continue
        reason = "no live machine took it"
        for i, target in enumerate(targets):
            try:
                restarted.append(target.restart(pid, timeout=120.0, lost_machine=dead,
                                                lost_at=lost_at))
                targets.append(targets.pop(i))  # the next one goes elsewhere first
                reason = ""
                break
            except AlreadyRestartedError as exc:  # another restarter's copy runs: handled
                elsewhere.append(RestartedElsewhere(pid, exc.machine, exc.at, str(exc)))
                reason = ""
                break
            except CheckpointError as exc:  # missing or corrupt: the same store for every
                reason = str(exc)             # machine, so no other would do better
                break
            except TenderError as exc:  # the target broke or refused (cordoned, no room);
                reason = str(exc)           # if it restarted it after all, the next target's
                                            # claim is refused: no second copy
        if reason:
            lost.append(LostProcess(pid, dead, "no checkpoint" if "no checkpoint" in reason
                                    else reason))
    return Recovery(dead, tuple(restarted), tuple(lost), tuple(elsewhere))


__all__ = ["DEATH_PATIENCE", "LostProcess", "Recovery", "RestartedElsewhere", "crash",
           "recover"]
