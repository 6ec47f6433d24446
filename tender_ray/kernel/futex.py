"""The machine's futex table: the threads waiting on each futex word, in the order they began
to wait, and the operations that wake them or move them between words (wake, requeue,
compare-and-requeue, and their bitset forms).

A wait does not block a host thread: the waiting thread is queued here and its call is issued
again when it runs (`restart_call`), so its registers alone describe it and it migrates as it
is. A wake marks the waiter woken, drops it from the queue and asks its kernel to make it
runnable; the re-issued call then answers 0 without reading the word again, as Linux's does.
A word is named by (virtual space, address). Linux names a word of shared memory by the
memory object instead, but here no memory is shared between processes, and a word of private
memory Linux names by (space, address) even when the call does not say private (the wake at
a thread's exit does not), so both kinds of call meet on one key.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from tender_ray.resources.thread import (
    FUTEX_BITSET_MATCH_ANY,
    FutexKey,
    FutexKeyKind,
    FutexWait,
    Thread,
)
from tender_ray.resources.virtual_space import VirtualSpace


class FutexError(ValueError):
    """A futex call's arguments are wrong (its errno is EINVAL)."""


def futex_key(space: VirtualSpace, address: int, private: bool) -> FutexKey:
    """The key of the futex word at `address`. The word must be 4-byte aligned (EINVAL
    otherwise); a call that does not say private finds the word's page as Linux does, so
    the page must be mapped (BadAddress, EFAULT, when no user space covers it)."""
    if address % 4:
        raise FutexError(f"futex word at {address:#x} is not 4-byte aligned")
    if not private:
        space.runs(address, 4)
    return FutexKey(FutexKeyKind.PRIVATE, id(space), address)


@dataclass
class _Waiter:
    # Weakly: a thread whose process ended or moved away (its records dropped) is no
    # waiter any more, and is passed over without a call to tell the table.
    ref: weakref.ref[Thread]
    wake: Callable[[], None]  # makes the thread's process runnable (its kernel's wake)

    @property
    def thread(self) -> Thread | None:
        return self.ref()


class FutexTable:
    """One machine's futex waiters, by key, oldest first. Safe to call from any computation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[FutexKey, list[_Waiter]] = {}

    def wait(self, thread: Thread, key: FutexKey, wake: Callable[[], None],
             bitset: int = FUTEX_BITSET_MATCH_ANY,
             still: Callable[[], bool] = lambda: True) -> bool:
        """Queue `thread` on `key` (once: a re-issued wait that was not woken keeps its
        place) if `still()` — the word still holds the value the wait expects — checked
        under the table's lock, so a wake that changed the word first is never missed (a
        waker stores, then wakes). False when it did not hold: nothing queued. `wake` is
        called, outside the table's lock, when a wake chooses it."""
        if not bitset:
            raise FutexError("a futex wait with an empty bitset can never be woken")
        with self._lock:
            current = thread.futex
            if current is not None and current.key == key and not current.woken:
                if still():
                    return True
                self._drop(thread)
                thread.futex = None
                return False
            self._drop(thread)
            thread.futex = None
            if not still():
                return False
            thread.futex = FutexWait(key, bitset)
            self._queues.setdefault(key, []).append(_Waiter(weakref.ref(thread), wake))
            return True

    def take_wake(self, thread: Thread) -> bool:
        """Whether a wake chose `thread` since it began to wait; the wait is over either way
        only if it was (True)."""
        with self._lock:
            current = thread.futex
            if current is None or not current.woken:
                return False
            thread.futex = None
            return True

    def cancel(self, thread: Thread) -> None:
        """The thread's wait ended otherwise (a timeout, a signal, its exit, a move)."""
        with self._lock:
            self._drop(thread)
            thread.futex = None

    def wake(self, key: FutexKey, count: int,
             bitset: int = FUTEX_BITSET_MATCH_ANY) -> int:
        """Wake up to `count` waiters of `key` whose wait bits meet `bitset`; how many."""
        if not bitset:
            raise FutexError("a futex wake with an empty bitset wakes nobody")
        with self._lock:
            woken = self._take(key, count, bitset)
        for w in woken:
            w.wake()
        return len(woken)

    def requeue(self, key: FutexKey, to: FutexKey, wake_count: int, move_count: int) -> int:
        """Wake up to `wake_count` waiters of `key` and move up to `move_count` of the rest,
        in order, to `to`; the number woken plus moved (FUTEX_CMP_REQUEUE's answer;
        FUTEX_REQUEUE answers the woken alone, which the caller takes from `wake`)."""
        with self._lock:
            woken = self._take(key, wake_count, FUTEX_BITSET_MATCH_ANY)
            queue = [w for w in self._queues.pop(key, []) if w.thread is not None]
            moved, kept = queue[:max(0, move_count)], queue[max(0, move_count):]
            if kept:
                self._queues[key] = kept
            for w in moved:
                thread = w.thread
                assert thread is not None and thread.futex is not None
                thread.futex.key = to
            if moved:
                self._queues.setdefault(to, []).extend(moved)
        for w in woken:
            w.wake()
        return len(woken) + len(moved)

    def waiters(self, key: FutexKey) -> list[int]:
        """The tids waiting on `key`, oldest first."""
        with self._lock:
            return [t.tid for w in self._queues.get(key, []) if (t := w.thread) is not None]

    def __len__(self) -> int:
        """The threads waiting, on every word."""
        with self._lock:
            return sum(w.thread is not None for q in self._queues.values() for w in q)

    # --- under the lock ----------------------------------------------------------------

    def _take(self, key: FutexKey, count: int, bitset: int) -> list[_Waiter]:
        queue = self._queues.get(key)
        if not queue or count <= 0:
            return []
        woken: list[_Waiter] = []
        kept: list[_Waiter] = []
        for w in queue:
            thread = w.thread
            if thread is None or thread.futex is None:
                continue  # its process ended or moved away
            state = thread.futex
            if len(woken) < count and state.bitset & bitset:
                state.woken = True
                woken.append(w)
            else:
                kept.append(w)
        if kept:
            queue[:] = kept
        else:
            del self._queues[key]
        return woken

    def _drop(self, thread: Thread) -> None:
        current = thread.futex
        if current is None or current.woken:
            return
        queue = self._queues.get(current.key, [])
        queue[:] = [w for w in queue if (t := w.thread) is not None and t is not thread]
        if not queue:
            self._queues.pop(current.key, None)
