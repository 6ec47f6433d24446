"""Snapshots of a machine and its processes: frozen values that balancers, metrics, views and
the Ray layer read and send anywhere. They hold no reference into the machine, and this module
loads no engine, so a view can read them without the kernel's machinery."""

from __future__ import annotations

from dataclasses import dataclass, field

from tender_ray.migration.checkpoint import CheckpointRecord, RestartRecord
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.computation import ComputationStatistics
from tender_ray.resources.home_files import HostTreeStatistics
from tender_ray.resources.manager import ManagerStatistics
from tender_ray.resources.real_memory import RealMemoryStatistics


@dataclass(frozen=True)
class ProcessInfo:
    """A snapshot of one process, safe to send anywhere."""

    pid: int
    name: str
    machine: str
    state: str  # a `ProcessState` value
    exit_status: int | None
    exit_reason: str
    cpu_seconds: float
    run_seconds: float
    resident_pages: int
    syscalls: dict[str, int]
    unsupported: dict[str, int]
    migrations: tuple[MigrationRecord, ...]
    created_at: float


@dataclass(frozen=True)
class OutputChunk:
    """Bytes a process wrote, and where they start in its stream."""

    pid: int
    fd: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class MachineStatistics:
    """A snapshot of one machine, what balancers, metrics and `top` read."""

    name: str
    state: str
    computations: tuple[ComputationStatistics, ...]
    processes: dict[str, int]  # by state
    runnable: int  # runnable + running
    load: float  # runnable processes per computation
    utilisation: float  # fraction of computation time spent running processes, since start
    memory: RealMemoryStatistics
    managers: tuple[ManagerStatistics, ...]
    syscalls: dict[str, int]
    unsupported: dict[str, int]
    exited: int
    uptime: float
    cordoned: bool = False
    migrations: dict[str, int] = field(default_factory=dict)  # out_ok, in_ok, out_failed...
    migration_bytes: int = 0
    migration_phase_seconds: dict[str, float] = field(default_factory=dict)
    engine: str = "emulated"
    checkpoints: dict[str, int] = field(default_factory=dict)  # ok, failed, bytes, restarts
    # The last checkpoints taken here and the processes restarted here (oldest first).
    checkpoint_records: tuple[CheckpointRecord, ...] = ()
    restarts: tuple[RestartRecord, ...] = ()
    host_files: HostTreeStatistics = field(default_factory=HostTreeStatistics)  # home I/O


@dataclass(frozen=True)
class PollResult:
    """What a driver follows, from one poll: the statistics, the processes in the table, the
    output written since the last poll and the processes that ended (reaped)."""

    statistics: MachineStatistics
    processes: tuple[ProcessInfo, ...]
    output: tuple[OutputChunk, ...]
    ended: tuple[ProcessInfo, ...]
