"""The workload binaries and running them on the host: where they are (`workload`), the
reference result of a program run natively (`run_native`, and `native`, cached by workload
name and arguments), skipping a test whose host program is not installed (`need`), the
repository root and the timeouts the other helpers use.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tender_ray import config

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


@functools.cache
def native(name: str, *args: str) -> tuple[int, bytes, bytes]:
    """(status, stdout, stderr) of a workload run on the host, empty environment (cached)."""
    return run_native(workload(name), args, {})
