"""A scenario run as a Ray job, as the README's "A scenario as a Ray job" shows: a Ray head with
the dashboard (its job server) on 127.0.0.1, `ray job submit -- tender-ray run SCENARIO`, and
the job's driver joining that cluster (Ray sets RAY_ADDRESS for it, naming the host's own
interface; the test names the same port on 127.0.0.1 to keep its traffic on loopback).

Needs Ray's dashboard dependencies (`ray[default]`, the `cluster` extra, which `make test`
installs); skipped without them. Head and submitter run with RAY_AUTH_MODE=disabled (as
`tender-ray up` starts its head), so no token in ~/.ray is needed. The head runs in a process
group of its own and is stopped by it (`stop_head`, as `tender-ray down` does), whatever
happens: never `ray stop`, which would stop every Ray on the host.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import group_members
from support.programs import ROOT

from tender_ray.cli.operate import stop_head

# A head with its dashboard takes ~10 s to start, the job ~15 s: ~45 s in all, under the
# minute that makes a test slow.
TIMEOUT = 300

SCENARIO = """\
name: tiny-job
description: one short workload on two machines, as a Ray job
machines:
  - {name: m, count: 2, computations: 1, memory_mib: 64}
workloads:
  - {program: sieve, args: ["2000000"], count: 2, at: 0.0, machine: m0}
balancer: {policy: threshold, interval: 0.2}
timeout: 120
"""


def job_cli_missing() -> str | None:
    """Why Ray's job submission cannot run here, or None."""
    for module in ("ray.dashboard.optional_deps", "ray.job_submission"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return (f"ray[default] is not installed ({module}: {exc}); "
                    "`pip install -e '.[cluster]'` (make setup-cluster) installs it")
    return None


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ray_bin() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert found, "the `ray` command is not installed next to this Python"
    return found


@pytest.fixture
def head(tmp_path: Path) -> Iterator[tuple[int, int, dict[str, str]]]:
    """A Ray head with the dashboard on 127.0.0.1: (GCS port, dashboard port, env)."""
    reason = job_cli_missing()
    if reason:
        pytest.skip(reason)
    gcs, dashboard, agent, client = free_ports(4)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           # Head, submitter and job agree on (no) authentication. Not inherited: an earlier
           # ray.init in this test process sets RAY_AUTH_MODE=token in os.environ.
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "ray-head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [ray_bin(), "start", "--head", "--block", f"--port={gcs}",
             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
             "--disable-usage-stats"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the Ray head exited {proc.returncode}: {log.read_text()}"
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{dashboard}/api/version"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, f"no dashboard within 90 s: {log.read_text()}"
            time.sleep(0.5)
        yield gcs, dashboard, env
    finally:
        # Reap the head as it ends: a zombie still counts in its process group, and
        # stop_head waits for the group to be gone.
        reaper = threading.Thread(target=proc.wait, daemon=True)
        reaper.start()
        stop_head(proc.pid)  # its process group: only what this fixture started
        reaper.join(timeout=10)
    deadline = time.monotonic() + 20
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(proc.pid) == [], "the Ray head's processes outlived stop_head"


def test_scenario_runs_as_a_ray_job(head: tuple[int, int, dict[str, str]],
                                    tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    gcs, dashboard, env = head
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO)
    report = tmp_path / "report"
    tender = Path(sys.executable).parent / "tender-ray"
    # The job's driver runs with the head's environment (not this venv's PATH), in the
    # directory `ray start` ran in: absolute paths. Ray's RAY_ADDRESS names the host's own
    # interface; the test keeps its traffic on loopback by naming the same port there.
    entry = (f'echo "RAY_ADDRESS=$RAY_ADDRESS"; exec {tender} run {scenario} '
             f"--address 127.0.0.1:{gcs} --report {report} --metrics-port 0")
    job_id = f"tender-job-{os.getpid()}"
    address = f"http://127.0.0.1:{dashboard}"
    r = subprocess.run([ray_bin(), "job", "submit", "--address", address,
                        "--submission-id", job_id, "--", "sh", "-c", entry],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)
    client = JobSubmissionClient(address)
    status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs}\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 0, r.stdout + r.stderr
    # Ray told the driver where the cluster is (the head's GCS port; Ray writes the host's
    # address there), and `tender-ray run` joined it rather than starting a Ray of its own.
    line = next(x for x in logs.splitlines() if x.startswith("RAY_ADDRESS="))
    assert line.endswith(f":{gcs}"), line
    # the scenario's summary, in the job's logs
    assert "scenario tiny-job: 2 processes, 2 machines" in logs, logs
    assert "makespan" in logs and "report:" in logs, logs
    data = json.loads((report / "report.json").read_text())
    processes = data["processes"]
    assert len(processes) == 2
    assert all(p["exit_status"] == 0 for p in processes), processes
    assert data["all_match_native"], processes
