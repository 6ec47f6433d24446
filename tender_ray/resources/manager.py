"""The part every Tender resource manager shares: pre-creation pools and holding on delete.

Tender makes creation cheap by creating resources before they are asked for (the pool) and
deletion cheap by keeping deleted ones for the next request (held). Both are switchable per
manager, so the paper's comparison (reuse on vs off) can be measured.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class ManagerStatistics:
    """A snapshot of one manager's counters (what metrics and reports read)."""

    resource: str
    created: int  # constructed from scratch (pool fills included)
    deleted: int  # destroyed for good
    reused: int  # requests served from the pool or the held list
    live: int  # handed out and not yet released
    held: int  # released and kept for reuse
    pool: int  # pre-created and never used yet
    reuse: bool


class ResourceManager(Generic[R]):
    """Hands out resources of one kind, reusing pre-created and held ones when reuse is on.

    `create` builds a new resource, `reset` makes a released one ready for reuse, `destroy`
    frees it for good. All three are the resource module's own; this class only keeps counts
    and lists. Thread-safe: machines run several computations at once.
    """

    def __init__(
        self,
        resource: str,
        create: Callable[[], R],
        reset: Callable[[R], None] | None = None,
        destroy: Callable[[R], None] | None = None,
        *,
        reuse: bool = True,
        pool_size: int = 0,
        hold_limit: int = 16,
    ) -> None:
        self.resource = resource
        self._create = create
        self._reset = reset
        self._destroy = destroy
        self._lock = threading.Lock()
        self._pool: list[R] = []  # owned here: pre-created, never used
        self._held: list[R] = []  # owned here: released, kept for reuse
        self._reuse = reuse
        self._pool_size = pool_size
        self._hold_limit = hold_limit
        self._created = 0
        self._deleted = 0
        self._reused = 0
        self._live = 0
        if reuse:
            self.precreate(pool_size)

    @property
    def reuse(self) -> bool:
        return self._reuse

    def set_reuse(self, reuse: bool) -> None:
        """Switch reuse; switching it off destroys what is pooled and held."""
        with self._lock:
            self._reuse = reuse
            dropped = [] if reuse else self._pool + self._held
            if not reuse:
                self._pool, self._held = [], []
        for item in dropped:
            self._drop(item)
        if reuse:
            self.precreate(self._pool_size)

    def refill(self) -> None:
        """Top the pool up to its configured size (run off the request path)."""
        if self._reuse:
            self.precreate(self._pool_size)

    def precreate(self, count: int) -> None:
        """Fill the pool up to `count` ready resources."""
        while True:
            with self._lock:
                if len(self._pool) >= count:
                    return
            item = self._create()
            with self._lock:
                self._created += 1
                self._pool.append(item)

    def acquire(self, reuse: bool | None = None) -> R:
        """A ready resource: a held one, else a pre-created one, else a new one.

        `reuse=False` forces a new one for this request (the paper's no-reuse comparison).
        """
        reuse = self._reuse if reuse is None else reuse and self._reuse
        with self._lock:
            self._live += 1
            if reuse and (self._held or self._pool):
                self._reused += 1
                return self._held.pop() if self._held else self._pool.pop()
            self._created += 1
        try:
            return self._create()
        except BaseException:
            with self._lock:
                self._live -= 1
                self._created -= 1
            raise

    def release(self, item: R, hold: bool | None = None) -> None:
        """Give a resource back: held for reuse when reuse is on and room is left.

        `hold=False` destroys it whatever the setting (the paper's no-reuse comparison).
        """
        hold = self._reuse if hold is None else hold and self._reuse
        if hold and self._reset is not None:
            self._reset(item)
        with self._lock:
            self._live -= 1
            if hold and len(self._held) < self._hold_limit:
                self._held.append(item)
                return
        self._drop(item)

    def _drop(self, item: R) -> None:
        if self._destroy is not None:
            self._destroy(item)
        with self._lock:
            self._deleted += 1

    def close(self) -> None:
        """Destroy everything pooled and held (the machine is stopping)."""
        with self._lock:
            items, self._pool, self._held = self._pool + self._held, [], []
        for item in items:
            self._drop(item)

    def statistics(self) -> ManagerStatistics:
        with self._lock:
            return ManagerStatistics(
                resource=self.resource,
                created=self._created,
                deleted=self._deleted,
                reused=self._reused,
                live=self._live,
                held=len(self._held),
                pool=len(self._pool),
                reuse=self._reuse,
            )
