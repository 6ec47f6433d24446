"""Configuration models: a machine's settings and the scenarios of configs/*.yaml.

Everything read from a file or the command line is validated here, so the rest of the code can
trust its inputs; an error names the file, the field and what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadProgramError, ConfigError
from .resources.program import parse_program

DEFAULT_QUANTUM_US = 50_000


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
    # to end (`Engine.preempt`), so migrations are no slower for it.
    quantum_us: int = Field(default=DEFAULT_QUANTUM_US, ge=100, le=1_000_000,
                            description="time slice of a timed quantum, microseconds")
    quantum_growth: int = Field(
        default=4, ge=1, le=64,
        description="a process that uses its whole slice gets one twice as long next time, "
                    "up to this many base quanta (1: every slice is the base quantum)")
    quantum_instructions: int | None = Field(
        default=None, ge=1000,
        description="exact quanta of this many instructions (deterministic, slower) instead "
                    "of timed ones")
    engine: str = Field(default="auto", pattern=r"^(auto|native|emulated)$",
                        description="what runs processes: native (host processes under "
                                    "ptrace, Linux x86-64), emulated (Unicorn), or auto: "
                                    "native where its start-up check passes here")
    reuse: bool = Field(default=True, description="pre-create and hold resources for reuse")
    pool_size: int = Field(default=2, ge=0, le=64,
                           description="kernel processes created in advance")
    plate_dir: str | None = Field(default=None,
                                  description="the machine's plate directory (default: a "
                                              "temporary directory)")


# --- scenarios (configs/*.yaml) ---------------------------------------------------------------

class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(default=None, description="existing cluster; none: embedded")
    num_cpus: int | None = Field(default=None, ge=1, description="embedded Ray's CPUs")
    object_store_mib: int = Field(default=256, ge=64)


class MachineSpec(BaseModel):
    """Machines of a scenario: one, or `count` named `<name>0..` when count > 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,60}$")
    count: int = Field(default=1, ge=1, le=64)
    computations: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=512, ge=1, le=1 << 20)
    quantum_us: int = Field(default=DEFAULT_QUANTUM_US, ge=100, le=1_000_000)
    quantum_growth: int = Field(default=4, ge=1, le=64)
    engine: str = Field(default="auto", pattern=r"^(auto|native|emulated)$")
    node_resource: str | None = Field(
        default=None, description="place the machine on the Ray node offering this custom "
                                   "resource")

    def configs(self) -> list[MachineConfig]:
        names = [self.name] if self.count == 1 else [f"{self.name}{i}" for i in range(self.count)]
        return [MachineConfig(name=n, computations=self.computations, memory_mib=self.memory_mib,
                              quantum_us=self.quantum_us, quantum_growth=self.quantum_growth,
                              engine=self.engine) for n in names]


class WorkloadSpec(BaseModel):
    """Processes of one program: `count` of them, arriving at `at` and then every
    1/`rate` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    program: str = Field(description="a file in workloads/bin, or a path (relative to the "
                                     "scenario file)")
    args: list[str] = Field(default_factory=list)
    count: int = Field(default=1, ge=1, le=10_000)
    at: float = Field(default=0.0, ge=0.0, description="seconds after the start")
    rate: float | None = Field(default=None, gt=0.0,
                               description="arrivals per second after the first")
    machine: str | None = Field(default=None,
                                description="where they start; none: the least loaded")
    memory_mib: int = Field(default=0, ge=0,
                            description="memory each process will touch: it starts only on "
                                        "a machine with that much free, and queues until one "
                                        "has (0: start anywhere)")


class BalancerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(default="threshold", pattern=r"^(none|threshold|greedy|age|cost)$")
    interval: float = Field(default=0.25, gt=0.0, le=60.0, description="seconds per round")
    margin: float = Field(default=0.5, ge=0.0)
    max_moves: int = Field(default=2, ge=1, le=1000)
    cooldown: float = Field(default=1.0, ge=0.0)


class MigrationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    transfer: str = Field(default="dsm", pattern=r"^(dsm|plate)$")
    reuse: bool = True
    resources: str = Field(default="needed", pattern=r"^(needed|all)$")


class EventSpec(BaseModel):
    """Something that happens to the cluster at a time: drain, undrain, add or stop a machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(ge=0.0)
    action: str = Field(pattern=r"^(drain|undrain|add_machine|stop_machine)$")
    machine: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    deadline: float = Field(default=30.0, gt=0.0, description="drain: seconds to empty it")
    computations: int = Field(default=1, ge=1, le=64, description="add_machine")
    memory_mib: int = Field(default=512, ge=1, description="add_machine")


