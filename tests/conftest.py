"""Fixtures of the tender_ray tests: machines that are stopped after the test (`make_machine`,
`machine`), and `run_native` / `run_on_machine` for tests that ask for them as fixtures.

The helpers themselves are in the `support` package (`from support.machines import start`);
nothing is imported from this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.machines import run_on_machine
from support.programs import run_native

from tender_ray.config import MachineConfig
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import ProcessInfo


@pytest.fixture(name="run_native")
def _run_native_fixture() -> Callable[..., tuple[int, bytes, bytes]]:
    return run_native


@pytest.fixture(name="run_on_machine")
def _run_on_machine_fixture() -> Callable[..., tuple[int, bytes, bytes, ProcessInfo]]:
    return run_on_machine


@pytest.fixture
def make_machine() -> Iterator[Callable[..., Machine]]:
    """Build machines from MachineConfig keywords (and Machine's `pid_base`, the first pid it
    gives out, 1000 unless told); every one is stopped after the test."""
    machines: list[Machine] = []

    def make(pid_base: int = 1000, **config: object) -> Machine:
        config.setdefault("memory_mib", 64)
        m = Machine(MachineConfig(**config), pid_base=pid_base)  # type: ignore[arg-type]
        machines.append(m)
        return m

    yield make
    for m in machines:
        m.stop()


@pytest.fixture
def machine(make_machine: Callable[..., Machine]) -> Machine:
    """A fresh machine: one computation, 64 MiB, 1 ms timed quanta."""
    return make_machine(quantum_us=1000)
