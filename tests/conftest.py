"""Shared helpers for the tender_ray tests: run a workload natively and on a Machine.

`run_native(path, args, env)` and `run_on_machine(machine, path, args, env)` are plain
functions (importable with `from conftest import run_native, run_on_machine`) and also
fixtures of the same names, so any test file can ask for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the package may not be installed in the venv
    sys.path.insert(0, str(ROOT))

from tender_ray.config import MachineConfig  # noqa: E402
from tender_ray.machine import Machine, ProcessInfo  # noqa: E402

WORKLOADS = ROOT / "workloads" / "bin"
NATIVE_TIMEOUT = 60.0
GUEST_TIMEOUT = 120.0


def workload(name: str) -> Path:
    """The path of a committed workload binary."""
    path = WORKLOADS / name
    assert path.is_file(), f"missing workload binary {path}"
    return path


def run_native(path: str | os.PathLike[str], args: Sequence[str] = (),
               env: Mapping[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """Run a program on the host: (status, stdout, stderr).

    The status is what a shell reports: the exit code, or 128 + signal when a signal killed
    it. Standard input is /dev/null and the environment is exactly `env` (empty if None), the
    same one `run_on_machine` passes as envp.
    """
    result = subprocess.run([os.fspath(path), *args], stdin=subprocess.DEVNULL,
                            capture_output=True, env=dict(env or {}), timeout=NATIVE_TIMEOUT,
                            check=False)
    status = result.returncode if result.returncode >= 0 else 128 - result.returncode
    return status, result.stdout, result.stderr


def wait_finished(machine: Machine, pid: int, timeout: float = GUEST_TIMEOUT) -> ProcessInfo:
    """Wait until the process has ended AND its computation has let go of it.

    `Machine.wait` returns as soon as the process is a zombie, which can be before the
    computation that ran it has given its address space back (see
    test_machine.py::test_wait_returns_only_after_the_process_is_released); reaping then
    would hand a process the computation still uses back to the pool. Until that is fixed,
    also wait for no computation to hold the pid, which is cleared under the machine lock in
    the same step that releases the address space.
    """
    deadline = time.monotonic() + timeout
    info = machine.wait(pid, timeout=timeout)
    if info.state != "zombie":
        machine.kill(pid)
        raise AssertionError(f"process {pid} ({info.name}) did not end within {timeout} s")
    while any(c.pid == pid for c in machine.statistics().computations):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} ended but its computation never released it")
        time.sleep(0.001)
    return info


def run_on_machine(machine: Machine, path: str | os.PathLike[str], args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None,
                   timeout: float = GUEST_TIMEOUT) -> tuple[int, bytes, bytes, ProcessInfo]:
    """Run a program on `machine` to its end: (status, stdout, stderr, final info).

    argv[0] is `path` as given (as `run_native` does), envp is `env` as NAME=value strings.
    The process is reaped, so its resources are back with the machine afterwards.
    """
    image = Path(path).read_bytes()
    argv = [os.fspath(path), *args]
    envp = [f"{k}={v}" for k, v in (env or {}).items()]
    pid = machine.exec(image, Path(path).name, argv, envp)
    wait_finished(machine, pid, timeout)
    info, out, err = machine.reap(pid)
    assert info.exit_status is not None
    return info.exit_status, out, err, info


def start(machine: Machine, name: str, *args: str,
          env: Mapping[str, str] | None = None) -> int:
    """Exec a workload by name on `machine` without waiting; its pid."""
    path = workload(name)
    return machine.exec(path.read_bytes(), name, [os.fspath(path), *args],
                        [f"{k}={v}" for k, v in (env or {}).items()])


@pytest.fixture(name="run_native")
def _run_native_fixture() -> Callable[..., tuple[int, bytes, bytes]]:
    return run_native


@pytest.fixture(name="run_on_machine")
def _run_on_machine_fixture() -> Callable[..., tuple[int, bytes, bytes, ProcessInfo]]:
    return run_on_machine


@pytest.fixture
def make_machine() -> Iterator[Callable[..., Machine]]:
    """Build machines from MachineConfig keywords; every one is stopped after the test."""
    machines: list[Machine] = []

    def make(**config: object) -> Machine:
        config.setdefault("memory_mib", 64)
        m = Machine(MachineConfig(**config))  # type: ignore[arg-type]
        machines.append(m)
        return m

    yield make
    for m in machines:
        m.stop()


@pytest.fixture
def machine(make_machine: Callable[..., Machine]) -> Machine:
    """A fresh machine: one computation, 64 MiB, 1 ms timed quanta."""
    return make_machine(quantum_us=1000)
