"""Thread: what each thread of a process has of its own — its id, the clear-child-tid address,
the futex it waits in and its timed wait.

A process (resources/process.py) keeps what Linux's threads share: the virtual space, the
descriptor table, signal actions, the plate, the ids. Thread ids are Tender ids, taken from the
allocator pids come from (the first thread's tid is the pid), so a moved thread keeps the id
glibc wrote into its TCB and into the owner words of the mutexes it holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

FUTEX_BITSET_MATCH_ANY = 0xFFFF_FFFF  # FUTEX_WAIT and FUTEX_WAKE: every waiter matches


class FutexKeyKind(str, enum.Enum):
    """How a futex word is named: by the virtual space and address (a private futex, or any
    futex in memory only its process maps) or by the memory object holding the word (a futex
    in memory shared between processes, which nothing here maps yet)."""

    PRIVATE = "private"
    SHARED = "shared"


@dataclass(frozen=True)
class FutexKey:
    """The name of one futex word: `owner` is the space's identity for a private key (the
    memory object for a shared one), `offset` the word's address in it."""

    kind: FutexKeyKind
    owner: int
    offset: int


@dataclass
class FutexWait:
    """A thread's wait in a futex: on which word, for which wake bits, whether a wake has
    already chosen it (the re-issued call then answers 0 without reading the word), and the
    number of the thread's call that last issued it (a wait is only continued by the very
    next call; one that a signal ended is over)."""

    key: FutexKey
    bitset: int = FUTEX_BITSET_MATCH_ANY
    woken: bool = False
    call: int = 0


@dataclass(eq=False)  # one thread is one record: compared by identity
class Thread:
    """One thread of a process: owned by the computation running it, the lock's otherwise."""

    tid: int
    clear_child_tid: int = 0  # set_tid_address / CLONE_CHILD_CLEARTID: zeroed and woken at exit
    futex: FutexWait | None = None  # the futex it waits in, if any
    # Its timed wait (poll, select, epoll, a futex): the number of the call that began it and
    # its time.time() deadline, as the first thread's `FdTable.timed_wait` (which travels in
    # the image); each thread has its own, so two timed waits at once keep their deadlines.
    timed_wait: tuple[int, float] | None = None