class Scenario(BaseModel):
    """A load-balancing scenario: machines, workloads, a balancer, and timed events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    ray: RayOptions = Field(default_factory=RayOptions)
    machines: list[MachineSpec] = Field(min_length=1)
    workloads: list[WorkloadSpec] = Field(min_length=1)
    balancer: BalancerSpec = Field(default_factory=BalancerSpec)
    migration: MigrationSpec = Field(default_factory=MigrationSpec)
    events: list[EventSpec] = Field(default_factory=list)
    timeout: float = Field(default=600.0, gt=0.0, description="seconds before giving up")

    def machine_configs(self) -> list[MachineConfig]:
        return [c for spec in self.machines for c in spec.configs()]


def workloads_dir() -> Path:
    """Where the built workloads are: $TENDER_WORKLOADS, else workloads/bin of this checkout."""
    env = os.environ.get("TENDER_WORKLOADS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "workloads" / "bin"


def resolve_program(program: str, base: Path) -> Path:
    """A scenario's program: a workloads/bin name, or a path relative to the scenario file."""
    for candidate in (workloads_dir() / program, base / program, Path(program)):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(program)


@dataclass(frozen=True)
class ScenarioFile:
    """A scenario as read from its file: the model, the program of each workload that has a
    runnable one, and the problems that do not stop it from running (each a message naming
    the file and the field): a workload whose program is missing or cannot run, a workload
    or an event naming an unknown machine. A run reports those and goes on without them."""

    scenario: Scenario
    programs: dict[int, Path]
    problems: tuple[str, ...]


def read_scenario(path: str | os.PathLike[str]) -> ScenarioFile:
    """Read a scenario file. A file that is not a valid scenario at all (missing, not YAML,
    wrong fields or types, duplicate machines) is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such scenario file (scenarios live in configs/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a scenario is a mapping with machines, workloads, ...")
    data.setdefault("name", p.stem)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{p}: {problems}") from None
    names = {c.name for c in scenario.machine_configs()}
    if len(names) != len(scenario.machine_configs()):
        raise ConfigError(f"{p}: machines: two machines have the same name")
    found: list[str] = []
    known = set(names)
    for i, event in sorted(enumerate(scenario.events), key=lambda ie: ie[1].at):
        if event.action == "add_machine":
            if event.machine in known:
                found.append(f"{p}: events[{i}].machine: {event.machine!r} exists already")
            known.add(event.machine)
        elif event.machine not in known:
            found.append(f"{p}: events[{i}].machine: unknown machine {event.machine!r} "
                         f"(machines: {', '.join(sorted(known))})")
    programs: dict[int, Path] = {}
    for i, w in enumerate(scenario.workloads):
        if w.machine is not None and w.machine not in names:
            found.append(f"{p}: workloads[{i}].machine: unknown machine {w.machine!r} "
                         f"(machines: {', '.join(sorted(names))})")
            continue
        try:
            program = resolve_program(w.program, p.parent)
        except FileNotFoundError:
            found.append(f"{p}: workloads[{i}].program: {w.program!r} not found in "
                         f"{workloads_dir()} nor relative to the scenario")
            continue
        try:
            parse_program(program.read_bytes(), w.program)
        except BadProgramError as exc:
            found.append(f"{p}: workloads[{i}].program: {exc}")
            continue
        programs[i] = program
    return ScenarioFile(scenario, programs, tuple(found))


def load_scenario(path: str | os.PathLike[str]) -> tuple[Scenario, dict[int, Path]]:
    """Read a scenario file and insist it is wholly runnable; the scenario and each
    workload's program. Any problem is a ConfigError naming the file, the field and what is
    wrong."""
    read = read_scenario(path)
    if read.problems:
        raise ConfigError("; ".join(read.problems))
    return read.scenario, read.programs
