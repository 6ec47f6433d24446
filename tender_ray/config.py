"""A machine's settings, validated once: what the kernel, the Ray layer and the command line
read. Scenario files have their own models (`cli/scenario/model.py`), built on this one."""

from __future__ import annotations

import enum
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Engine(str, enum.Enum):
    """What a machine asks to run its processes on: one of the engines
    (`tender_ray.engines.ENGINES`), or `auto`, which picks the best that works here."""

    AUTO = "auto"
    NATIVE = "native"
    EMULATED = "emulated"


class HostFiles(str, enum.Enum):
    """Whose host files a machine's processes use (`kernel/host_tree.py`)."""

    NODE = "node"  # its own; a process from a machine on the same Ray node keeps them too
    HOME = "home"  # its own; a process from any other machine sends its file calls home
    NONE = "none"  # none of its own: processes that arrived use their home's


class FaultAction(str, enum.Enum):
    RAISE = "raise"  # the step fails with FaultInjected; the machine lives on
    EXIT = "exit"  # the machine's whole process dies at once, as in a crash
    DROP = "drop"  # the step takes effect, its answer is lost (the caller sees no reply)
    DELAY = "delay"  # the machine stalls `delay_s` there, then goes on (past the caller's wait)


class FaultSide(str, enum.Enum):
    DESTINATION = "destination"  # the machine a process arrives on
    SOURCE = "source"  # the machine that drives the migration


# Where a fault can fire. The destination's points are inside its calls ("before_create" as the
# call begins, "after_create" once it took effect); the source's are around the calls it makes
# and its own delete. The older names are points inside the destination's transform ("commit":
# its end, before the commit call).
STEPS = ("create", "transform", "commit", "delete")
FAULT_POINTS = {
    FaultSide.DESTINATION: ("create", "transform_space", "transform_program",
                            "transform_start", "commit",
                            *(f"{when}_{step}" for step in STEPS[:3]
                              for when in ("before", "after"))),
    FaultSide.SOURCE: tuple(f"{when}_{step}" for step in STEPS for when in ("before", "after")),
}


class FaultSpec(BaseModel):
    """A fault a machine injects into itself once, when a migration reaches `phase` on its
    `side`: a drill of the migration protocol under one fault. Set only in configs (tests,
    drills); no remote call can arm one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: str = Field(pattern=r"^(create|transform_space|transform_program|transform_start|"
                               r"commit|(before|after)_(create|transform|commit|delete))$")
    action: FaultAction = FaultAction.RAISE
    side: FaultSide = FaultSide.DESTINATION
    delay_s: float = Field(default=5.0, ge=0.0, le=600.0,
                           description="how long a `delay` fault stalls, seconds")

    @model_validator(mode="after")
    def _a_point_of_its_side(self) -> FaultSpec:
        if self.phase not in FAULT_POINTS[self.side]:
            raise ValueError(f"phase {self.phase!r} is no fault point of the {self.side.value} "
                             f"side; use one of {', '.join(FAULT_POINTS[self.side])}")
        if self.action is FaultAction.DROP and not (
                self.side is FaultSide.DESTINATION and self.phase.startswith("after_")):
            raise ValueError("a `drop` fault loses a destination's answer: it needs an "
                             "after_* phase on the destination side")
        return self


class CheckpointSpec(BaseModel):
    """How a machine checkpoints its processes, so they restart elsewhere if it crashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: float | None = Field(default=None, gt=0.0, le=86_400.0,
                                description="seconds between two checkpoints of each process "
                                            "(none: only when asked, `tender-ray checkpoint`)")
    dir: str | None = Field(default=None,
                            description="the directory checkpoints go to (default: the "
                                        "cluster's shared plate, or the machine's own)")


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
    host_files: HostFiles = Field(
        default=HostFiles.NODE,
        description="whose host files processes use: node (this host's; a process that came "
                    "from a machine on the same Ray node uses them directly), home (a process "
                    "that came from another machine sends every file call to the machine it "
                    "started on), none (no host files here: only processes that arrived, "
                    "through their home)")
    fault: FaultSpec | None = Field(default=None,
                                    description="a fault to inject once (drills and tests)")
    checkpoint: CheckpointSpec | None = Field(
        default=None, description="checkpoints of the machine's processes (none: off)")
    migration_lease_s: float = Field(
        default=10.0, gt=0.0, le=3600.0,
        description="seconds an arriving migration is kept without a call from its source; "
                    "then the destination releases it")
    migration_call_timeout_s: float = Field(
        default=30.0, gt=0.0, le=3600.0,
        description="seconds this machine waits for a destination's create, commit or abort "
                    "answer when it drives a migration")


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
