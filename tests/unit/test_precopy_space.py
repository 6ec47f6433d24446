"""The space a pre-copy builds at its destination before the freeze (`kernel.staged_space`),
and the freeze that only patches it: a layout that changed between the live image and the
freeze, pages staged where the process has none, the commit that goes out with the freeze's
transform (and its failures), and the live rounds' account of what the destination's copy
lacks. Machines of one process (no Ray); each process checks its whole heap when it ends.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from support.machines import assert_clean, finish, start, wait_ready
from support.programs import WRITESET_READY, native_writeset

from tender_ray.config import FaultAction, FaultSpec
from tender_ray.errors import TenderError
from tender_ray.kernel.machine import Machine
from tender_ray.migration import precopy
from tender_ray.migration.image import AreaImage, ProcessImage
from tender_ray.migration.options import MigrationMode, MigrationOptions
from tender_ray.migration.protocol import LocalPeer, run_migration
from tender_ray.migration.record import Outcome
from tender_ray.migration.transports import LocalTransport
from tender_ray.resources.dirty_pages import WrittenPages
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE

MakeMachine = Callable[..., Machine]
PRECOPY = MigrationOptions(mode=MigrationMode.PRECOPY)
ARGS = ("8", "1")  # writeset: 8 MiB of heap, 1 MiB of it rewritten without pause
# Where the destination is told of an area the process never had (far from any of its own).
ELSEWHERE = 0x2000_0000_0000


def vpns(*pages: int) -> npt.NDArray[np.int64]:
    return np.array(pages, dtype=np.int64)


def test_live_rounds_know_what_the_destination_lacks() -> None:
    live = precopy.LiveRounds()
    live.sent(vpns(1, 2, 3, 4))
    live.gone(vpns(2, 3))  # unmapped after they were staged
    live.sent(vpns(3))  # present and written again: staged again
    live.pending = vpns(5)  # taken by the last round, which did not send them
    at = live.at_freeze(WrittenPages(vpns(1, 6), vpns(4), epoch=3))
    assert at.send.tolist() == [1, 5, 6]  # written since, or never sent
    assert at.stale.tolist() == [2, 4]  # gone since they were staged


def pair(make_machine: MakeMachine, **fault: Any) -> tuple[Machine, Machine]:
    a = make_machine(name="a", engine="emulated", memory_mib=64, quantum_us=1000)
    b = make_machine(name="b", engine="emulated", memory_mib=64, quantum_us=1000,
                     **({"fault": FaultSpec(**fault)} if fault else {}))
    return a, b


def end_exact(machine: Machine, pid: int, taken: bytes) -> None:
    """Tell writeset to verify its heap and end: its output is the native run's."""
    machine.kill(pid, int(signal.SIGUSR1))
    status, out, err, _ = finish(machine, pid)
    assert (status, taken + out, err) == native_writeset(*ARGS)


class ReshapingPeer(LocalPeer):
    """A destination whose live image says another layout than the freeze's will, as for a
    process that resized, dropped and mapped areas between the two: its largest area is
    told at half its size, another is left out, and one it never had is added, with pages
    staged in it."""

    live_images = 0

    def transform(self, mid: str, image: ProcessImage,
                  options: MigrationOptions) -> dict[str, float]:
        if image.precopy is not None and image.precopy.live:
            self.live_images += 1
            areas = sorted(image.other_areas, key=lambda a: a.npages)
            end = ELSEWHERE + 8 * PAGE_SIZE
            assert len(areas) >= 2 and not any(
                a.start < end and a.start + a.npages * PAGE_SIZE > ELSEWHERE for a in areas)
            halved = dataclasses.replace(areas[-1], npages=areas[-1].npages // 2)
            never = AreaImage("", areas[-1].kind, ELSEWHERE, 8, areas[-1].perms, ())
            fake = (ELSEWHERE >> PAGE_SHIFT) + np.arange(4, dtype=np.int64)
            self.machine.precopy_pages(mid, fake, (np.full((4, PAGE_SIZE), 0xAB, np.uint8),),
                                       self.transport)
            image = dataclasses.replace(image, other_areas=(*areas[1:-1], halved, never))
        return super().transform(mid, image, options)


def test_freeze_rebuilds_the_areas_whose_layout_changed(make_machine: MakeMachine) -> None:
    a, b = pair(make_machine)
    pid = start(a, "writeset", *ARGS)
    taken = wait_ready(a, pid, line=WRITESET_READY)
    transport = LocalTransport()
    peer = ReshapingPeer(b, transport)
    resident = a.info(pid).resident_pages
    record = run_migration(a, pid, peer, transport, PRECOPY)
    assert record.ok and record.mode == "precopy" and peer.live_images == 1
    assert b.info(pid).resident_pages >= resident - 16  # its pages, not the area it lacks
    assert_clean(a)
    end_exact(b, pid, taken)
    assert_clean(b)  # the pages staged in the area it never had are freed


class CountingPeer(LocalPeer):
    commits = 0

    def commit(self, mid: str) -> Outcome:
        self.commits += 1
        return super().commit(mid)


def test_the_commit_goes_out_with_the_freezes_transform(make_machine: MakeMachine) -> None:
    a, b = pair(make_machine)
    pid = start(a, "writeset", *ARGS)
    taken = wait_ready(a, pid, line=WRITESET_READY)
    transport = LocalTransport()
    for source, destination in ((a, b), (b, a), (a, b)):
        peer = CountingPeer(destination, transport)
        record = run_migration(source, pid, peer, transport, PRECOPY)
        assert record.ok and record.mode == "precopy" and record.rounds >= 1
        assert peer.commits == 0  # one call while frozen: transform and commit
        assert "commit" in record.phases and record.freeze_seconds > 0
        assert_clean(source)
    end_exact(b, pid, taken)
    assert_clean(b)


@pytest.mark.parametrize("phase", ["commit", "before_commit"])
def test_a_freeze_refused_at_the_destination_leaves_it_at_its_source(
        make_machine: MakeMachine, phase: str) -> None:
    """The transform fails at its end, or the commit in the same call is refused: the
    source asks for the outcome (aborted), and the process runs on where it was."""
    a, b = pair(make_machine, phase=phase)
    pid = start(a, "writeset", *ARGS)
    taken = wait_ready(a, pid, line=WRITESET_READY)
    transport = LocalTransport()
    with pytest.raises(TenderError, match=f"fault injected at phase {phase}"):
        run_migration(a, pid, LocalPeer(b, transport), transport, PRECOPY)
    assert b.faults.phase == ""  # it fired
    assert a.info(pid).state not in ("frozen", "zombie") and not a.is_tracked(pid)
    assert b.migration_totals["in_aborted"] == 1
    assert_clean(b)  # the built space and the staged pages are freed
    end_exact(a, pid, taken)


def test_a_lost_answer_to_the_freeze_is_settled_as_committed(
        make_machine: MakeMachine) -> None:
    """The destination commits, and the answer of the call is lost: the source asks, hears
    it committed, and deletes its copy; the process runs at the destination, once."""
    a, b = pair(make_machine, phase="after_commit", action=FaultAction.DROP)
    pid = start(a, "writeset", *ARGS)
    taken = wait_ready(a, pid, line=WRITESET_READY)
    transport = LocalTransport()
    record = run_migration(a, pid, LocalPeer(b, transport), transport, PRECOPY)
    assert record.ok and record.mode == "precopy"
    assert b.faults.phase == ""
    assert_clean(a)
    end_exact(b, pid, taken)
    assert_clean(b)
