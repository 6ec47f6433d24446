"""The source renews its migration's lease while it exports and transforms, without Ray:
machines of this process joined by `LocalPeer`. A live source slower than the lease (a slow
transport, a stall inside the step) still commits exactly once; a source silent after the
step still has its migration expired; and the renewals stop with the step, or when the
migration is no longer pending at the destination.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.leases import ARGS, KEPT_LEASE, LEASE, MakeMachine, only_on, short_lease_machines
from support.machines import SlowTransport, assert_clean, start_standby

from tender_ray.config import FaultAction, FaultSide, FaultSpec
from tender_ray.errors import LeaseExpiredError, NoReplyError
from tender_ray.migration.protocol import migrate_local, renewing
from tender_ray.migration.record import Outcome


@pytest.fixture
def new_machine(make_machine: MakeMachine) -> MakeMachine:
    return short_lease_machines(make_machine)


def test_an_export_slower_than_the_lease_commits_once(new_machine: MakeMachine) -> None:
    # Every page block takes 3/4 of a lease to put: the export alone outlasts the lease
    # several times over, with no call of the source's between create and transform.
    a, b = (new_machine(name, migration_lease_s=KEPT_LEASE) for name in ("m0", "m1"))
    pid, taken = start_standby(a, *ARGS)
    transport = SlowTransport(KEPT_LEASE * 0.75)
    record = migrate_local(a, pid, b, transport=transport)
    assert record.ok and record.phases["export"] > 2 * KEPT_LEASE, record.phases
    assert b.outcome(record.migration_id) is Outcome.COMMITTED
    assert b.migration_totals["in_expired"] == 0 and b.migration_totals["in_ok"] == 1
    assert a.migration_totals["out_ok"] == 1 and not a.migration_totals["out_failed"]
    only_on(b, a, pid, taken)
    assert_clean(a)
    assert_clean(b)


def test_a_source_stalled_inside_the_step_commits_once(new_machine: MakeMachine) -> None:
    # The source stalls three leases long just before its transform call (the fault drill's
    # "delay"): alive, inside the step, so the lease is kept.
    a = new_machine("m0", migration_lease_s=KEPT_LEASE,
                    fault=FaultSpec(phase="before_transform", action=FaultAction.DELAY,
                                    side=FaultSide.SOURCE, delay_s=KEPT_LEASE * 3))
    b = new_machine("m1", migration_lease_s=KEPT_LEASE)
    pid, taken = start_standby(a, *ARGS)
    record = migrate_local(a, pid, b)
    assert record.ok and b.outcome(record.migration_id) is Outcome.COMMITTED
    assert b.migration_totals["in_expired"] == 0
    only_on(b, a, pid, taken)
    assert_clean(a)
    assert_clean(b)


def test_a_source_silent_after_a_slow_export_still_expires(new_machine: MakeMachine) -> None:
    # The slow export is renewed through; then the source goes silent before its commit for
    # four leases: the renewals stopped with the step, so the destination lets it go.
    a = new_machine("m0", fault=FaultSpec(phase="before_commit", action=FaultAction.DELAY,
                                          side=FaultSide.SOURCE, delay_s=LEASE * 4))
    b = new_machine("m1")
    pid, taken = start_standby(a, *ARGS)
    with pytest.raises(LeaseExpiredError):
        migrate_local(a, pid, b, transport=SlowTransport(LEASE * 1.5))
    mid = a.recent_migrations()[-1].migration_id
    assert b.outcome(mid) is Outcome.EXPIRED and b.commit(mid) is Outcome.EXPIRED
    assert b.migration_totals["in_expired"] == 1
    assert_clean(b)
    only_on(a, b, pid, taken)
    assert_clean(a)


class CountingPeer:
    """A peer that only answers renewals: with `answers` in turn (the last one repeated), or
    the error an answer is."""

    name = "dst"

    def __init__(self, *answers: Outcome | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.lock = threading.Lock()

    def renew(self, mid: str) -> Outcome:
        with self.lock:
            self.calls += 1
            answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _wait_calls(peer: CountingPeer, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while peer.calls < n:
        assert time.monotonic() < deadline, f"{peer.calls} renewals, wanted {n}"
        time.sleep(0.005)


def _renewer(mid: str) -> threading.Thread:
    """The thread renewing migration `mid`'s lease."""
    (thread,) = [t for t in threading.enumerate() if t.name == f"renew {mid}"]
    return thread


def test_renewals_run_with_the_step_and_stop_with_it() -> None:
    peer = CountingPeer(Outcome.PENDING)
    with renewing(peer, "m0:1:x", 0.01):  # type: ignore[arg-type]
        _wait_calls(peer, 3)
        renewer = _renewer("m0:1:x")
        assert renewer.is_alive()  # renewing as long as the step runs
    renewer.join(10)  # the step ended: its renewals end (one in flight may still land)
    assert not renewer.is_alive(), "renewals went on after the step"


def test_renewals_stop_at_a_migration_no_longer_pending() -> None:
    peer = CountingPeer(Outcome.PENDING, Outcome.EXPIRED)
    with renewing(peer, "m0:1:x", 0.01):  # type: ignore[arg-type]
        renewer = _renewer("m0:1:x")
        renewer.join(10)  # while the step still runs: nothing left to keep
        assert not renewer.is_alive(), "renewals went on for an expired migration"
        assert peer.calls == 2  # no third renewal


def test_a_lost_renewal_is_tried_again() -> None:
    peer = CountingPeer(NoReplyError("late"), NoReplyError("late"), Outcome.PENDING)
    with renewing(peer, "m0:1:x", 0.01):  # type: ignore[arg-type]
        _wait_calls(peer, 4)  # the two lost ones did not stop the renewals
