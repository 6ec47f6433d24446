"""The migration protocol under every single fault, between real machine actors: a fault is
armed from one machine's config (`MachineConfig.fault`), on the source or the destination, at
each step (before/after create, transform, commit, delete) with each action (raise, exit: the
actor's process dies, drop: the step takes effect but its answer is lost, delay: past the
caller's timeout or the lease). Afterwards exactly one copy of the process runs and ends with
the native run's output, or — the source dead before the commit, no checkpoint — none does and
the destination has given everything back; every surviving machine frees all its frames.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
import ray
from support.clusters import own_cluster
from support.machines import (
    assert_clean,
    finish,
    finish_standby,
    frames_free,
    start_standby,
    wait_until,
)
from support.programs import native_standby

from tender_ray.cluster import Cluster, MachineHandle
from tender_ray.config import FAULT_POINTS, FaultAction, FaultSide, FaultSpec, MachineConfig
from tender_ray.errors import (
    MachineStoppedError,
    TenderError,
    UnknownMachineError,
    UnknownProcessError,
)
from tender_ray.migration.options import MigrationOptions

ARGS = ("2",)  # standby: there for the whole migration, however slow, until told to finish
CALL_TIMEOUT = 3.0  # seconds the source waits for create, commit, abort (and transform here)
LEASE = 2.0  # seconds a destination keeps an arriving migration without a call
DELAY = 2.5 * CALL_TIMEOUT  # a "delay" fault: past the caller's timeout and the lease
OPTIONS = MigrationOptions(timeout=CALL_TIMEOUT)
_names = itertools.count()


def config(name: str, fault: FaultSpec | None = None) -> MachineConfig:
    return MachineConfig(name=name, memory_mib=64, quantum_us=1000, engine="emulated",
                         fault=fault, migration_lease_s=LEASE,
                         migration_call_timeout_s=CALL_TIMEOUT)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster(config(name) for name in ("a", "b")) as c:
        yield c


def expected_holder(side: FaultSide, phase: str, action: FaultAction) -> str:
    """Where the process runs after the fault: "source", "destination" or "lost"."""
    committed_first = phase in ("after_commit", "before_delete", "after_delete")
    if side is FaultSide.DESTINATION:
        # Before the commit took effect the source keeps it; after, it is the destination's,
        # unless the destination died (then its copy died and the source resumes its own).
        if phase == "after_commit" and action is not FaultAction.EXIT:
            return "destination"
        return "source"
    if committed_first:
        return "destination"
    if action is FaultAction.EXIT:
        return "lost"  # the source died holding the only copy (no checkpoint)
    if action is FaultAction.DELAY and phase == "before_create":
        return "destination"  # a slow start, nothing pending anywhere yet: it just goes
    return "source"


def cases() -> Iterator[tuple[FaultSide, str, FaultAction]]:
    for side, points in FAULT_POINTS.items():
        for phase in points:
            if "_" not in phase or phase.startswith("transform_") or phase == "commit":
                continue  # the older names inside transform: tests/unit/test_migration.py
            for action in FaultAction:
                try:
                    FaultSpec(phase=phase, action=action, side=side)
                except ValueError:
                    continue  # e.g. a drop on the source, or before a step
                yield side, phase, action


# Both sides and each action kind, including the two-live-copies regression (the commit's
# answer lost or late after the destination committed) and the source's death.
DEFAULT = {
    (FaultSide.DESTINATION, "after_commit", FaultAction.DROP),
    (FaultSide.DESTINATION, "after_commit", FaultAction.DELAY),
    (FaultSide.DESTINATION, "before_commit", FaultAction.DELAY),
    (FaultSide.DESTINATION, "after_commit", FaultAction.EXIT),
    (FaultSide.DESTINATION, "before_transform", FaultAction.EXIT),
    (FaultSide.DESTINATION, "after_create", FaultAction.RAISE),
    (FaultSide.SOURCE, "before_commit", FaultAction.EXIT),
    (FaultSide.SOURCE, "after_commit", FaultAction.EXIT),
    (FaultSide.SOURCE, "after_transform", FaultAction.RAISE),
    (FaultSide.SOURCE, "after_create", FaultAction.DELAY),
}
MATRIX = [pytest.param(*case, id=f"{case[0].value}-{case[1]}-{case[2].value}",
                       marks=() if case in DEFAULT else pytest.mark.slow)
          for case in cases()]


def alive(machine: MachineHandle) -> bool:
    try:
        machine.ping(timeout=CALL_TIMEOUT)
    except MachineStoppedError:
        return False
    return True


def given_back(machine: MachineHandle) -> bool:
    """No frame used and no resource handed out (what an abort or the lease releases)."""
    return frames_free(machine) and not any(s.live for s in machine.statistics().managers)


def has(machine: MachineHandle, pid: int) -> bool:
    try:
        machine.info(pid)
    except UnknownProcessError:
        return False
    return True


@pytest.mark.parametrize(("side", "phase", "action"), MATRIX)
def test_one_live_copy_after_a_single_fault(cluster: Cluster, side: FaultSide, phase: str,
                                            action: FaultAction) -> None:
    spec = FaultSpec(phase=phase, action=action, side=side, delay_s=DELAY)
    victim = cluster.add_machine(config(f"victim{next(_names)}", spec))
    try:
        if side is FaultSide.SOURCE:
            source, destination = victim, cluster.machine("b")
        else:
            source, destination = cluster.machine("a"), victim
        check_one_live_copy(source, destination, expected_holder(side, phase, action))
    finally:
        cluster.stop_machine(victim.name, graceful=False)


def check_one_live_copy(source: MachineHandle, destination: MachineHandle,
                        holder: str) -> None:
    pid, taken = start_standby(source, *ARGS)
    try:
        source.migrate(pid, destination.name, OPTIONS, timeout=120)
        failed = False
    except TenderError as exc:
        failed = True
        notes = getattr(exc, "__notes__", [])
        assert holder != "destination" or not notes or any(
            destination.name in n for n in notes), notes
    assert failed or holder == "destination"
    survivors = [m for m in (source, destination) if alive(m)]
    copies = [m for m in survivors if has(m, pid)]
    if holder == "lost":
        assert source not in survivors and copies == [], copies
    else:
        want = source if holder == "source" else destination
        assert [m.name for m in copies] == [want.name]
        status, out, err, info = finish_standby(want, pid, taken)
        assert (status, out, err) == native_standby(*ARGS)
        assert [m.destination for m in info.migrations] == (
            [destination.name] if holder == "destination" else [])
    for m in survivors:
        # An abandoned arrival is given back by the abort, or at the latest by the lease.
        wait_until(lambda m=m: given_back(m), timeout=LEASE * 10,
                   what=f"{m.name} to give back every frame and kernel process")
        assert_clean(m)


def test_migration_to_a_cordoned_or_dead_machine_leaves_the_process(cluster: Cluster) -> None:
    a = cluster.machine("a")
    cordoned = cluster.add_machine(config(f"cordoned{next(_names)}"))
    dead = cluster.add_machine(config(f"dead{next(_names)}"))
    try:
        cordoned.cordon()
        pid, taken = start_standby(a, *ARGS)
        with pytest.raises(TenderError, match="cordoned"):
            a.migrate(pid, cordoned.name, OPTIONS, timeout=60)
        ray.kill(dead.actor, no_restart=True)
        with pytest.raises((MachineStoppedError, UnknownMachineError)):  # gone, or never seen
            a.migrate(pid, dead.name, OPTIONS, timeout=60)
        assert a.info(pid).state != "frozen"
        status, out, err, info = finish_standby(a, pid, taken)
        assert (status, out, err) == native_standby(*ARGS) and info.migrations == ()
        assert_clean(a)
        assert_clean(cordoned)
    finally:
        cluster.stop_machine(cordoned.name, graceful=False)
        cluster.stop_machine(dead.name, graceful=False)


def test_kill_during_a_migration_ends_it_where_it_lives(cluster: Cluster) -> None:
    # The destination stalls its commit past the source's wait, so the migration is in
    # flight when the kill comes: the kill waits for the outcome (the source's abort wins),
    # then ends the process where it lives. Nothing runs on, nothing is duplicated.
    a = cluster.machine("a")
    slow = cluster.add_machine(config(f"slow{next(_names)}", FaultSpec(
        phase="before_commit", action=FaultAction.DELAY, delay_s=DELAY)))
    try:
        pid, _ = start_standby(a, *ARGS)  # still running at the kill: it waits to be told
        errors: list[BaseException] = []

        def migrate() -> None:
            try:
                a.migrate(pid, slow.name, OPTIONS, timeout=120)
            except TenderError as exc:
                errors.append(exc)

        moving = threading.Thread(target=migrate)
        moving.start()
        wait_until(lambda: a.info(pid).state == "frozen" or bool(errors), timeout=30,
                   what="the freeze")
        assert not errors, errors
        a.kill(pid)  # waits for the migration's outcome, then kills it here
        moving.join(120)
        assert len(errors) == 1, errors  # the abort won: the process never left a
        assert not has(slow, pid)
        status, _, _, _ = finish(a, pid)
        assert status == 128 + 9
        wait_until(lambda: given_back(slow), timeout=LEASE * 10, what="slow to give back")
        assert_clean(slow)
        assert_clean(a)
    finally:
        cluster.stop_machine(slow.name, graceful=False)
