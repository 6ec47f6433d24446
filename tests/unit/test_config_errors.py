"""Scenario-file errors a person can act on: each problem on its own line, at the file, line
and column of the offending value (or key), with the closest allowed field or enum value
suggested and an enum's choices named (no Ray: reading a file only checks it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tender_ray.cli.main import main as cli_main
from tender_ray.cli.scenario.model import load_scenario, read_scenario
from tender_ray.cli.scenario.yaml_marks import load_marked
from tender_ray.errors import ConfigError

# A valid scenario to break one line at a time; its lines and columns are what the tests
# below assert, so it is spelled out rather than dumped.
GOOD = """\
name: t
machines:
  - name: m
    count: 2
    computations: 1
workloads:
  - program: hello
    count: 1
balancer:
  policy: greedy
events:
  - at: 1.0
    action: drain
    machine: m0
"""


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """The lines of the ConfigError that loading `text` raises."""
    with pytest.raises(ConfigError) as info:
        load_scenario(write(tmp_path, text))
    return str(info.value).splitlines()


def only(tmp_path: Path, text: str) -> str:
    lines = problems(tmp_path, text)
    assert len(lines) == 1, lines
    return lines[0]


def test_the_base_scenario_is_valid(tmp_path: Path) -> None:
    scenario, _ = load_scenario(write(tmp_path, GOOD))
    assert scenario.balancer.policy == "greedy"


# --- unknown fields: at the key, with the closest allowed field -----------------------------

def test_unknown_field_points_at_the_key_and_suggests(tmp_path: Path) -> None:
    text = GOOD.replace("    computations: 1", "    computatons: 1")
    path = tmp_path / "bad.yaml"
    assert only(tmp_path, text) == (
        f"{path}:5:5: machines.0.computatons: unknown field, extra inputs are not permitted "
        f"(did you mean 'computations'?)")


def test_unknown_top_level_field(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD + "timout: 5\n")
    assert line.endswith(":15:1: timout: unknown field, extra inputs are not permitted "
                         "(did you mean 'timeout'?)")


def test_unknown_field_far_from_any_lists_the_fields(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("  policy: greedy", "  policy: greedy\n  zzz: 1"))
    assert ":11:3: balancer.zzz: unknown field" in line
    assert "did you mean" not in line
    assert "(fields: policy, interval, margin, max_moves, cooldown)" in line


# --- enums: by name, with the closest value ---------------------------------------------------

def test_policy_names_the_choices_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    assert only(tmp_path, GOOD.replace("policy: greedy", "policy: gredy")) == (
        f"{path}:10:11: balancer.policy: 'gredy' is not one of none, threshold, greedy, age, "
        f"cost (did you mean 'greedy'?)")


def test_event_action_suggests(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("action: drain", "action: drian"))
    assert line.endswith(":13:13: events.0.action: 'drian' is not one of drain, undrain, "
                         "add_machine, stop_machine, crash_machine (did you mean 'drain'?)")


def test_enum_without_a_close_value_only_lists(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD + "migration:\n  transfer: 7\n")
    assert line.endswith(":16:13: migration.transfer: 7 is not one of dsm, plate")


# --- other values: at the value, with what was given ---------------------------------------

def test_wrong_type_points_at_the_value(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("    count: 1", "    count: many"))
    assert line.endswith(":8:12: workloads.0.count: Input should be a valid integer, unable "
                         "to parse string as an integer (got 'many')")


def test_out_of_bounds_in_a_flow_mapping(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD + "ray: {num_cpus: 0}\n")
    assert ":15:17: ray.num_cpus: Input should be greater than or equal to 1 (got 0)" in line


def test_missing_field_points_at_its_mapping(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("  - program: hello\n    count: 1", "  - count: 1"))
    assert line.endswith(":7:5: workloads.0.program: Field required")


def test_missing_top_level_field_points_at_the_start(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.split("workloads:")[0])
    assert line.endswith(":1:1: workloads: Field required")


def test_empty_value(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("balancer:\n  policy: greedy\n", "machines:\n"
                                       ).replace("machines:\n  - name: m\n    count: 2\n"
                                                 "    computations: 1\n", ""))
    assert "machines: Input should be a valid list (got nothing)" in line


def test_machine_name_pattern_in_words(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("name: m\n", "name: 'm 0'\n"))
    assert line.endswith(":3:11: machines.0.name: 'm 0' is not a name: 1 to 60 letters, "
                         "digits, '_' or '-'")


# --- several problems: one line each, in the file's order ---------------------------------

def test_several_problems_one_line_each_in_file_order(tmp_path: Path) -> None:
    text = (GOOD.replace("action: drain", "action: drian")
            .replace("    computations: 1", "    computatons: 1")
            .replace("    count: 1", "    count: many"))
    lines = problems(tmp_path, text)
    path = tmp_path / "bad.yaml"
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:5:5", "machines.0.computatons"],
        [f"{path}:8:12", "workloads.0.count"],
        [f"{path}:13:13", "events.0.action"],
    ]


# --- YAML syntax and structure -----------------------------------------------------------------

def test_yaml_syntax_error_has_its_mark(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    assert only(tmp_path, "machines: [ {name: m\nworkloads: {{{\n") == (
        f"{path}:2:10: not valid YAML: expected ',' or '}}', but got ':' "
        f"(while parsing a flow mapping at 1:13)")


def test_bad_indentation(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD.replace("    count: 2", "   count: 2"))
    assert line.startswith(f"{tmp_path / 'bad.yaml'}:4:")
    assert "not valid YAML" in line


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    line = only(tmp_path, GOOD + "balancer: {policy: age}\n")
    assert line.endswith(":15:1: not valid YAML: found duplicate key 'balancer' "
                         "('balancer' first given at 9:1)")


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: m\n    count: 2\n    computations: 1\n",
                        "  - &small {name: m, count: 2, computations: 1}\n"
                        "  - <<: *small\n    name: n\n    computatons: 2\n")
    assert only(tmp_path, text).endswith(":6:5: machines.1.computatons: unknown field, extra "
                                         "inputs are not permitted (did you mean "
                                         "'computations'?)")


def test_not_a_mapping_is_at_the_start(tmp_path: Path) -> None:
    assert only(tmp_path, "\n- a\n- b\n").startswith(f"{tmp_path / 'bad.yaml'}:2:1: ")
    assert "empty" in only(tmp_path, "# nothing\n")


def test_duplicate_machine_names_point_at_the_second(tmp_path: Path) -> None:
    text = GOOD.replace("workloads:", "  - name: m1\nworkloads:")
    assert only(tmp_path, text).endswith(":6:11: machines[1].name: two machines have the "
                                         "same name, 'm1'")


# --- problems that do not stop a run: unknown machines, missing programs ----------------------

def test_unknown_machines_and_programs_are_at_their_values(tmp_path: Path) -> None:
    text = (GOOD.replace("machine: m0", "machine: m2")
            .replace("    count: 1\n", "    count: 1\n    machine: m11\n  - program: nosuch\n"))
    path = write(tmp_path, text)
    read = read_scenario(path)
    assert read.problems == (
        f"{path}:9:14: workloads[0].machine: unknown machine 'm11' (did you mean 'm1'?) "
        f"(machines: m0, m1)",
        read.problems[1],
        # m2 is as far from m0 as from m1: no guess
        f"{path}:16:14: events[0].machine: unknown machine 'm2' (machines: m0, m1)",
    )
    assert read.problems[1].startswith(f"{path}:10:14: workloads[1].program: 'nosuch' not "
                                       f"found")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(info.value).splitlines() == list(read.problems)


# --- the loader's marks --------------------------------------------------------------------

def test_load_marked_positions() -> None:
    marked = load_marked("a:\n  - x: 1\n    y: [2, 3]\nb: {c: d}\n")
    assert marked.data == {"a": [{"x": 1, "y": [2, 3]}], "b": {"c": "d"}}
    assert marked.values[("a", 0, "x")] == (2, 8)
    assert marked.values[("a", 0, "y", 1)] == (3, 12)
    assert marked.keys[("a", 0, "y")] == (3, 5)
    assert marked.values[("b", "c")] == (4, 8)
    # Beyond what the file has: the nearest enclosing value.
    assert marked.where(("a", 0, "z")) == (2, 5)
    assert marked.where(("b", "c"), key=True) == (4, 5)
    assert load_marked("").data is None


def test_load_marked_refuses_a_recursive_alias() -> None:
    with pytest.raises(Exception, match="recursive"):
        load_marked("a: &x [1, *x]\n")


# --- the command line: before Ray, exit 2, one line per problem -----------------------------

def test_run_prints_one_line_per_problem(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD.replace("policy: greedy", "policy: gredy")
                 .replace("    computations: 1", "    computatons: 1"))
    assert cli_main(["run", str(path), "--no-live", "--report", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"tender-ray: error: {path}:5:5: machines.0.computatons: unknown field, extra inputs "
        f"are not permitted (did you mean 'computations'?)",
        f"{path}:10:11: balancer.policy: 'gredy' is not one of none, threshold, greedy, age, "
        f"cost (did you mean 'greedy'?)",
    ]
    assert not (tmp_path / "r").exists()
