"""What the scenario benchmarks (chaos, churn) share: the workloads/bin programs their seeded
arrivals draw from, and a generated scenario set up to run on real machine actors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tender_ray.cli.scenario.model import Scenario, resolve_program

if TYPE_CHECKING:
    from tender_ray.cli.scenario.run import ScenarioRun

# A program of workloads/bin and its arguments. Each one the benchmarks draw runs a few seconds
# natively at most and writes an output the report compares with the native run's.
Program = tuple[str, tuple[str, ...]]

SIEVE: Program = ("sieve", ("20000000",))  # the primes below 20 million: computing only


def compute_sleep(rounds: int) -> Program:
    """`rounds` of ~5 ms computing, each followed by 10 ms asleep."""
    return ("compute_sleep", (str(rounds),))


def memhold(mib: int) -> Program:
    """`mib` MiB touched, then ~3 s asleep in 10 ms rounds, the pattern checked at the end."""
    return ("memhold", (str(mib), "300", "10"))


def start_scenario(scenario: Scenario, *, address: str | None = None,
                   on_event: Callable[[str], None] | None = None) -> ScenarioRun:
    """The run of a generated `scenario` on a Ray cluster (embedded unless `address`), set up:
    its machine actors started and its programs found (workloads/bin names, or paths from
    the current directory)."""
    # Here, not at the top: the scenario generation the unit tests check runs without Ray.
    from tender_ray.cli.scenario.run import ScenarioRun

    base = Path.cwd()
    programs = {i: resolve_program(w.program, base) for i, w in enumerate(scenario.workloads)}
    run = ScenarioRun(scenario, programs, address=address, on_event=on_event)
    run.setup()
    return run
