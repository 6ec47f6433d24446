"""The chaos benchmark on real Ray actors: a seeded scenario with arrivals, balancing, a drain
and machine crashes (SIGKILL of the actor's worker) with checkpoints on must lose no process,
produce every output byte-identical to the native run of the same binary, and leave every frame
of the surviving machines free."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from tender_ray.bench.chaos import ChaosSpec, run_chaos


@pytest.fixture(autouse=True)
def own_ray() -> Iterator[None]:
    if ray.is_initialized():  # another module's Ray: the run starts its own
        ray.shutdown()
    yield


def check(spec: ChaosSpec) -> None:
    events: list[str] = []
    result = run_chaos(spec, on_event=events.append)
    assert result.processes == spec.processes, events
    assert result.crashes == spec.crashes, events
    assert result.ok, (result, events)
    # Every process of a crashed machine came back from its checkpoint, and was timed.
    if result.restarts:
        assert result.restart_max_seconds is not None and result.restart_max_seconds > 0


def test_chaos_small() -> None:
    check(ChaosSpec(seed=1, machines=3, processes=8, crashes=1, duration=6.0))


@pytest.mark.slow  # a minute or more: more machines, processes and crashes
def test_chaos_large() -> None:
    check(ChaosSpec(seed=2, machines=4, processes=30, crashes=2, duration=20.0))
