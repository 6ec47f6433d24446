"""The two sides of one vs-ray case on real nodes: the scenario's jobs as plain Ray tasks
(`cluster.ray_tasks`), and the same jobs as tender_ray processes with the balancer on (the
scenario runner, its machines each on a node of its own). Each machine of the scenario is a
Ray node pinned to its own cores (`cluster.local_nodes`), and the scenario's events act on
nodes: `drain` is Ray's preemption notice for the machine's node (its deadline the event's),
`stop_machine` removes the node as a preemption does (every process of it killed),
`add_machine` starts a node and joins it to the cluster."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tender_ray.cli.scenario.model import EventAction, EventSpec, Scenario
from tender_ray.cli.scenario.plot import Mark
from tender_ray.cli.scenario.report import Report
from tender_ray.cli.scenario.run import ScenarioRun
from tender_ray.cluster.local_nodes import LocalNodes
from tender_ray.cluster.ray_tasks import Attempt, RayTasks, TaskResult
from tender_ray.config import MachineConfig
from tender_ray.errors import TenderError

Job = tuple[float, Path, tuple[str, ...]]  # arrival (seconds after the start), program, args
Note = Callable[[str], None]
SLIVER = 0.001  # of a node's own resource: what pins a machine actor to its node


def jobs_of(scenario: Scenario, programs: dict[int, Path]) -> list[Job]:
    """Every process the scenario starts, in its order of arrival (as the scenario runner
    orders them)."""
    jobs: list[tuple[float, int, Path, tuple[str, ...]]] = []
    for i, w in enumerate(scenario.workloads):
        for k in range(w.count):
            at = w.at + (k / w.rate if w.rate else 0.0)
            jobs.append((at, len(jobs), programs[i], tuple(w.args)))
    return [(at, program, args) for at, _, program, args in sorted(jobs)]


def node_cores(scenario: Scenario, cores: list[int]) -> dict[str, tuple[int, ...]]:
    """The cores of each machine's node, the scenario's machines then those its events add,
    one core each in turn."""
    names = [c.name for c in scenario.machine_configs()]
    names += [e.machine for e in scenario.events if e.action is EventAction.ADD_MACHINE]
    return {name: (cores[i % len(cores)],) for i, name in enumerate(names)}


def start_nodes(nodes: LocalNodes, scenario: Scenario, cores: dict[str, tuple[int, ...]]
                ) -> None:
    """Exactly the nodes of the scenario's machines: a node left from the last run that
    the scenario has no machine for is stopped, the missing ones started."""
    names = [c.name for c in scenario.machine_configs()]
    for name in [n for n in nodes.nodes if n not in names]:
        nodes.stop(name)
    nodes.add_all({name: cores[name] for name in names if name not in nodes.nodes})


# --- Ray's side ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RaySide:
    """The jobs as Ray tasks: the last attempt of each (None: failed for good, with `errors`),
    every attempt, and when the run started (wall seconds)."""

    results: dict[int, TaskResult]
    errors: dict[int, str]
    attempts: tuple[Attempt, ...]
    started: float

    @property
    def makespan(self) -> float | None:
        if not self.results:
            return None
        return max(r.ended for r in self.results.values()) - self.started


def run_ray_side(scenario: Scenario, jobs: list[Job], nodes: LocalNodes,
                 cores: dict[str, tuple[int, ...]], *, max_retries: int, note: Note,
                 timeout: float) -> RaySide:
    """Submit the jobs at their arrival times as Ray tasks and fire the scenario's events
    on the nodes, until every task has ended (or `timeout` seconds)."""
    tasks = RayTasks(nodes.shared_resource, max_retries=max_retries)
    try:
        # A Ray user's cluster has its workers up; so do the machines of the other side.
        tasks.warm({n.node_id for n in nodes.nodes.values()})
        images = {p: p.read_bytes() for _, p, _ in jobs}
        events = sorted(scenario.events, key=lambda e: e.at)
        due = list(enumerate(jobs))
        results: dict[int, TaskResult] = {}
        errors: dict[int, str] = {}
        started, clock = time.time(), time.monotonic()
        while len(results) + len(errors) < len(jobs):
            now = time.monotonic() - clock
            if now > timeout:
                errors.update({j: "timed out" for j in tasks.refs.values()})
                break
            while events and events[0].at <= now:
                _node_event(events.pop(0), nodes, cores, note, now)
            while due and due[0][1][0] <= now:
                i, (_, program, args) = due.pop(0)
                tasks.submit(i, images[program], [program.name, *args])
            ahead = [e.at for e in events] + [j[0] for _, j in due]
            wait = max(0.0, min([0.25, *(t - now for t in ahead)]))
            for got in tasks.done(wait):
                if isinstance(got, TaskResult):
                    results[got.job] = got
                else:
                    errors[got[0]] = " ".join(str(got[1]).split())[:300]
                    note(f"ray: job {got[0]} failed: {errors[got[0]]}")
        return RaySide(results, errors, tuple(tasks.attempts()), started)
    finally:
        tasks.close()


def _node_event(event: EventSpec, nodes: LocalNodes, cores: dict[str, tuple[int, ...]],
                note: Note, now: float) -> None:
    note(f"t={now:.1f}s {event.action.value} {event.machine}")
    if event.action is EventAction.DRAIN:
        nodes.drain(event.machine, time.time() + event.deadline, "vs-ray preemption")
    elif event.action in (EventAction.STOP_MACHINE, EventAction.CRASH_MACHINE):
        nodes.kill(event.machine)
    elif event.action is EventAction.ADD_MACHINE:
        nodes.add(event.machine, cores[event.machine])
    # undrain: Ray 2.60 has no way to cancel a drain; nothing to do on the nodes


# --- tender_ray's side --------------------------------------------------------------------

class NodeScenarioRun(ScenarioRun):
    """The scenario runner with each machine on its own node and the events acting on the
    nodes (the balancer follows Ray's drain notice as it would any preemption's)."""

    def __init__(self, scenario: Scenario, programs: dict[int, Path], nodes: LocalNodes,
                 cores: dict[str, tuple[int, ...]], note: Note) -> None:
        super().__init__(scenario, programs, on_event=note)
        self.nodes = nodes
        self.cores = cores

    def _add(self, config: MachineConfig) -> None:
        if self.scenario.checkpoint is not None:
            config = config.model_copy(update={"checkpoint": self.scenario.checkpoint})
        self.cluster.add_machine(config, resources={self.nodes.nodes[config.name].resource:
                                                    SLIVER})

    def setup(self) -> None:
        for config in self.scenario.machine_configs():
            self._add(config)
        b = self.scenario.balancer
        self.cluster.start_balancer(b.params(self.policy), self.scenario.migration.options(),
                                    b.interval)
        self.start = time.monotonic()
        self.start_wall = time.time()

    def _fire(self, event: EventSpec) -> None:
        at = self.elapsed
        self.marks.append(Mark(at, event.action.value, event.machine))
        try:
            _node_event(event, self.nodes, self.cores, self.on_event, at)
            if event.action is EventAction.ADD_MACHINE:
                self._add(event.machine_config())
                self.gone.pop(event.machine, None)
            elif event.action in (EventAction.STOP_MACHINE, EventAction.CRASH_MACHINE):
                self._machine_died(event.machine)
            elif event.action is EventAction.UNDRAIN:
                self.cluster.undrain(event.machine)
        except TenderError as exc:
            from tender_ray.cli.scenario.report import FailedEvent

            self.events_failed.append(FailedEvent(at, event.action, event.machine, str(exc)))
            self.on_event(f"{event.action.value} {event.machine} failed: {exc}")


def run_tender_side(scenario: Scenario, programs: dict[int, Path], nodes: LocalNodes,
                    cores: dict[str, tuple[int, ...]], *, note: Note, timeout: float,
                    report_dir: Path | None) -> Report:
    """Run the scenario as tender_ray processes on the nodes; its report (with load.png and
    timeline.png in `report_dir`)."""
    run = NodeScenarioRun(scenario, programs, nodes, cores, note)
    try:
        run.setup()
        deadline = time.monotonic() + timeout
        while run.step():
            if time.monotonic() > deadline:
                note(f"tender: timeout after {timeout:.0f} s")
                break
            run.wait_next(0.25)
    except BaseException:
        with contextlib.suppress(Exception):
            run.cluster.shutdown()
        raise
    return run.finish(report_dir).report


def host_cores() -> list[int]:
    """The cores this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))
