"""Starting the embedded Ray on a host too busy for its node to register in Ray's fixed 30 s:
the start is tried once more, after ending (by pid) the processes the failed attempt left
behind; any other failure, or a second timeout, is raised as it came."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import ray

from tender_ray.cluster import cluster, embedded

TIMEOUT = Exception("The current node timed out during startup. This could happen because "
                    "some of the raylet failed to startup or the GCS has become overloaded.")


def _ray_like_child(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A child whose command line names a Ray program's directory, as raylet's does."""
    bin_dir = tmp_path / "ray" / "core"
    bin_dir.mkdir(parents=True, exist_ok=True)
    sleeper = bin_dir / "raylet"
    if not sleeper.exists():
        sleeper.symlink_to("/bin/sleep")
    return subprocess.Popen([os.fspath(sleeper), "600"])


def test_a_start_that_timed_out_is_tried_again_without_its_leftovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[dict[str, Any]] = []
    left: list[subprocess.Popen[bytes]] = []
    mine = subprocess.Popen(["/bin/sleep", "600"])  # not Ray's: left alone

    def init(**kwargs: Any) -> None:
        attempts.append(kwargs)
        if len(attempts) == 1:
            left.append(_ray_like_child(tmp_path))
            raise TIMEOUT

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    try:
        cluster._start_embedded_ray({"address": "local"})
        assert attempts == [{"address": "local"}] * 2
        assert left[0].wait(timeout=60) == -9  # the failed attempt's process was ended
        assert mine.poll() is None
    finally:
        for p in (mine, *left):
            p.kill()
            p.wait()


@pytest.mark.parametrize("errors", [[TIMEOUT, TIMEOUT], [RuntimeError("no GCS")]])
def test_other_failures_and_a_second_timeout_are_raised(
        errors: list[Exception], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def init(**kwargs: Any) -> None:
        calls.append(1)
        raise errors[len(calls) - 1]

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(Exception) as raised:
        cluster._start_embedded_ray({})
    assert raised.value is errors[-1]
    assert len(calls) == len(errors)


def _child_named(tmp_path: Path, relative: str) -> subprocess.Popen[bytes]:
    """A child whose command line is the Ray program at `relative` under a `ray/` tree."""
    program = tmp_path / "ray" / relative
    program.parent.mkdir(parents=True, exist_ok=True)
    program.symlink_to("/bin/sleep")
    return subprocess.Popen([os.fspath(program), "600"])


def test_the_autoscaler_monitor_is_ended_first_and_the_rest_left_to_ray(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = _child_named(tmp_path, "autoscaler/_private/monitor.py")
    log_monitor = _child_named(tmp_path, "_private/log_monitor.py")
    seen: list[int | None] = []
    # Ray's shutdown comes after the monitor is gone (and is what reaps it).
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append(monitor.wait(timeout=60)))
    try:
        embedded.stop_embedded_ray()
        assert seen == [-9]
        assert log_monitor.poll() is None  # Ray's own to stop
    finally:
        for p in (monitor, log_monitor):
            p.kill()
            p.wait()
