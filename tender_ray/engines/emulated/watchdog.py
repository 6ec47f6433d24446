"""The one watchdog thread that ends every emulated CPU's timed quanta in this process.

It stands in for Unicorn's own `timeout`, which starts and joins a polling thread per run.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time

from tender_ray.engines.emulated.private import held


class Watchdog:
    """Ends timed quanta for every CPU of the process from one thread.

    Unicorn's own `timeout` starts a thread per run that polls in `usleep(2)` steps and is
    joined when the run ends, so every quantum, including one a system call ends after a
    microsecond, pays ~0.1-1 ms. Here a run arms a deadline and disarms it when it returns;
    the watchdog calls `uc_emu_stop` for armed runs whose deadline passed. The stop lands at a
    translated-block boundary like Unicorn's own (the `no_exit_request` flag), and a stop that
    arrives before the emulator has started (it resets its stop request on entry) is sent again
    until the run returns. Arming, disarming and stopping happen under one lock, so a stop is
    never sent to a run that has returned or a CPU that has been closed.
    """

    RESEND = 0.002  # seconds between stops of a run that has not yet returned

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh: at creation, and in a forked child (no thread, a free lock)."""
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, uc handle)
        self._heap: list[tuple[float, int]] = []  # (deadline, token), may hold stale tokens
        self._tokens = itertools.count(1)
        self._wake = float("inf")  # when the thread is due to look next
        self._thread: threading.Thread | None = None

    def arm(self, handle: int, deadline: float) -> int:
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (deadline, handle)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="tender-cpu-watchdog",
                                                daemon=True)
                self._thread.start()
            elif deadline < self._wake:
                self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def expire(self, token: int) -> None:
        """End an armed run now (a freeze or a kill does not wait for the quantum's end)."""
        with self._cond:
            entry = self._armed.get(token)
            if entry is None:
                return
            now = time.monotonic()
            self._armed[token] = (now, entry[1])
            heapq.heappush(self._heap, (now, token))
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                heap, armed = self._heap, self._armed
                while heap and (heap[0][0] <= now or heap[0][1] not in armed):
                    deadline, token = heapq.heappop(heap)
                    entry = armed.get(token)
                    if entry is None or entry[0] != deadline:
                        continue  # disarmed, or re-queued with a later deadline
                    held.emu_stop(entry[1])
                    again = now + self.RESEND
                    armed[token] = (again, entry[1])
                    heapq.heappush(heap, (again, token))
                self._wake = heap[0][0] if heap else float("inf")
                self._cond.wait(None if not heap else max(0.0, self._wake - now))


WATCHDOG = Watchdog()  # the process's one watchdog
if hasattr(os, "register_at_fork"):  # a forked child starts with no watchdog and a free lock
    os.register_at_fork(after_in_child=WATCHDOG.reset)
