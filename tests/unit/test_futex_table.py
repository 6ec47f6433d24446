"""The machine's futex table as plain logic: who a wake chooses (oldest first, by bitset),
what requeue moves, how a wait ends otherwise, and how words are named (by space and
address, the page checked when the call does not say private)."""

from __future__ import annotations

import pytest

from tender_ray.kernel.futex import FutexError, FutexTable, futex_key
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.thread import FutexKey, FutexKeyKind, Thread
from tender_ray.resources.virtual_region import RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import BadAddress, VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

A = FutexKey(FutexKeyKind.PRIVATE, 1, 0x1000)
B = FutexKey(FutexKeyKind.PRIVATE, 1, 0x2000)


def waiting(table: FutexTable, key: FutexKey, *tids: int, bitset: int = 0xFFFF_FFFF
            ) -> tuple[list[Thread], list[int]]:
    """Threads `tids` waiting on `key`, and the list their wakes are recorded in."""
    woken: list[int] = []
    threads = [Thread(tid) for tid in tids]
    for t in threads:
        table.wait(t, key, lambda tid=t.tid: woken.append(tid), bitset)
    return threads, woken


def test_a_wake_chooses_the_oldest_waiters_and_marks_them() -> None:
    table = FutexTable()
    threads, woken = waiting(table, A, 11, 12, 13)
    assert table.wake(A, 2) == 2
    assert woken == [11, 12]
    assert table.waiters(A) == [13]
    assert [table.take_wake(t) for t in threads] == [True, True, False]
    assert threads[0].futex is None and threads[2].futex is not None
    assert table.wake(B, 5) == 0  # nobody waits there


def test_a_reissued_wait_keeps_its_place() -> None:
    table = FutexTable()
    threads, woken = waiting(table, A, 11, 12)
    table.wait(threads[0], A, lambda: woken.append(99))  # 11 issues its wait again
    assert table.waiters(A) == [11, 12]
    table.wake(A, 1)
    assert woken == [11]


def test_bitset_wakes_only_the_waiters_whose_bits_meet() -> None:
    table = FutexTable()
    held = [waiting(table, A, 11, bitset=0b01), waiting(table, A, 12, bitset=0b10),
            waiting(table, A, 13)]  # (the table holds its waiters weakly) 13: every bit
    assert table.wake(A, 10, bitset=0b10) == 2
    assert table.waiters(A) == [11]
    with pytest.raises(FutexError):
        table.wake(A, 1, bitset=0)
    with pytest.raises(FutexError):
        table.wait(Thread(14), A, lambda: None, bitset=0)
    assert [woken for _, woken in held] == [[], [12], [13]]


def test_requeue_wakes_some_and_moves_the_rest_in_order() -> None:
    table = FutexTable()
    threads, woken = waiting(table, A, 11, 12, 13, 14)
    assert table.requeue(A, B, 1, 2) == 3
    assert woken == [11]
    assert table.waiters(A) == [14]
    assert table.waiters(B) == [12, 13]
    table.wake(B, 1)  # a moved waiter is woken through its new word
    assert woken == [11, 12]
    assert table.take_wake(threads[1])


def test_a_cancelled_wait_leaves_the_queue() -> None:
    table = FutexTable()
    threads, woken = waiting(table, A, 11, 12)
    table.cancel(threads[0])  # its timeout, a signal, its exit
    assert threads[0].futex is None
    assert table.wake(A, 5) == 1 and woken == [12]
    assert len(table) == 0


def test_words_are_named_by_space_and_address() -> None:
    memory = RealMemory(16 * PAGE_SIZE)
    one, two = VirtualSpace(memory), VirtualSpace(memory)
    region = VirtualRegion().setup(RegionKind.MMAP, 1)
    region.populate([0], memory)
    for space, address in ((one, 0x10000), (two, 0x40000)):
        space.paste(VirtualUserSpace().setup(region, address, 3))
    assert futex_key(one, 0x10008, private=True) != futex_key(two, 0x40008, private=True)
    # A call that does not say private meets the private waiters of private memory.
    assert futex_key(one, 0x10008, private=False) == futex_key(one, 0x10008, private=True)
    with pytest.raises(FutexError, match="not 4-byte aligned"):
        futex_key(one, 0x10002, private=True)
    with pytest.raises(BadAddress):
        futex_key(one, 0x90000, private=False)


def test_a_thread_whose_records_are_gone_is_passed_over() -> None:
    table = FutexTable()
    threads, woken = waiting(table, A, 11, 12)
    del threads[0]  # its process ended or moved away: nothing else holds its record
    assert table.waiters(A) == [12]
    assert table.wake(A, 1) == 1 and woken == [12]
    assert len(table) == 0
