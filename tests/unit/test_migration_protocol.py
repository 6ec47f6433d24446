"""The migration protocol under single faults, without Ray: machines of this process joined by
`LocalPeer`, faults armed from `MachineConfig.fault` on either side. After every fault exactly
one copy of the process runs (its output is the native run's) and every machine gives back
every frame; plus the destination's lease, idempotent commit/abort and the outcome by id.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import cast

import pytest
from pydantic import ValidationError
from support.leases import ARGS, LEASE, MakeMachine, only_on, short_lease_machines
from support.machines import assert_clean, finish_standby, frames_free, start_standby, wait_until
from support.programs import native_standby

from tender_ray.config import FaultAction, FaultSide, FaultSpec
from tender_ray.errors import (
    LeaseExpiredError,
    MachineStoppedError,
    MigrationError,
    NoReplyError,
    OutcomeUnknownError,
    ProcessStateError,
    TenderError,
)
from tender_ray.kernel.machine import Machine
from tender_ray.migration.faults import FaultInjected
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.protocol import migrate_local, new_migration_id, settle
from tender_ray.migration.record import Outcome
from tender_ray.migration.transports import LocalTransport


@pytest.fixture
def new_machine(make_machine: MakeMachine) -> MakeMachine:
    return short_lease_machines(make_machine)


def last_mid(source: Machine) -> str:
    mid = source.recent_migrations()[-1].migration_id
    assert mid.startswith(source.name + ":")
    return mid


def fault(phase: str, action: FaultAction = FaultAction.RAISE,
          side: FaultSide = FaultSide.DESTINATION, delay_s: float = 0.0) -> FaultSpec:
    return FaultSpec(phase=phase, action=action, side=side, delay_s=delay_s)


# --- the two-live-copies regression: a commit whose answer is lost -----------------------------

@pytest.mark.parametrize("action", [FaultAction.DROP, FaultAction.RAISE])
def test_commit_answer_lost_after_commit_leaves_one_copy(new_machine: MakeMachine,
                                                         action: FaultAction) -> None:
    # The destination commits and starts the process, then its answer is lost (or is an
    # error). Before the protocol settled by id, the source then aborted (finding nothing)
    # and thawed its own copy: two live copies. Now it asks, hears COMMITTED, and deletes.
    a, b = new_machine("m0"), new_machine("m1", fault=fault("after_commit", action))
    pid, taken = start_standby(a, *ARGS)
    record = migrate_local(a, pid, b)
    assert record.ok and b.faults.phase == ""  # the fault fired
    assert b.outcome(record.migration_id) is Outcome.COMMITTED
    only_on(b, a, pid, taken)
    assert_clean(a)
    assert_clean(b)


def test_commit_refused_before_it_took_effect_resumes_the_source(
        new_machine: MakeMachine) -> None:
    a, b = new_machine("m0"), new_machine("m1", fault=fault("before_commit"))
    pid, taken = start_standby(a, *ARGS)
    with pytest.raises(FaultInjected) as caught:
        migrate_local(a, pid, b)
    assert any("runs on at m0" in n for n in caught.value.__notes__)
    mid = last_mid(a)
    assert b.outcome(mid) is Outcome.ABORTED and b.commit(mid) is Outcome.ABORTED
    assert_clean(b)
    only_on(a, b, pid, taken)
    assert_clean(a)


@pytest.mark.parametrize("phase", ["before_create", "after_create", "before_transform",
                                   "after_transform"])
def test_destination_fault_before_commit_keeps_the_source_copy(new_machine: MakeMachine,
                                                               phase: str) -> None:
    a, b = new_machine("m0"), new_machine("m1", fault=fault(phase))
    pid, taken = start_standby(a, *ARGS)
    with pytest.raises(FaultInjected, match=phase):
        migrate_local(a, pid, b)
    assert_clean(b)
    assert b.migration_totals["in_aborted"] == 1
    only_on(a, b, pid, taken)
    assert_clean(a)


# --- the source's own faults ------------------------------------------------------------------

@pytest.mark.parametrize(("phase", "moved"), [
    ("before_create", False), ("after_create", False), ("before_transform", False),
    ("after_transform", False), ("before_commit", False),
    ("after_commit", True), ("before_delete", True), ("after_delete", True)])
def test_source_fault_at_each_point(new_machine: MakeMachine, phase: str, moved: bool) -> None:
    a = new_machine("m0", fault=fault(phase, side=FaultSide.SOURCE))
    b = new_machine("m1")
    pid, taken = start_standby(a, *ARGS)
    with pytest.raises(FaultInjected) as caught:
        migrate_local(a, pid, b)
    where = "runs at m1" if moved else "runs on at m0"
    assert any(where in n for n in caught.value.__notes__), caught.value.__notes__
    assert b.outcome(last_mid(a)) is (Outcome.COMMITTED if moved else Outcome.ABORTED) or (
        phase == "before_create" and b.outcome(last_mid(a)) is Outcome.UNKNOWN)
    holder, other = (b, a) if moved else (a, b)
    only_on(holder, other, pid, taken)
    assert_clean(a)
    assert_clean(b)


def test_source_silent_past_the_lease_cannot_commit(new_machine: MakeMachine) -> None:
    # The source stalls after the transform, longer than the destination's lease: the
    # destination releases everything and the late commit answers EXPIRED.
    a = new_machine("m0", fault=fault("before_commit", FaultAction.DELAY, FaultSide.SOURCE,
                                      delay_s=LEASE * 4))
    b = new_machine("m1")
    pid, taken = start_standby(a, *ARGS)
    with pytest.raises(LeaseExpiredError):
        migrate_local(a, pid, b)
    mid = last_mid(a)
    assert b.outcome(mid) is Outcome.EXPIRED and b.commit(mid) is Outcome.EXPIRED
    assert b.migration_totals["in_expired"] == 1
    assert_clean(b)
    only_on(a, b, pid, taken)
    assert_clean(a)


# --- the destination's tables: ids, the lease, idempotent commit and abort ---------------------

def test_commit_and_abort_are_idempotent_and_exclusive(new_machine: MakeMachine) -> None:
    a, b = new_machine("m0"), new_machine("m1")
    pid, taken = start_standby(a, *ARGS)
    mid = migrate_local(a, pid, b).migration_id
    assert b.commit(mid) is Outcome.COMMITTED  # again: the same answer, nothing added
    assert b.abort(mid) is Outcome.COMMITTED  # refused: it runs there
    assert b.outcome(mid) is Outcome.COMMITTED
    assert b.outcome(new_migration_id("m0")) is Outcome.UNKNOWN
    only_on(b, a, pid, taken)
    assert_clean(b)


def test_a_late_create_after_an_abort_makes_nothing(new_machine: MakeMachine) -> None:
    b = new_machine("m1")
    mid = new_migration_id("m0")
    assert b.abort(mid) is Outcome.ABORTED  # the source gave up before its create arrived
    with pytest.raises(MigrationError, match="already known"):
        b.create_incoming(mid, "m0", 4242, 10, True)
    assert b.incoming == {} and b.incoming_migrations == {}


def test_one_pid_arrives_by_one_migration_only(new_machine: MakeMachine) -> None:
    b = new_machine("m1", migration_lease_s=600)  # the first stays pending however slow
    first, second = new_migration_id("m0"), new_migration_id("m2")
    b.create_incoming(first, "m0", 4242, 10, True)
    with pytest.raises(MigrationError, match=f"arriving by migration {first}"):
        b.create_incoming(second, "m2", 4242, 10, True)
    with pytest.raises(MigrationError, match="already known"):
        b.create_incoming(first, "m0", 4243, 10, True)
    assert b.abort(first) is Outcome.ABORTED
    assert_clean(b)


def test_source_dead_after_create_is_released_by_the_lease(new_machine: MakeMachine) -> None:
    # A source that dies after its create never calls again: the lease reaper gives back the
    # kernel process and its pid, and the migration can never commit.
    b = new_machine("m1")
    mid = new_migration_id("m0")
    created = time.monotonic()
    b.create_incoming(mid, "m0", 4242, 10, True)
    outcome = b.outcome(mid)  # pending, unless the lease passed meanwhile (a busy host)
    assert outcome is Outcome.PENDING or (
        outcome is Outcome.EXPIRED and time.monotonic() - created >= LEASE), outcome
    wait_until(lambda: b.outcome(mid) is Outcome.EXPIRED, timeout=LEASE * 20,
               what="the lease to expire")
    assert b.incoming == {} and b.commit(mid) is Outcome.EXPIRED
    with pytest.raises(LeaseExpiredError):
        # (an image the expired call refuses before reading any of it)
        b.transform(cast(ProcessImage, SimpleNamespace(pid=4242)), LocalTransport(),
                    MigrationOptions(), mid)
    # The reaper decides EXPIRED first (so no late call can commit), then gives back.
    wait_until(lambda: not any(s.live for s in b.statistics().managers), timeout=5,
               what="the expired migration's resources to be given back")
    assert_clean(b)


def test_abort_during_a_transform_releases_when_it_ends(new_machine: MakeMachine) -> None:
    # The source timed out on a transform that still runs: its abort wins, the transform's
    # end releases what it built, and a commit afterwards is refused.
    a = new_machine("m0")
    b = new_machine("m1", fault=fault("transform_start", FaultAction.DELAY, delay_s=0.5))
    pid, taken = start_standby(a, *ARGS)
    frames = a.freeze(pid)
    mid = new_migration_id("m0")
    transport = LocalTransport()
    b.create_incoming(mid, "m0", pid, frames, True)
    image = a.export_image(pid, transport, MigrationOptions())
    errors: list[BaseException] = []

    def transform() -> None:
        try:
            b.transform(image, transport, MigrationOptions(), mid)
        except TenderError as exc:
            errors.append(exc)

    worker = threading.Thread(target=transform)
    worker.start()
    wait_until(lambda: b.faults.phase == "", timeout=10, what="the transform to stall")
    assert b.abort(mid) is Outcome.ABORTED
    assert b.commit(mid) is Outcome.ABORTED
    assert worker.is_alive() and not frames_free(b)  # held while the transform runs
    worker.join(10)
    assert len(errors) == 1 and isinstance(errors[0], MigrationError), errors
    assert_clean(b)
    a.thaw(pid)
    only_on(a, b, pid, taken)
    assert_clean(a)


def test_a_handed_over_process_thaws_only_for_its_migration(new_machine: MakeMachine) -> None:
    a = new_machine("m0")
    pid, taken = start_standby(a, *ARGS)
    a.freeze(pid)
    a.hand_over(pid, "m0:1:x")
    with pytest.raises(ProcessStateError, match="handed over"):
        a.thaw(pid)
    a.thaw(pid, "m0:1:x")
    status, out, err, _ = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby(*ARGS)
    assert_clean(a)


# --- settling a lost commit -------------------------------------------------------------------

class FlakyPeer:
    """A peer whose abort fails with the given errors first, then answers `answer`."""

    name = "flaky"

    def __init__(self, errors: list[BaseException], answer: Outcome) -> None:
        self.errors = errors
        self.answer = answer
        self.asked = 0

    def abort(self, mid: str) -> Outcome:
        self.asked += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


def test_settle_asks_again_until_an_answer() -> None:
    peer = FlakyPeer([NoReplyError("late"), FaultInjected("drill")], Outcome.COMMITTED)
    assert settle(peer, "m0:1:x", seconds=10) is Outcome.COMMITTED  # type: ignore[arg-type]
    assert peer.asked == 3


def test_settle_a_dead_destination_is_none() -> None:
    peer = FlakyPeer([MachineStoppedError("gone")], Outcome.COMMITTED)
    assert settle(peer, "m0:1:x", seconds=10) is None  # type: ignore[arg-type]


def test_settle_gives_up_without_guessing() -> None:
    peer = FlakyPeer([NoReplyError("late")] * 1000, Outcome.COMMITTED)
    with pytest.raises(OutcomeUnknownError, match="stays frozen"):
        settle(peer, "m0:1:x", seconds=0.2)  # type: ignore[arg-type]
    assert 2 <= peer.asked < 1000


# --- the fault drill's configuration ----------------------------------------------------------

def test_fault_spec_points_belong_to_their_side() -> None:
    FaultSpec(phase="before_delete", side=FaultSide.SOURCE)
    FaultSpec(phase="commit")  # the older names stay
    with pytest.raises(ValidationError, match="no fault point of the destination"):
        FaultSpec(phase="before_delete")
    with pytest.raises(ValidationError, match="no fault point of the source"):
        FaultSpec(phase="transform_space", side=FaultSide.SOURCE)
    with pytest.raises(ValidationError, match="after_"):
        FaultSpec(phase="before_commit", action=FaultAction.DROP)
