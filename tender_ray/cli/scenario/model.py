"""The scenarios of configs/*.yaml: machines, workloads, a balancer, migration options and timed
events, validated from their files so the scenario runner can trust them."""

from __future__ import annotations

import contextlib
import copy
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.config import Engine, MachineConfig, workloads_dir
from tender_ray.errors import BadProgramError, ConfigError
from tender_ray.migration.options import MigrationOptions, Resources, Transfer
from tender_ray.resources.program import parse_program


def machine_field(name: str, **changes: Any) -> Any:
    """MachineConfig's field `name` (default, bounds, description), for a scenario model that
    takes the same setting: a scenario never states a machine setting's limits a second time.
    `changes` override attributes of the copy (a description of its own, say)."""
    info = copy.deepcopy(MachineConfig.model_fields[name])
    for attribute, value in changes.items():
        setattr(info, attribute, value)
    return info


class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(default=None, description="existing cluster; none: embedded")
    num_cpus: int | None = Field(default=None, ge=1, description="embedded Ray's CPUs")
    object_store_mib: int = Field(default=256, ge=64)


class MachineSpec(BaseModel):
    """Machines of a scenario: one, or `count` named `<name>0..` when count > 1. The settings
    they share with MachineConfig are MachineConfig's own fields (`machine_field`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # MachineConfig's settings a scenario may set for its machines.
    SHARED: ClassVar[tuple[str, ...]] = ("computations", "memory_mib", "quantum_us",
                                          "quantum_growth", "engine")

    # Shorter than a machine's name: room for the number `count` appends.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,60}$")
    count: int = Field(default=1, ge=1, le=64)
    computations: int = machine_field("computations")
    memory_mib: int = machine_field("memory_mib")
    quantum_us: int = machine_field("quantum_us")
    quantum_growth: int = machine_field("quantum_growth")
    engine: Engine = machine_field("engine")
    node_resource: str | None = Field(
        default=None, description="place the machine on the Ray node offering this custom "
                                   "resource")

    def configs(self) -> list[MachineConfig]:
        names = [self.name] if self.count == 1 else [f"{self.name}{i}" for i in range(self.count)]
        shared = self.model_dump(include=set(self.SHARED))
        return [MachineConfig(name=n, **shared) for n in names]


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
    """The balancer of a scenario: its policy and BalancerParams' knobs (their defaults are
    BalancerParams' own), and how often it looks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = BalancerParams.policy
    interval: float = Field(default=0.25, gt=0.0, le=60.0, description="seconds per round")
    margin: float = Field(default=BalancerParams.margin, ge=0.0)
    max_moves: int = Field(default=BalancerParams.max_moves, ge=1, le=1000)
    cooldown: float = Field(default=BalancerParams.cooldown, ge=0.0)

    def params(self, policy: Policy | None = None) -> BalancerParams:
        """The balancer's parameters, with `policy` instead of the file's where given."""
        return BalancerParams(policy=policy or self.policy, margin=self.margin,
                              max_moves=self.max_moves, cooldown=self.cooldown)


class MigrationSpec(BaseModel):
    """How the scenario's migrations go; the defaults are MigrationOptions' own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transfer: Transfer = MigrationOptions.transfer
    reuse: bool = MigrationOptions.reuse
    resources: Resources = MigrationOptions.resources

    def options(self) -> MigrationOptions:
        return MigrationOptions(transfer=self.transfer, reuse=self.reuse,
                                resources=self.resources)


class EventAction(str, enum.Enum):
    DRAIN = "drain"  # move every process off the machine, then keep it empty
    UNDRAIN = "undrain"  # let it take processes again
    ADD_MACHINE = "add_machine"
    STOP_MACHINE = "stop_machine"  # without a drain: what ran there is lost


class EventSpec(BaseModel):
    """Something that happens to the cluster at a time: drain, undrain, add or stop a machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(ge=0.0)
    action: EventAction
    machine: str = machine_field("name", default=PydanticUndefined)
    deadline: float = Field(default=30.0, gt=0.0, description="drain: seconds to empty it")
    computations: int = machine_field("computations", description="add_machine: "
                                      "processes that may run at once (processor slots)")
    memory_mib: int = machine_field("memory_mib", description="add_machine: real memory, MiB")

    def machine_config(self) -> MachineConfig:
        """The machine an add_machine event adds."""
        return MachineConfig(name=self.machine, computations=self.computations,
                             memory_mib=self.memory_mib)


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


def resolve_program(program: str, base: Path) -> Path:
    """A scenario's program: a workloads/bin name, or a path relative to the scenario file."""
    candidates = [base / program, Path(program)]
    with contextlib.suppress(FileNotFoundError):  # no workloads here: paths only
        candidates.insert(0, workloads_dir() / program)
    for candidate in candidates:
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
        if event.action is EventAction.ADD_MACHINE:
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
            try:
                where = f"in {workloads_dir()} nor "
            except FileNotFoundError:
                where = ""
            found.append(f"{p}: workloads[{i}].program: {w.program!r} not found "
                         f"{where}relative to the scenario")
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
