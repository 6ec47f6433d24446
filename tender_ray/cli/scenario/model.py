"""The scenarios of configs/*.yaml: machines, workloads, a balancer, migration options and timed
events, validated from their files so the scenario runner can trust them."""

from __future__ import annotations

import contextlib
import copy
import difflib
import enum
import os
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticUndefined

from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.cli.scenario.yaml_marks import Position, load_marked, position
from tender_ray.config import CheckpointSpec, Engine, MachineConfig, workloads_dir
from tender_ray.errors import BadProgramError, ConfigError
from tender_ray.migration.options import (
    MigrationMode,
    MigrationOptions,
    Resources,
    Transfer,
    migration_mode,
)
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
    stdin: str | None = Field(default=None,
                              description="a file that is its standard input (relative to "
                                          "the scenario file); none: stdin reads as ended")
    cwd: str | None = Field(default=None,
                            description="its working directory (relative to the scenario "
                                        "file; default: the scenario file's directory)")
    writable: list[str] = Field(default_factory=list,
                                description="directories it may write under (relative to "
                                            "the scenario file); none: the files are "
                                            "read-only")

    def with_paths(self, base: Path) -> WorkloadSpec:
        """The same workload with its file paths made absolute against `base`."""
        def absolute(path: str) -> str:
            return str((base / path).resolve())
        return self.model_copy(update={
            "stdin": absolute(self.stdin) if self.stdin is not None else None,
            "cwd": absolute(self.cwd if self.cwd is not None else "."),
            "writable": [absolute(w) for w in self.writable]})


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
    mode: MigrationMode = MigrationOptions.mode  # stop, precopy or auto

    @field_validator("mode", mode="before")
    @classmethod
    def _known_mode(cls, value: object) -> object:
        # One clear line for a mode not offered (postcopy: not available yet).
        return migration_mode(value) if isinstance(value, str) else value

    def options(self) -> MigrationOptions:
        return MigrationOptions(transfer=self.transfer, reuse=self.reuse,
                                resources=self.resources, mode=self.mode)


class EventAction(str, enum.Enum):
    DRAIN = "drain"  # move every process off the machine, then keep it empty
    UNDRAIN = "undrain"  # let it take processes again
    ADD_MACHINE = "add_machine"
    STOP_MACHINE = "stop_machine"  # without a drain: what ran there is lost
    # Its actor's worker killed (SIGKILL): what had a checkpoint restarts elsewhere from it.
    CRASH_MACHINE = "crash_machine"


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
    checkpoint: CheckpointSpec | None = Field(
        default=None, description="every machine checkpoints its processes (`every: S`), so "
                                  "a crashed machine's restart elsewhere")

    def machine_configs(self) -> list[MachineConfig]:
        configs = [c for spec in self.machines for c in spec.configs()]
        if self.checkpoint is None:
            return configs
        return [c.model_copy(update={"checkpoint": self.checkpoint}) for c in configs]


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


# --- errors a person can act on: where (file:line:column), what, and what was meant ---------

def _at(path: Path, where: Position | None) -> str:
    """`file:line:column`, the prefix of every problem (editors jump to it); the file alone
    when the value is not in the file (a default, or no file at all)."""
    return f"{path}:{where[0]}:{where[1]}" if where else str(path)


