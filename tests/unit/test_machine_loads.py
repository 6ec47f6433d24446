"""One look at every machine (`balancing.node_drain.machine_loads`), as the balancing loop and
the node-drain evacuation take it: the machines that answer, each as a load snapshot; one that
is gone, whether its call fails at once or its reply does, left out; any other error raised
(the loop counts the round as failed)."""

from __future__ import annotations

import pytest
from support.balancing import FakeClock, FakeMachine

from tender_ray.balancing.node_drain import machine_loads
from tender_ray.errors import MachineStoppedError
from tender_ray.resources.real_memory import PAGE_SIZE


def _world() -> tuple[FakeClock, dict[str, FakeMachine]]:
    clock = FakeClock()
    world: dict[str, FakeMachine] = {}
    for name in ("a", "b", "c"):
        FakeMachine(world, clock, name)
    world["a"].add(1, pages=16)
    world["a"].add(2, state="sleeping", pages=4)
    return clock, world


def test_the_machines_that_answer_each_give_a_snapshot_the_gone_ones_are_left_out() -> None:
    clock, world = _world()
    world["b"].down = True  # the call goes out; its reply is the error
    world["c"].load_raises = MachineStoppedError("machine c is gone")  # the call itself fails
    (load,) = machine_loads(world.values(), clock, timeout=1.0)
    assert load.name == "a" and load.runnable == 1
    assert [(p.pid, p.state, p.resident_bytes) for p in load.processes] == [
        (1, "runnable", 16 * PAGE_SIZE), (2, "sleeping", 4 * PAGE_SIZE)]
    assert all(p.age_seconds == pytest.approx(5.0) for p in load.processes)


def test_an_error_that_is_not_a_machine_gone_is_raised() -> None:
    clock, world = _world()
    world["b"].load_raises = RuntimeError("a bad round")
    with pytest.raises(RuntimeError, match="a bad round"):
        machine_loads(world.values(), clock, timeout=1.0)
