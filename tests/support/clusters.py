"""A Ray of a test module's own, for the integration tests: an embedded local Ray with machine
actors (`own_cluster`, the body of a module's `cluster` fixture) and a scenario run step by
step to its end on it (`run_scenario_to_end`).

Ray is imported only when they are called, so the unit tests that import `support` never load
it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tender_ray.config import MachineConfig

if TYPE_CHECKING:
    from tender_ray.cli.scenario.model import ScenarioFile
    from tender_ray.cli.scenario.report import Report
    from tender_ray.cli.scenario.run import Tracked
    from tender_ray.cluster import Cluster, MachineHandle

FOLLOW_TIMEOUT = 120.0  # seconds `follow_output` waits for the processes to end


@contextlib.contextmanager
def own_cluster(machines: Iterable[MachineConfig] = ()) -> Iterator[Cluster]:
    """An embedded local Ray (2 CPUs, 256 MiB of object store) with a machine actor of each of
    `machines`, all shut down on leaving, Ray too. A Ray another module left running is shut
    down first: this one must be the module's own, and the next module starts its own."""
    import ray

    from tender_ray.cluster import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(num_cpus=2, object_store_mib=256)
    try:
        for config in machines:
            cluster.add_machine(config)
        yield cluster
    finally:
        try:
            cluster.shutdown()
        finally:
            ray.shutdown()  # the next module's must start: even if a machine would not stop


def run_scenario_to_end(read: ScenarioFile, timeout: float, *, policy: str | None = None,
                        report_dir: Path | None = None) -> tuple[Report, list[str]]:
    """Run a scenario read from its file step by step to its end, failing the test after
    `timeout` seconds; its report (also written to `report_dir`, if given) and the event lines
    it logged. Its actors are stopped however it ends."""
    from tender_ray.cli.scenario.run import ScenarioRun

    events: list[str] = []
    run = ScenarioRun(read.scenario, read.programs, policy=policy, on_event=events.append,
                      problems=read.problems)
    try:
        run.setup()
        deadline = time.monotonic() + timeout
        while run.step():
            assert time.monotonic() < deadline, f"scenario did not end: {events}"
            time.sleep(0.1)
    except BaseException:
        run.cluster.shutdown()
        raise
    return run.finish(report_dir).report, events


def exec_workload(h: MachineHandle, program: str, *args: str) -> int:
    """Start workload `program` on machine `h`; its pid."""
    from support.programs import workload

    return h.exec(workload(program).read_bytes(), program, [program, *args])


def follow_output(cluster: Cluster, tracked: dict[int, Tracked], until_ended: set[int]) -> None:
    """Poll every machine, keeping output chunks by offset, until `until_ended` have ended."""
    deadline = time.monotonic() + FOLLOW_TIMEOUT
    while until_ended:
        assert time.monotonic() < deadline, f"{until_ended} did not end"
        for result in cluster.poll_all().values():
            if isinstance(result, BaseException):
                continue
            for chunk in result.output:
                if chunk.pid in tracked:
                    tracked[chunk.pid].chunks[chunk.fd][chunk.offset] = chunk.data
            until_ended -= {i.pid for i in result.ended}
        time.sleep(0.05)
