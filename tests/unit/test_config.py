"""Scenario files: every shipped config loads, and every bad file is a ConfigError that names
the file and the field (no Ray: `load_scenario` only reads and checks). And one source of
truth: the command line's and the scenario models' settings are MachineConfig's, their choices
the enums'."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from support.programs import ROOT, workload

from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.cli.main import build_parser
from tender_ray.cli.main import main as cli_main
from tender_ray.cli.scenario.model import (
    BalancerSpec,
    EventAction,
    EventSpec,
    MachineSpec,
    MigrationSpec,
    Scenario,
    load_scenario,
    read_scenario,
)
from tender_ray.config import Engine, MachineConfig
from tender_ray.engines import ENGINES
from tender_ray.errors import ConfigError, UsageError
from tender_ray.migration.options import MigrationOptions, Resources, Transfer

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "machines": [{"name": "m", "count": 2, "computations": 1, "memory_mib": 64}],
        "workloads": [{"program": "hello", "count": 1}],
    }
    data.update(changes)
    return data


def write(tmp_path: Path, data: Any, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    return message


# --- the shipped scenarios ------------------------------------------------------------------

def test_there_are_configs() -> None:
    assert {"laptop", "hotspot", "drain"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads(path: Path) -> None:
    scenario, programs = load_scenario(path)
    assert isinstance(scenario, Scenario)
    assert scenario.name == path.stem
    assert set(programs) == set(range(len(scenario.workloads)))
    for program in programs.values():
        assert program.is_file() and os.access(program, os.X_OK)
    names = [c.name for c in scenario.machine_configs()]
    assert len(names) == len(set(names))
    known = set(names) | {e.machine for e in scenario.events if e.action == "add_machine"}
    assert all(e.machine in known for e in scenario.events)
    assert all(w.machine is None or w.machine in names for w in scenario.workloads)


def test_load_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    for arg in (path, str(path)):
        scenario, programs = load_scenario(arg)
        assert [c.name for c in scenario.machine_configs()] == ["m0", "m1"]
        assert programs[0] == workload("hello").resolve()


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    data = base()
    del data["name"]
    scenario, _ = load_scenario(write(tmp_path, data, "my-scenario.yaml"))
    assert scenario.name == "my-scenario"


def test_program_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    own = tmp_path / "bin" / "mine"
    own.write_bytes(workload("hello").read_bytes())
    _, programs = load_scenario(write(tmp_path, base(workloads=[{"program": "bin/mine"}])))
    assert programs[0] == own.resolve()


# --- bad files: each a ConfigError naming the file and the field ----------------------------

def test_missing_file(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.yaml")
    assert "no such" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "machines: [ {name: m\nworkloads: {{{\n"))
    assert "YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    config_error(write(tmp_path, text))


@pytest.mark.parametrize(("where", "field"), [
    ("top", "colour"), ("machine", "colour"), ("workload", "priority"), ("balancer", "speed"),
    ("event", "why"),
])
def test_unknown_field(tmp_path: Path, where: str, field: str) -> None:
    data = base(events=[{"at": 1.0, "action": "drain", "machine": "m0"}],
                balancer={"policy": "greedy"})
    target = {"top": data, "machine": data["machines"][0], "workload": data["workloads"][0],
              "balancer": data["balancer"], "event": data["events"][0]}[where]
    target[field] = 1
    message = config_error(write(tmp_path, data))
    assert field in message
    assert "xtra" in message  # pydantic: "Extra inputs are not permitted"


@pytest.mark.parametrize(("change", "field"), [
    ({"workloads": [{"program": "hello", "count": "many"}]}, "workloads.0.count"),
    ({"machines": [{"name": "m", "memory_mib": "lots"}]}, "machines.0.memory_mib"),
    ({"machines": [{"name": "m", "computations": 0}]}, "machines.0.computations"),
    ({"balancer": {"policy": "random"}}, "balancer.policy"),
    ({"events": [{"at": 1, "action": "explode", "machine": "m0"}]}, "events.0.action"),
    ({"events": [{"at": -1, "action": "drain", "machine": "m0"}]}, "events.0.at"),
    ({"machines": []}, "machines"),
    ({"workloads": "hello"}, "workloads"),
    ({"timeout": 0}, "timeout"),
])
def test_wrong_type_or_value(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    message = config_error(write(tmp_path, base(**change)))
    assert field in message


def test_missing_required_field(tmp_path: Path) -> None:
    data = base()
    del data["workloads"]
    assert "workloads" in config_error(write(tmp_path, data))


def test_program_not_found(tmp_path: Path) -> None:
    data = base(workloads=[{"program": "hello"}, {"program": "no-such-program", "count": 2}])
    message = config_error(write(tmp_path, data))
    assert "workloads[1].program" in message
    assert "no-such-program" in message


def test_workload_on_an_unknown_machine(tmp_path: Path) -> None:
    data = base(workloads=[{"program": "hello", "machine": "m7"}])
    message = config_error(write(tmp_path, data))
    assert "workloads[0].machine" in message and "m7" in message
    assert "m0" in message  # the machines that do exist


def test_event_on_an_unknown_machine(tmp_path: Path) -> None:
    data = base(events=[{"at": 1.0, "action": "drain", "machine": "ghost"}])
    message = config_error(write(tmp_path, data))
    assert "events[0].machine" in message and "ghost" in message


@pytest.mark.parametrize("action", ["drain", "undrain", "stop_machine"])
def test_every_machine_event_checks_the_name(tmp_path: Path, action: str) -> None:
    data = base(events=[{"at": 1.0, "action": action, "machine": "ghost"}])
    assert "ghost" in config_error(write(tmp_path, data))


def test_add_machine_makes_a_later_drain_valid(tmp_path: Path) -> None:
    data = base(events=[{"at": 1.0, "action": "add_machine", "machine": "extra"},
                        {"at": 2.0, "action": "drain", "machine": "extra"},
                        {"at": 3.0, "action": "stop_machine", "machine": "extra"}])
    scenario, _ = load_scenario(write(tmp_path, data))
    assert [e.action for e in scenario.events] == ["add_machine", "drain", "stop_machine"]
    # ... whatever order the file lists them in: what counts is time
    data["events"].reverse()
    load_scenario(write(tmp_path, data, "reversed.yaml"))


def test_drain_before_the_machine_is_added_is_an_error(tmp_path: Path) -> None:
    data = base(events=[{"at": 5.0, "action": "add_machine", "machine": "extra"},
                        {"at": 2.0, "action": "drain", "machine": "extra"}])
    assert "extra" in config_error(write(tmp_path, data))


def test_add_machine_that_exists(tmp_path: Path) -> None:
    data = base(events=[{"at": 1.0, "action": "add_machine", "machine": "m1"}])
    message = config_error(write(tmp_path, data))
    assert "events[0].machine" in message and "m1" in message


def test_event_error_names_the_index_in_the_file(tmp_path: Path) -> None:
    data = base(events=[{"at": 5.0, "action": "drain", "machine": "m0"},
                        {"at": 1.0, "action": "drain", "machine": "ghost"}])
    assert "events[1].machine" in config_error(write(tmp_path, data))


@pytest.mark.parametrize("machines", [
    [{"name": "a"}, {"name": "a"}],
    [{"name": "m", "count": 2}, {"name": "m1"}],  # m0, m1 and m1
])
def test_duplicate_machine_names(tmp_path: Path, machines: list[dict[str, Any]]) -> None:
    data = base(machines=machines, workloads=[{"program": "hello"}])
    message = config_error(write(tmp_path, data))
    assert "machines" in message and "same name" in message


def test_config_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError)


def test_run_with_a_bad_scenario_is_a_one_line_error(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`tender-ray run bad.yaml` with a file that is no scenario fails before starting Ray:
    exit 2 and the message naming the file and the field."""
    data = base()
    data["machines"][0]["colour"] = "red"
    path = write(tmp_path, data)
    assert cli_main(["run", str(path), "--no-live", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tender-ray: error: ")
    assert str(path) in err and "colour" in err
    assert not (tmp_path / "r").exists()


def test_read_scenario_reports_runnable_problems(tmp_path: Path) -> None:
    """A drain of an unknown machine or a missing program does not stop a run: the file check
    lists each problem (file and field), the strict loader refuses."""
    data = base(events=[{"at": 1.0, "action": "drain", "machine": "ghost"}])
    data["workloads"].append({"program": "no-such-program"})
    path = write(tmp_path, data)
    read = read_scenario(path)
    assert len(read.problems) == 2
    assert any("events[0].machine" in p and "ghost" in p for p in read.problems)
    assert any("workloads[1].program" in p for p in read.problems)
    assert all(str(path) in p for p in read.problems)
    assert set(read.programs) == {0}
    with pytest.raises(ConfigError, match="ghost"):
        load_scenario(path)


# --- one source of truth: the command line and the scenario models take MachineConfig's ------

# (option dest on the command line, MachineConfig field)
MACHINE_OPTIONS = [("computations", "computations"), ("memory_mib", "memory_mib"),
                   ("quantum_us", "quantum_us"), ("exact", "quantum_instructions"),
                   ("engine", "engine")]


def _model_default(field: str) -> Any:
    default = MachineConfig.model_fields[field].default
    return default.value if isinstance(default, enum.Enum) else default


# exec sizes its machines' real memory from the host's (exec_command.default_memory_mib)
# when --memory-mib is not given; every other setting is the model's.
EXEC_OPTIONS = [o for o in MACHINE_OPTIONS if o[0] != "memory_mib"]


@pytest.mark.parametrize(("dest", "field"), EXEC_OPTIONS)
def test_exec_defaults_are_machine_config_defaults(dest: str, field: str) -> None:
    ns = build_parser().parse_args(["exec", "program"])
    assert getattr(ns, dest) == _model_default(field)


def test_exec_memory_defaults_to_the_hosts() -> None:
    assert build_parser().parse_args(["exec", "program"]).memory_mib is None


@pytest.mark.parametrize(("dest", "field"), [o for o in MACHINE_OPTIONS
                                             if o[0] in ("computations", "memory_mib")])
def test_up_defaults_are_machine_config_defaults(dest: str, field: str) -> None:
    ns = build_parser().parse_args(["up"])
    assert getattr(ns, dest) == _model_default(field)


def test_exec_help_shows_the_model_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["exec", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in ("computations", "quantum_us", "engine"):
        assert f"(default {_model_default(field)})" in text, field
    assert "(default: half the host's available memory" in text


def test_engine_choices_are_the_engines() -> None:
    assert [e.value for e in Engine] == ["auto", *ENGINES]
    for engine in Engine:
        assert build_parser().parse_args(["exec", "--engine", engine.value, "p"]).engine \
            == engine.value
        assert MachineConfig(engine=engine.value).engine is engine
    with pytest.raises(ValidationError):
        MachineConfig(engine="quantum")


def test_policy_choices_are_the_policy_enum() -> None:
    for policy in Policy:
        assert build_parser().parse_args(["up", "--policy", policy.value]).policy \
            == policy.value
        assert BalancerSpec(policy=policy.value).policy is policy


@pytest.mark.parametrize(("model", "fields"), [
    (MachineSpec, MachineSpec.SHARED), (EventSpec, ("computations", "memory_mib", "machine")),
])
def test_scenario_models_take_machine_config_fields(model: type[BaseModel],
                                                    fields: tuple[str, ...]) -> None:
    for name in fields:
        own = MachineConfig.model_fields["name" if name == "machine" else name]
        field = model.model_fields[name]
        assert field.annotation == own.annotation, name
        assert repr(field.metadata) == repr(own.metadata), name  # bounds, pattern
        if name != "machine":  # the machine an event names has no default
            assert field.default == own.default, name


def test_scenario_machines_are_machine_configs() -> None:
    spec = MachineSpec(name="m", count=2, quantum_us=2000, engine="emulated")
    assert spec.configs() == [MachineConfig(name=n, quantum_us=2000, engine=Engine.EMULATED)
                              for n in ("m0", "m1")]
    event = EventSpec(at=1.0, action="add_machine", machine="x", memory_mib=64)
    assert event.action is EventAction.ADD_MACHINE
    assert event.machine_config() == MachineConfig(name="x", memory_mib=64)


def test_scenario_migration_and_balancer_defaults_are_the_options() -> None:
    assert MigrationSpec().options() == MigrationOptions()
    assert MigrationSpec(transfer="plate", resources="all").options() == MigrationOptions(
        transfer=Transfer.PLATE, resources=Resources.ALL)
    assert BalancerSpec().params() == BalancerParams()
    assert BalancerSpec().params(Policy.GREEDY).policy is Policy.GREEDY
