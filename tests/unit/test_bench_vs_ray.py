"""The vs-ray benchmark's pure parts, without a Ray cluster: the cores over time a scenario
gives, the ideal makespan over them, the work each side threw away, the comparison with the
native outputs, one case's figures assembled from both sides' records, the JSON's shape, the
shortened (--quick) scenarios, the scenario files themselves, and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tender_ray.balancing.policies import Policy
from tender_ray.bench.vs_ray import (
    CASES,
    CaseResult,
    Native,
    assemble,
    capacity,
    case_result,
    configs_dir,
    ideal_makespan,
    main,
    outputs_native,
    ray_lost_cpu,
    scaled,
    table,
    tender_lost_cpu,
)
from tender_ray.bench.vs_ray_sides import RaySide, jobs_of, node_cores
from tender_ray.cli.scenario.model import EventAction, load_scenario, read_scenario
from tender_ray.cli.scenario.report import (
    LostProcess,
    MigrationSummary,
    Parallelism,
    ProcessReport,
    Report,
    RestartedProcess,
)
from tender_ray.cluster.ray_tasks import Attempt, TaskResult

CONFIGS = configs_dir()


def scenario_of(case: str) -> Path:
    return CONFIGS / f"vs-ray-{case.replace('_', '-')}.yaml"


@pytest.mark.parametrize("case", CASES)
def test_every_case_is_a_scenario_a_user_can_run(case: str) -> None:
    read = read_scenario(scenario_of(case))
    assert read.problems == ()
    assert read.scenario.name == f"vs-ray-{case.replace('_', '-')}"
    assert len(read.programs) == len(read.scenario.workloads)


def test_capacity_follows_the_node_events() -> None:
    preemption, _ = load_scenario(scenario_of("preemption"))
    assert capacity(preemption) == [(0.0, 2), (8.0, 1)]  # the drain itself takes no core
    scale_out, _ = load_scenario(scenario_of("scale_out"))
    assert capacity(scale_out) == [(0.0, 1), (1.0, 2)]
    queue, _ = load_scenario(scenario_of("queue"))
    assert capacity(queue) == [(0.0, 2)]


def test_ideal_makespan_is_the_work_over_the_cores_there_were() -> None:
    # 8 CPU s on 2 cores: 4 s.
    assert ideal_makespan([(0.0, 2.0)] * 4, [(0.0, 2)]) == pytest.approx(4.0)
    # 10 CPU s: 2 cores for 3 s (6), then 1 core for the other 4: 7 s.
    assert ideal_makespan([(0.0, 5.0)] * 2, [(0.0, 2), (3.0, 1)]) == pytest.approx(7.0)
    # 1 core until 2 s (2 CPU s), then 2 cores for the other 8: 6 s.
    assert ideal_makespan([(0.0, 5.0)] * 2, [(0.0, 1), (2.0, 2)]) == pytest.approx(6.0)
    # One job cannot use two cores: the longest bounds it.
    assert ideal_makespan([(0.0, 10.0), (0.0, 1.0)], [(0.0, 2)]) == pytest.approx(10.0)
    assert ideal_makespan([(0.0, 1.0)], [(0.0, 1), (0.5, 0)]) == float("inf")


def test_lost_work_counts_only_what_was_thrown_away() -> None:
    attempts = [Attempt(0, "n1", 0.0, cpu_seconds=7.5),  # killed with its node
                Attempt(0, "n2", 9.0, cpu_seconds=9.9, ended=19.0),  # the retry
                Attempt(1, "n2", 0.0, cpu_seconds=9.8, ended=10.0)]
    assert ray_lost_cpu(attempts) == pytest.approx(7.5)
    assert ray_lost_cpu(attempts[1:]) == 0.0
    report = _report([_process(0, cpu=4.0), _process(1, cpu=2.5, ended=False)],
                     lost=(LostProcess(1001, "rmw_counter#1", "a", "no checkpoint"),),
                     restarts=(RestartedProcess(1000, "rmw_counter#0", "a", "b", 3, 0.75,
                                                8.0),))
    assert tender_lost_cpu(report) == pytest.approx(2.5 + 0.75)
    assert tender_lost_cpu(_report([_process(0, cpu=4.0)])) == 0.0


def test_outputs_are_native_only_when_every_output_of_both_sides_is() -> None:
    native = [b"a\n", b"b\n"]
    assert outputs_native(native, [b"a\n", b"b\n"], [b"a\n", b"b\n"])
    assert not outputs_native(native, [b"a\n", b"x\n"], [b"a\n", b"b\n"])
    assert not outputs_native(native, [b"a\n", b"b\n"], [b"a\n", None])  # lost there
    assert not outputs_native([None, b"b\n"], [None, b"b\n"], [None, b"b\n"])  # no native
    assert not outputs_native(native, [b"a\n"], [b"a\n", b"b\n"])


def test_a_case_assembled_from_both_sides() -> None:
    scenario, programs = load_scenario(scenario_of("preemption"))
    jobs = jobs_of(scenario, programs)
    assert [args for _, _, args in jobs] == [("12000000000",)] * 2
    native = [Native(b"ok\n", 0, 10.0)] * 2
    ray = RaySide({0: TaskResult(0, 0, b"ok\n", 10.0, "n2", 110.0, 120.0),
                   1: TaskResult(1, 0, b"ok\n", 10.0, "n2", 100.0, 110.0)}, {},
                  (Attempt(0, "n1", 100.0, 7.9), Attempt(0, "n2", 110.0, 10.0, 120.0),
                   Attempt(1, "n2", 100.0, 10.0, 110.0)), started=100.0)
    report = _report([_process(0, cpu=10.0, end=15.0), _process(1, cpu=10.0, end=14.0)])
    got = case_result(scenario, jobs, native, ray, report)
    assert (got.tender_makespan, got.ray_makespan) == (15.0, 20.0)
    assert got.ideal_makespan == pytest.approx(12.0)  # 16 CPU s by 8 s, then 4 on one core
    assert (got.tender_lost_cpu_seconds, got.ray_lost_cpu_seconds) == (0.0, 7.9)
    assert got.outputs_native and got.ratio == pytest.approx(0.75)
    assert (got.jobs, got.ray_attempts, got.cpu_seconds) == (2, 3, 20.0)
    assert (got.ray_cpu_seconds, got.tender_cpu_seconds) == (27.9, 20.0)
    # A process whose output differs, or a Ray job that failed for good: not native, and
    # Ray's makespan is unknown.
    bad = _report([_process(0, cpu=10.0, end=15.0), _process(1, cpu=10.0, native=False)])
    assert not case_result(scenario, jobs, native, ray, bad).outputs_native
    failed = RaySide({0: ray.results[0]}, {1: "retries used up"}, ray.attempts, 100.0)
    got = case_result(scenario, jobs, native, failed, report)
    assert not got.outputs_native and got.ray_makespan is None and got.ratio is None
    assert got.ray_failed == ("job 1: retries used up",)


def test_the_json_has_the_issue_s_shape_and_the_table_a_row_per_case() -> None:
    case = CaseResult(12.0, 16.0, 10.0, 0.0, 6.5, True, 2, 20.0, 3, (), 2, (), "d")
    out = json.loads(json.dumps(assemble({"preemption": case, "queue": case}, quick=False)))
    assert set(out["cases"]) == {"preemption", "queue"}
    for figures in out["cases"].values():
        assert {"tender_makespan", "ray_makespan", "ideal_makespan",
                "tender_lost_cpu_seconds", "ray_lost_cpu_seconds",
                "outputs_native"} <= set(figures)
        assert figures["tender_over_ray"] == pytest.approx(0.75)
    assert out["quick"] is False
    assert table({"preemption": case}).splitlines()[2].startswith(
        "| preemption | 12.00 | 16.00 | 10.00 | 0.75 | 0.00 | 6.50 | 3 / 2 | 2 | yes |")


def test_quick_scenarios_are_shorter_with_a_notice_left_to_act_on() -> None:
    scenario, _ = load_scenario(scenario_of("preemption"))
    quick = scaled(scenario, 0.3)
    assert quick.workloads[0].args == ["3600000000"]
    drain, stop = quick.events
    assert drain.action is EventAction.DRAIN and drain.at == pytest.approx(1.5)
    assert drain.deadline == pytest.approx(2.0)  # 0.9 s would leave no time to move
    assert stop.action is EventAction.STOP_MACHINE
    assert stop.at == pytest.approx(drain.at + drain.deadline)  # removed at its deadline
    assert scaled(scenario, 1.0) is scenario


def test_each_machine_s_node_gets_a_core_of_its_own_in_turn() -> None:
    scale_out, _ = load_scenario(scenario_of("scale_out"))
    assert node_cores(scale_out, [0, 1]) == {"a": (0,), "b": (1,)}
    skew, _ = load_scenario(scenario_of("skew"))
    assert node_cores(skew, [3]) == {"m0": (3,), "m1": (3,)}


def test_bad_options_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--cases", "preemption,spot"])
    assert exit_.value.code == 2
    assert "--cases: unknown cases ['spot']; choose from preemption" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--configs", "/nonexistent"])
    assert "no such scenario: /nonexistent/vs-ray-preemption.yaml" in capsys.readouterr().err


# --- a scenario report with only what the benchmark reads -----------------------------------

def _process(i: int, *, cpu: float, end: float = 10.0, ended: bool = True,
             native: bool = True) -> ProcessReport:
    return ProcessReport(
        name=f"rmw_counter#{i}", pid=1000 + i, program="rmw_counter", args=("6000000000",),
        exit_status=0 if ended else None, exit_reason="exited" if ended else "lost",
        stdout_sha256="", native_stdout_sha256="", output_matches_native=native if ended
        else False, machines=("a",), cpu_seconds=cpu, run_seconds=end if ended else None,
        arrived_at=0.0, started_at=0.0, queued_seconds=0.0, queued_reason="")


def _report(processes: list[ProcessReport], lost: tuple[LostProcess, ...] = (),
            restarts: tuple[RestartedProcess, ...] = ()) -> Report:
    return Report(scenario="s", policy=Policy.GREEDY, started_unix=0.0, makespan_seconds=0.0,
                  ideal_makespan_seconds=0.0, makespan_over_ideal=None,
                  parallelism=Parallelism(2, 2, 2), mean_slowdown=None,
                  migrations=MigrationSummary(2, 0, (), ()), drains=(), lost=lost,
                  events_failed=(), problems=(), events_not_fired=(), queued=(),
                  not_started=(), processes=tuple(processes), restarts=restarts)
