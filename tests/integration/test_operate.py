"""Operating a long-lived cluster as a user does, through the CLI in subprocesses:
`tender-ray up` (with its own Ray head), `exec --address auto`, `ps`, `migrate`, `drain`,
`undrain` and `down`, with the state file under tmp_path ($TENDER_STATE).

The test process itself never joins that cluster: processes are started by a small script in a
subprocess (`operate.connect()` + exec), so no Ray is left initialised here. The module-scoped
fixture brings the cluster down (and kills the Ray head it started) whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import alive, group_members
from support.programs import ROOT, run_native, workload

from tender_ray.cli.operate import stop_head

# Each CLI call joins the cluster (a few seconds each), `up` starts a Ray head: > 60 s in all.
pytestmark = pytest.mark.slow

CLI_TIMEOUT = 300

START = """
import json
from tender_ray.cli.operate import connect
from tender_ray.config import workloads_dir

cluster, _ = connect()
image = (workloads_dir() / "compute_sleep").read_bytes()
# ~15 ms a round natively: a few minutes, much longer than this module
pids = [cluster.machine("m0").exec(image, "compute_sleep", ["compute_sleep", "20000"])
        for _ in range(2)]
print(json.dumps(pids))
"""


def tender(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tender_ray", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=CLI_TIMEOUT, check=False)


def ps_rows(env: dict[str, str]) -> dict[int, tuple[str, str, str]]:
    """`tender-ray ps`: pid -> (name, machine, state)."""
    r = tender(env, "ps")
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) >= 4 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[1], cells[2], cells[3])
    return rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    state = tmp_path_factory.mktemp("tender-state") / "cluster.json"
    env = {**os.environ, "TENDER_STATE": str(state), "COLUMNS": "200",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head_pid = None
    try:
        # metrics on a free port: the default one may be taken by another run on this host
        r = tender(env, "up", "--machines", "2", "--num-cpus", "2", "--metrics-port", "0")
        assert r.returncode == 0, r.stdout + r.stderr
        head_pid = json.loads(state.read_text())["head_pid"]
        yield env, state
    finally:
        if state.exists():
            tender(env, "down")
        if head_pid is not None and group_members(head_pid):
            stop_head(head_pid)  # only the Ray head this module's `up` started


def test_ps_without_a_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "TENDER_STATE": str(tmp_path / "none" / "cluster.json")}
    r = tender(env, "ps")
    assert r.returncode == 2
    assert "tender-ray up" in r.stderr
    assert str(tmp_path / "none" / "cluster.json") in r.stderr
    assert not (tmp_path / "none").exists()


def test_up_writes_its_state(cluster: tuple[dict[str, str], Path]) -> None:
    env, state = cluster
    data = json.loads(state.read_text())
    assert data["machines"] == {"m0": 0, "m1": 1}
    assert data["address"].startswith("127.0.0.1:")
    assert isinstance(data["head_pid"], int) and alive(data["head_pid"])
    assert Path(data["shared_plate"]).is_dir()
    # a second `up` refuses: one cluster per state file
    r = tender(env, "up", "--machines", "1")
    assert r.returncode == 2 and "already up" in r.stderr


def test_exec_on_the_up_cluster_matches_native(cluster: tuple[dict[str, str], Path]) -> None:
    env, _ = cluster
    r = tender(env, "exec", "--address", "auto", os.fspath(workload("hello")))
    status, out, _ = run_native(workload("hello"))
    assert (r.returncode, r.stdout.encode()) == (status, out), r.stderr


def test_ps_migrate_drain_undrain(cluster: tuple[dict[str, str], Path]) -> None:
    env, _ = cluster
    started = subprocess.run([sys.executable, "-c", START], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    assert started.returncode == 0, started.stderr
    a, b = json.loads(started.stdout.strip().splitlines()[-1])

    rows = ps_rows(env)
    assert {a, b} <= set(rows), rows
    assert rows[a][:2] == ("compute_sleep", "m0") and rows[b][1] == "m0"

    r = tender(env, "migrate", str(a), "m1")
    assert r.returncode == 0, r.stderr
    assert "migrated" in r.stdout and "m0 → m1" in r.stdout

    # A checkpoint where it runs now: full the first time, then only the changed pages.
    r = tender(env, "checkpoint", str(a))
    assert r.returncode == 0, r.stderr
    assert f"checkpoint 0 of {a} on m1 (full)" in r.stdout, r.stdout
    r = tender(env, "checkpoint", str(a))
    assert r.returncode == 0, r.stderr
    assert f"checkpoint 1 of {a} on m1 (incremental)" in r.stdout, r.stdout

    r = tender(env, "drain", "m0", "--deadline", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    # (not "1 moved": the drain report can miss its last move, see test_scenario.py
    # test_drain_report_lists_every_move_even_with_a_slow_reply)
    assert "drain of m0:" in r.stdout and "still there" not in r.stdout

    rows = ps_rows(env)
    assert rows[a][1] == "m1" and rows[b][1] == "m1", rows
    assert rows[a][2] in ("runnable", "running", "sleeping")

    r = tender(env, "undrain", "m0")
    assert r.returncode == 0, r.stderr
    assert "m0 takes processes again" in r.stdout

    # m0 takes processes again: exec (which starts on the first machine) runs there
    r = tender(env, "exec", "--address", "auto", os.fspath(workload("hello")))
    assert r.returncode == 0, r.stderr
    # and the two long processes are still there, untouched by the exec
    rows = ps_rows(env)
    assert rows[a][1] == "m1" and rows[b][1] == "m1", rows


def test_down_stops_what_up_started(cluster: tuple[dict[str, str], Path]) -> None:
    env, state = cluster
    head_pid = json.loads(state.read_text())["head_pid"]
    assert alive(head_pid)
    r = tender(env, "down")
    assert r.returncode == 0, r.stderr
    assert "down: stopped 2 machines and the Ray head" in r.stdout
    assert not state.exists()
    deadline = time.monotonic() + 20
    while group_members(head_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(head_pid)
    assert group_members(head_pid) == []
    # and with nothing up, `down` says so and has nothing to do
    r = tender(env, "down")
    assert r.returncode == 0 and "nothing is running" in r.stdout, (r.stdout, r.stderr)
