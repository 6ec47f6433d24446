"""A machine's settings, validated once: what the kernel, the Ray layer and the command line
read. Scenario files have their own models (`cli/scenario/model.py`), built on this one."""

from __future__ import annotations

import enum
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Engine(str, enum.Enum):
    """What a machine asks to run its processes on: one of the engines
    (`tender_ray.engines.ENGINES`), or `auto`, which picks the best that works here."""

    AUTO = "auto"
    NATIVE = "native"
    EMULATED = "emulated"


class FaultAction(str, enum.Enum):
    RAISE = "raise"  # the step fails with FaultInjected; the machine lives on
    EXIT = "exit"  # the machine's whole process dies at once, as in a crash


class FaultSpec(BaseModel):
    """A fault a machine injects into itself once, when an incoming migration reaches `phase`:
    a drill of the migration protocol's rollback. Set only in configs (tests, drills); no
    remote call can arm one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: str = Field(pattern=r"^(create|transform_space|transform_program|transform_start|"
                               r"commit)$")
    action: FaultAction = FaultAction.RAISE


class MachineConfig(BaseModel):
    """One Tender machine: its processors, real memory and scheduling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="m0", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    computations: int = Field(default=1, ge=1, le=64,
                              description="processes that may run at once (processor slots)")
    memory_mib: int = Field(default=512, ge=1, le=1 << 20, description="real memory, MiB")
    # 50 ms, a classic Unix time slice: a switch between processes costs the native engine
    # ~0.5 ms of the machine's own work (the tracer's hand-off, the registers saved), which a
    # 5 ms slice made a tenth of a processor. A freeze or a kill does not wait for the slice
    # to end (`engines.base.Engine.preempt`), so migrations are no slower for it.
    quantum_us: int = Field(default=50_000, ge=100, le=1_000_000,
                            description="time slice of a timed quantum, microseconds")
    quantum_growth: int = Field(
        default=4, ge=1, le=64,
        description="a process that uses its whole slice gets one twice as long next time, "
                    "up to this many base quanta (1: every slice is the base quantum)")
    quantum_instructions: int | None = Field(
        default=None, ge=1000,
        description="exact quanta of this many instructions (deterministic, slower) instead "
                    "of timed ones")
    engine: Engine = Field(default=Engine.AUTO,
                           description="what runs processes: native (host processes under "
                                       "ptrace, Linux x86-64), emulated (Unicorn), or auto: "
                                       "native where its start-up check passes here")
    reuse: bool = Field(default=True, description="pre-create and hold resources for reuse")
    pool_size: int = Field(default=2, ge=0, le=64,
                           description="kernel processes created in advance")
    plate_dir: str | None = Field(default=None,
                                  description="the machine's plate directory (default: a "
                                              "temporary directory)")
    fault: FaultSpec | None = Field(default=None,
                                    description="a fault to inject once (drills and tests)")


def workloads_dir() -> Path:
    """The directory of the workload binaries: `$TENDER_WORKLOADS` (the workloads directory
    or its `bin`), else `workloads/bin` of this checkout. The one place that says where they
    are: scenarios, benchmarks and tests all ask here."""
    env = os.environ.get("TENDER_WORKLOADS")
    if env:
        path = Path(env).expanduser()
        candidates = [path / "bin", path]
    else:
        candidates = [Path(__file__).resolve().parents[1] / "workloads" / "bin"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    where = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"workload binaries not found at {where} (set TENDER_WORKLOADS)")


def workload(name: str) -> Path:
    """The workload binary called `name` (it may not exist: callers say what is missing)."""
    return workloads_dir() / name
