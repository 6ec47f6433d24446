"""Content-addressed text: a migration to a machine that already maps the same text (another
process of the program runs there) sends no text page; the arriving process maps those frames
read-only. Shared frames are counted per mapper, so one process ending never frees text the
other still runs, and text made writable is copied first (copy on write).

Every program still ends with exactly its native output, on both engines.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from support.engines import ENGINES
from support.machines import assert_clean, finish_standby, start_standby
from support.programs import native_standby

from tender_ray.kernel import address_space as vm
from tender_ray.kernel.machine import Machine
from tender_ray.migration.options import MigrationMode, MigrationOptions
from tender_ray.migration.protocol import LocalPeer, migrate_local, run_migration
from tender_ray.migration.transports import LocalTransport
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import RegionKind
from tender_ray.resources.virtual_user_space import PROT_WRITE

MakeMachine = Callable[..., Machine]
SPIN = ("1", "spin")  # standby computing all the while: its text runs from the shared frames


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def two(make_machine: MakeMachine, engine: str) -> tuple[Machine, Machine]:
    """Machines a and b on the test's engine, numbering their processes apart."""
    return (make_machine(name="a", engine=engine, quantum_us=1000, pid_base=1000),
            make_machine(name="b", engine=engine, quantum_us=1000, pid_base=2000))


def _text_frames(machine: Machine, pid: int) -> list[int]:
    with machine.scheduler.lock:
        p = machine.scheduler.get(pid)
        assert p.space is not None
        return [f for us in p.space.user_spaces if us.region is not None
                and us.region.kind is RegionKind.TEXT for f in us.region.frames]


def test_move_to_a_machine_running_the_program_sends_no_text(
        two: tuple[Machine, Machine]) -> None:
    """The record says 0 text bytes travelled; the arriving process maps the frames of the
    one already there, which may end first; both print what they print natively."""
    a, b = two
    there, there_taken = start_standby(b, *SPIN)
    mover, mover_taken = start_standby(a, *SPIN)
    record = migrate_local(a, mover, b)
    assert record.ok and record.text_shared
    assert record.text_pages == 0 and record.text_bytes == 0
    assert record.as_dict()["text_bytes"] == 0
    assert record.pages > 0  # data, heap and stack still moved
    shared = _text_frames(b, mover)
    assert shared and shared == _text_frames(b, there)
    assert b.memory.shared_frames == len(shared)
    # The process that was there first ends: the frames stay with the one that arrived.
    assert finish_standby(b, there, there_taken)[:3] == native_standby(*SPIN)
    assert b.memory.shared_frames == 0
    # Back to a machine that does not run the program: its text travels again.
    back = migrate_local(b, mover, a)
    assert not back.text_shared and back.text_pages == len(shared)
    assert back.text_bytes == len(shared) * PAGE_SIZE
    assert finish_standby(a, mover, mover_taken)[:3] == native_standby(*SPIN)
    assert_clean(a)
    assert_clean(b)


def _resident(machine: Machine, pid: int) -> int:
    with machine.scheduler.lock:
        p = machine.scheduler.get(pid)
        assert p.space is not None
        return sum(1 for us in p.space.user_spaces if us.region is not None
                   for f in us.region.frames if f >= 0)


def test_precopy_to_a_machine_running_the_program_sends_no_text(
        two: tuple[Machine, Machine]) -> None:
    """Pre-copy too: no live round carries a text page (the first holds every other page) and
    the freeze sends none, the record says 0 text bytes; back to a machine without the
    program the text travels once, in the freeze. Both print what they print natively."""
    a, b = two
    precopy = MigrationOptions(mode=MigrationMode.PRECOPY)
    there, there_taken = start_standby(b, *SPIN)
    mover, mover_taken = start_standby(a, *SPIN)
    record = migrate_local(a, mover, b, precopy)
    assert record.ok and record.mode == "precopy" and record.rounds >= 1
    assert record.text_shared and record.text_pages == 0 and record.text_bytes == 0
    shared = _text_frames(b, mover)
    assert shared and shared == _text_frames(b, there)
    # What was sent is what the rounds and the freeze sent, and the first round (every page
    # present then) holds none of the text: at most the pages that are not text.
    assert record.bytes == sum(record.round_bytes) + record.freeze_bytes
    assert record.round_bytes[0] <= (_resident(b, mover) - len(shared)) * PAGE_SIZE
    assert finish_standby(b, there, there_taken)[:3] == native_standby(*SPIN)
    back = migrate_local(b, mover, a, precopy)
    assert back.ok and back.mode == "precopy" and not back.text_shared
    assert back.text_bytes == len(shared) * PAGE_SIZE
    assert back.freeze_bytes >= back.text_bytes  # the text goes frozen, never in a round
    assert finish_standby(a, mover, mover_taken)[:3] == native_standby(*SPIN)
    assert_clean(a)
    assert_clean(b)


