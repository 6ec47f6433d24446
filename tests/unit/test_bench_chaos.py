"""The chaos benchmark's pure parts: the seeded scenario generation (same seed, same scenario;
crashes on distinct machines after the drain ends; a survivor always left; the drained machine
never crashed) and the option checks, without Ray."""

from __future__ import annotations

import pytest

from tender_ray.bench.chaos import (
    CRASH_MARGIN,
    ChaosSpec,
    chaos_scenario,
    crashed_machines,
    percentile,
)
from tender_ray.cli.scenario.model import EventAction
from tender_ray.errors import UsageError


def test_same_seed_same_scenario_other_seed_differs() -> None:
    spec = ChaosSpec(seed=7, machines=4, processes=20, crashes=2, duration=20.0)
    assert chaos_scenario(spec) == chaos_scenario(spec)
    other = chaos_scenario(ChaosSpec(seed=8, machines=4, processes=20, crashes=2,
                                     duration=20.0))
    assert other.workloads != chaos_scenario(spec).workloads


@pytest.mark.parametrize("seed", range(20))
def test_crashes_after_the_drain_on_distinct_machines_leaving_a_survivor(seed: int) -> None:
    spec = ChaosSpec(seed=seed, machines=3, processes=10, crashes=2, duration=10.0)
    scenario = chaos_scenario(spec)
    names = {c.name for c in scenario.machine_configs()}
    crashed = crashed_machines(scenario)
    assert len(crashed) == len(set(crashed)) == spec.crashes
    assert set(crashed) < names  # a survivor is left
    drains = [e for e in scenario.events if e.action is EventAction.DRAIN]
    undrains = [e for e in scenario.events if e.action is EventAction.UNDRAIN]
    assert len(drains) == len(undrains) == 1
    assert drains[0].machine == undrains[0].machine and drains[0].machine not in crashed
    crash_times = [e.at for e in scenario.events if e.action is EventAction.CRASH_MACHINE]
    assert min(crash_times) > undrains[0].at > drains[0].at
    # Every process has had time for checkpoints before the first crash.
    assert min(crash_times) >= max(w.at for w in scenario.workloads) + CRASH_MARGIN
    assert len(scenario.workloads) == spec.processes
    assert all(w.at <= 0.4 * spec.duration for w in scenario.workloads)
    # On each machine that will crash, one process arriving first outlives the crash (else
    # the scenario could end before it); no other is pinned there: it might never start.
    anchors = [w for w in scenario.workloads if w.machine in crashed]
    assert sorted(w.machine or "" for w in anchors) == sorted(crashed)
    for w in anchors:
        crash_at = next(e.at for e in scenario.events if e.machine == w.machine
                        and e.action is EventAction.CRASH_MACHINE)
        assert w.at == 0.0 and w.program == "memhold"
        assert int(w.args[1]) * 0.01 >= crash_at + 1.0  # rounds of 10 ms sleep
    assert all(w.machine is None or w.machine in names for w in scenario.workloads)
    # Checkpoints on: a crashed machine's processes have something to restart from.
    assert all(c.checkpoint is not None for c in scenario.machine_configs())


@pytest.mark.parametrize(("changes", "option"), [
    ({"machines": 1, "crashes": 0}, "--machines"),
    ({"machines": 3, "crashes": 3}, "--crashes"),
    ({"processes": 0}, "--processes"),
    ({"duration": 0.0}, "--duration"),
])
def test_unworkable_options_name_the_option(changes: dict[str, float], option: str) -> None:
    spec = ChaosSpec(**changes)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=option):
        chaos_scenario(spec)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0
