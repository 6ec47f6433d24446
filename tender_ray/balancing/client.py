"""What the balancing loop needs of the world around it, as protocols: a machine to read and
move processes off (`MachineClient`, which the Ray layer's handles implement), a reply still to
come (`Pending`), the Ray nodes being drained (`DrainingNodes`) and the time (`Clock`, which
tests replace to drive the loop without waiting)."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import Protocol, TypeVar

from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord

T_co = TypeVar("T_co", covariant=True)

Load = tuple[MachineStatistics, list[ProcessInfo]]  # what one look at a machine returns


class Pending(Protocol[T_co]):
    """A call under way: its result, once it has come (within `timeout` seconds)."""

    def result(self, timeout: float | None = None) -> T_co: ...


class MachineClient(Protocol):
    """A machine as the balancing loop reaches it. Calls to a machine that is gone raise a
    `TenderError` (`MachineStoppedError`), which the loop counts as that machine being down."""

    @property
    def name(self) -> str: ...

    def load_async(self) -> Pending[Load]: ...
    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> MigrationRecord: ...
    def cordon(self, timeout: float | None = None) -> None: ...
    def list_processes(self, timeout: float | None = None) -> list[ProcessInfo]: ...


class DrainingNodes(Protocol):
    """Where machines run: the nodes the cluster manager is draining now (their ids). A
    Mapping gives each node's deadline too (wall-clock seconds, inf when none was said; Ray's
    view, `cluster.drain_watch.RayDrainSignal`); a plain collection means no deadline."""

    def draining(self) -> Collection[str]: ...


class Clock(Protocol):
    """The time as the loop sees it: wall and monotonic clocks, sleeping, and waiting on an
    event with a timeout (whether the event was set)."""

    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    def wait(self, event: threading.Event, timeout: float) -> bool: ...


class SystemClock:
    """The real time."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)