def test_text_made_writable_is_copied_first(two: tuple[Machine, Machine]) -> None:
    """mprotect(PROT_WRITE) on shared text gives the process a private copy: what it writes
    there never reaches the other process, and the shared frames stay with it alone."""
    a, b = two
    there, there_taken = start_standby(b, *SPIN)
    mover, mover_taken = start_standby(a, *SPIN)
    assert migrate_local(a, mover, b).text_shared
    b.freeze(mover)
    with b.scheduler.lock:
        p, q = b.scheduler.get(mover), b.scheduler.get(there)
        assert p.space is not None and q.space is not None
        us = next(u for u in p.space.user_spaces
                  if u.region is not None and u.region.kind is RegionKind.TEXT)
        assert us.region is not None
        before, perms = list(us.region.frames), us.perms
        original = p.space.read(us.start, PAGE_SIZE)
        assert vm.protect(b.managers, p, us.start, us.end - us.start,
                          perms | PROT_WRITE) == 0
        assert us.region is not None  # the same user space, its region now private
        assert not set(us.region.frames) & set(before)
        assert p.space.read(us.start, PAGE_SIZE) == original
        p.space.write(us.start, b"\xcc" * PAGE_SIZE)
        assert q.space.read(us.start, PAGE_SIZE) == original  # the other is untouched
        p.space.write(us.start, original)
        assert vm.protect(b.managers, p, us.start, us.end - us.start, perms) == 0
    b.thaw(mover)
    assert finish_standby(b, there, there_taken)[:3] == native_standby(*SPIN)
    assert finish_standby(b, mover, mover_taken)[:3] == native_standby(*SPIN)
    assert_clean(a)
    assert_clean(b)


def test_holder_gone_before_transform_sends_the_text_after_all(
        two: tuple[Machine, Machine]) -> None:
    """The destination said it holds the text, then the process that had it ended before
    the transform: the transform refuses before making anything (TextNotHeldError), the
    source sends the text and transforms again, and the process moves, unharmed."""
    a, b = two
    there, there_taken = start_standby(b, *SPIN)
    mover, mover_taken = start_standby(a, *SPIN)
    ended: list[tuple[int, bytes, bytes]] = []

    class HolderEnds(LocalPeer):
        def holds_text(self, program_digest: str, digest: str) -> bool:
            held = super().holds_text(program_digest, digest)
            ended.append(finish_standby(b, there, there_taken)[:3])
            return held

    transport = LocalTransport()
    record = run_migration(a, mover, HolderEnds(b, transport), transport, MigrationOptions())
    assert record.ok and not record.text_shared and record.text_pages > 0
    assert ended == [native_standby(*SPIN)]
    assert b.memory.shared_frames == 0
    assert finish_standby(b, mover, mover_taken)[:3] == native_standby(*SPIN)
    assert_clean(a)
    assert_clean(b)


# --- the frames themselves (no machine) ------------------------------------------------------

def test_shared_frames_are_freed_by_their_last_mapper() -> None:
    memory = RealMemory(64 * PAGE_SIZE)
    frames = memory.allocate_array(4)
    memory.share(frames)  # a second region maps them
    memory.free(frames)  # the first lets go: still mapped
    assert memory.free_frames == 60 and memory.shared_frames == 0
    memory.free(frames)  # the last one: given back
    assert memory.free_frames == 64
    with pytest.raises(ValueError, match="only allocated frames"):
        memory.share(frames)


def test_holding_shared_frames_never_lets_them_be_reused() -> None:
    """A deleted region held for reuse keeps no shared frame: the next allocation that
    overwrites held frames must not get text another process maps."""
    memory = RealMemory(16 * PAGE_SIZE)
    text = memory.allocate_array(3)
    memory.frames[text] = 7
    own = memory.allocate_array(2)
    memory.share(text)
    memory.hold_all([[*text.tolist(), -1, *own.tolist()]])
    assert memory.held_frames == 2 and memory.shared_frames == 0
    taken = memory.allocate_array(13, zero=False)  # every frame that is not text
    assert not set(taken.tolist()) & set(text.tolist())
    assert (memory.frames[text] == 7).all()
    memory.free(taken)
    memory.free(text)
    assert memory.free_frames == 16


def test_private_copy_keeps_contents_and_drops_one_mapper() -> None:
    memory = RealMemory(16 * PAGE_SIZE)
    frames = memory.allocate_array(3)
    memory.frames[frames] = np.arange(3, dtype=np.uint8)[:, None]
    memory.share(frames[:2])
    listed = np.array([frames[0], -1, frames[1], frames[2]], dtype=np.int64)
    copy = memory.private_copy(listed)
    assert copy[1] == -1 and copy[3] == frames[2]  # not present, and not shared: kept
    assert not set(copy[[0, 2]].tolist()) & set(frames.tolist())
    assert (memory.frames[copy[[0, 2, 3]]] == memory.frames[frames]).all()
    assert memory.shared_frames == 0 and not memory.any_shared(frames)
    memory.free(copy)
    memory.free(frames[:2])
    assert memory.free_frames == 16

