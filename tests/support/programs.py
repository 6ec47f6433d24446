"""The workload binaries and running them on the host: where they are (`workload`), the
reference result of a program run natively (`run_native`, and `native`, cached by workload
name and arguments; `native_standby` for the `standby` workload, told to finish once it is
ready), skipping a test whose host program is not installed (`need`), the repository root and
the timeouts the other helpers use.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tender_ray import config

# `standby` (workloads/src/standby.c) says this once it can be told to finish (SIGUSR1), and
# runs until it is told: a process a test can move knowing it is still there.
STANDBY_READY = b"standby: ready\n"
# `writeset` (workloads/src/writeset.c) says this likewise: it rewrites part of its heap until
# it is told to finish.
WRITESET_READY = b"writeset: ready\n"

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/ -> tests/ -> root
NATIVE_TIMEOUT = 60.0  # seconds a program may run on the host
GUEST_TIMEOUT = 120.0  # seconds a program may run on a machine (the emulated CPU is slower)


def workload(name: str) -> Path:
    """The path of a committed workload binary (where `tender_ray.config.workload` says)."""
    path = config.workload(name)
    assert path.is_file(), f"missing workload binary {path}"
    return path


def need(*paths: str) -> None:
    """Skip the test unless every one of these host programs is installed."""
    for path in paths:
        if not Path(path).exists():
            pytest.skip(f"{path} is not installed here")


def run_native(path: str | os.PathLike[str], args: Sequence[str] = (),
               env: Mapping[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """Run a program on the host: (status, stdout, stderr).

    The status is what a shell reports: the exit code, or 128 + signal when a signal killed
    it. Standard input is /dev/null and the environment is exactly `env` (empty if None), the
    same one `support.machines.run_on_machine` passes as envp.
    """
    result = subprocess.run([os.fspath(path), *args], stdin=subprocess.DEVNULL,
                            capture_output=True, env=dict(env or {}), timeout=NATIVE_TIMEOUT,
                            check=False)
    status = result.returncode if result.returncode >= 0 else 128 - result.returncode
    return status, result.stdout, result.stderr


def native_in(name: str, where: Path, *args: str) -> tuple[int, bytes, bytes]:
    """(status, stdout, stderr) of a workload that works in the directory `where` (its first
    argument), run on the host, empty environment."""
    return run_native(workload(name), [os.fspath(where), *args], {})


@functools.cache
def native(name: str, *args: str) -> tuple[int, bytes, bytes]:
    """(status, stdout, stderr) of a workload run on the host, empty environment (cached)."""
    return run_native(workload(name), args, {})


def _native_told(name: str, ready: bytes, args: tuple[str, ...]) -> tuple[int, bytes, bytes]:
    """(returncode, stdout, stderr) of workload `name` run on the host and told to finish
    (SIGUSR1) as soon as it prints its `ready` line."""
    with subprocess.Popen([os.fspath(workload(name)), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={}) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == ready, f"{name} {args} said {first!r}, not that it is ready"
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=NATIVE_TIMEOUT)
    return proc.returncode, first + out, err


@functools.cache
def native_standby(*args: str) -> tuple[int, bytes, bytes]:
    """(status, stdout, stderr) of `standby` run on the host and told to finish (SIGUSR1)
    as soon as it says it is ready, as the tests tell it on a machine (cached)."""
    code, out, err = _native_told("standby", STANDBY_READY, args)
    return (code if code >= 0 else 128 - code), out, err


@functools.cache
def native_writeset(*args: str) -> tuple[int, bytes, bytes]:
    """(status, stdout, stderr) of `writeset` run on the host and told to finish (SIGUSR1) as
    soon as it says it is ready (cached)."""
    return _native_told("writeset", WRITESET_READY, args)