def _did_you_mean(word: object, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to `word`, if one is close enough."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unwrap(annotation: Any) -> Any:
    """`X | None` as `X`: an optional field's errors are about X."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _type_at(loc: tuple[str | int, ...]) -> Any:
    """The type Scenario expects at pydantic's `loc` (a model, an enum, ...), None if `loc`
    leads nowhere the models know."""
    current: Any = Scenario
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            current = info.annotation
        elif get_origin(current) is list and isinstance(part, int):
            current = get_args(current)[0]
        else:
            return None
    return _unwrap(current)


# A name pattern as MachineConfig's (`^[A-Za-z0-9_-]{1,64}$`), said in words.
_NAME_PATTERN = re.compile(r"^\^\[A-Za-z0-9_-\]\{1,(\d+)\}\$$")


def _explain(error: ErrorDetails) -> str:
    """One pydantic error as `loc: what is wrong`, on one line: an unknown field with the
    closest allowed one, an enum's choices by name, a name pattern in words, and otherwise
    pydantic's message with the value that was given."""
    loc = error["loc"]
    field = ".".join(str(x) for x in loc)
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        model = _type_at(loc[:-1])
        allowed = list(model.model_fields) if isinstance(model, type) and issubclass(
            model, BaseModel) else []
        hint = _did_you_mean(str(loc[-1]), allowed) or (
            f" (fields: {', '.join(allowed)})" if allowed else "")
        return f"{field}: unknown field, extra inputs are not permitted{hint}"
    expected = _type_at(loc)
    if error["type"] == "enum" and isinstance(expected, type) and issubclass(
            expected, enum.Enum):
        values = [str(member.value) for member in expected]
        shown = "nothing" if given is None else repr(given)  # `policy:` left empty
        return (f"{field}: {shown} is not one of {', '.join(values)}"
                f"{_did_you_mean(given, values)}")
    if error["type"] == "string_pattern_mismatch":
        words = _NAME_PATTERN.match(str(error.get("ctx", {}).get("pattern", "")))
        if words:
            return (f"{field}: {given!r} is not a name: 1 to {words[1]} letters, digits, "
                    f"'_' or '-'")
    message = " ".join(error["msg"].split())  # one line, whatever pydantic says
    if given is None and error["type"] != "missing":
        message += " (got nothing)"  # `machines:` with nothing after it, say
    elif isinstance(given, str | int | float | bool) and error["type"] != "missing":
        shown = repr(given)
        message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return f"{field}: {message}"


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line, at its mark; where the construct it broke began
    follows in brackets (an unclosed bracket, say, is reported where the file goes on)."""
    if isinstance(exc, yaml.MarkedYAMLError) and (exc.problem_mark or exc.context_mark):
        mark = exc.problem_mark or exc.context_mark
        message = f"{_at(path, position(mark))}: not valid YAML: {exc.problem or exc.context}"
        began = position(exc.context_mark)
        if exc.context and exc.problem and began:
            message += f" ({exc.context} at {began[0]}:{began[1]})"
        return " ".join(message.split())
    return f"{path}: not valid YAML: {' '.join(str(exc).split())}"


def _duplicate(scenario: Scenario) -> tuple[int, str] | None:
    """The first machine spec (its index) that repeats a name an earlier one made, and that
    name."""
    seen: set[str] = set()
    for i, spec in enumerate(scenario.machines):
        for config in spec.configs():
            if config.name in seen:
                return i, config.name
            seen.add(config.name)
    return None


def read_scenario(path: str | os.PathLike[str]) -> ScenarioFile:
    """Read a scenario file. A file that is not a valid scenario at all (missing, not YAML,
    wrong fields or types, duplicate machines) is a ConfigError: one line per problem, each
    `file:line:column: field: what is wrong` (with a suggestion where one is close)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such scenario file (scenarios live in configs/)")
    try:
        marked = load_marked(p.read_bytes())  # bytes: PyYAML detects the encoding
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(p, exc)) from None
    data = marked.data
    if not isinstance(data, dict):
        empty = " (this file is empty)" if data is None else ""
        raise ConfigError(f"{_at(p, marked.where(()))}: a scenario is a mapping with "
                          f"machines, workloads, ...{empty}")
    data.setdefault("name", p.stem)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        errors = [(marked.where(e["loc"], key=e["type"] == "extra_forbidden"), e)
                  for e in exc.errors()]
        # In the file's order: a person fixes them top to bottom.
        errors.sort(key=lambda we: we[0] or (0, 0))
        raise ConfigError("\n".join(f"{_at(p, where)}: {_explain(e)}"
                                     for where, e in errors)) from None
    duplicate = _duplicate(scenario)
    if duplicate is not None:
        i, name = duplicate
        raise ConfigError(f"{_at(p, marked.where(('machines', i, 'name')))}: "
                          f"machines[{i}].name: two machines have the same name, {name!r}")
    found: list[tuple[Position | None, str]] = []  # where, and the whole message
    names = {c.name for c in scenario.machine_configs()}
    known = set(names)

    def problem(loc: tuple[str | int, ...], message: str) -> None:
        where = marked.where(loc)
        found.append((where, f"{_at(p, where)}: {loc[0]}[{loc[1]}].{loc[2]}: {message}"))

    def unknown(loc: tuple[str | int, ...], name: str, machines: set[str]) -> None:
        problem(loc, f"unknown machine {name!r}{_did_you_mean(name, machines)} "
                     f"(machines: {', '.join(sorted(machines))})")

    for i, event in sorted(enumerate(scenario.events), key=lambda ie: ie[1].at):
        if event.action is EventAction.ADD_MACHINE:
            if event.machine in known:
                problem(("events", i, "machine"), f"{event.machine!r} exists already")
            known.add(event.machine)
        elif event.machine not in known:
            unknown(("events", i, "machine"), event.machine, known)
    scenario = scenario.model_copy(update={
        "workloads": [w.with_paths(p.parent) for w in scenario.workloads]})
    programs: dict[int, Path] = {}
    for i, w in enumerate(scenario.workloads):
        if w.stdin is not None and not Path(w.stdin).is_file():
            problem(("workloads", i, "stdin"), f"{w.stdin!r} is not a file")
            continue
        if w.machine is not None and w.machine not in names:
            unknown(("workloads", i, "machine"), w.machine, names)
            continue
        try:
            program = resolve_program(w.program, p.parent)
        except FileNotFoundError:
            try:
                where = f"in {workloads_dir()} nor "
            except FileNotFoundError:
                where = ""
            problem(("workloads", i, "program"),
                    f"{w.program!r} not found {where}relative to the scenario")
            continue
        try:
            parse_program(program.read_bytes(), w.program)
        except BadProgramError as exc:
            problem(("workloads", i, "program"), " ".join(str(exc).split()))
            continue
        programs[i] = program
    found.sort(key=lambda wm: wm[0] or (0, 0))  # in the file's order
    return ScenarioFile(scenario, programs, tuple(message for _, message in found))


def load_scenario(path: str | os.PathLike[str]) -> tuple[Scenario, dict[int, Path]]:
    """Read a scenario file and insist it is wholly runnable; the scenario and each
    workload's program. Any problem is a ConfigError, one line per problem, each naming the
    file, line and column, the field and what is wrong."""
    read = read_scenario(path)
    if read.problems:
        raise ConfigError("\n".join(read.problems))
    return read.scenario, read.programs
