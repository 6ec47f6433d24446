"""`tender-ray bench vs-ray --quick` on real nodes: a Ray head started by the benchmark with no
CPUs, two nodes each pinned to a core of this host, the preemption case shortened (two jobs of
~2 s natively; a's node gets Ray's drain notice while they run and is removed at its deadline).
Both sides must finish with every output equal to the native run's, tender_ray throwing no work
away, and the JSON, the table and the figures written. Speed is not checked here: that is what
the benchmark itself reports.

The benchmark runs in a process of its own: it is the driver of a Ray cluster it starts, which
a pytest session with its own embedded Ray cannot be. A head and two nodes start and one node
restarts: 2 to 4 minutes on the loaded 2-core development host, hence `slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.programs import ROOT

pytestmark = pytest.mark.slow

TIMEOUT = 600  # seconds: a guard against a hang, far above the run's time on a busy host


def test_quick_preemption_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "vs_ray.json"
    done = subprocess.run(
        [sys.executable, "-m", "tender_ray.bench.vs_ray", "--quick", "--cases", "preemption",
         "--json", str(out), "--report", str(tmp_path / "report")],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = json.loads(out.read_text())["cases"]["preemption"]
    assert figures["outputs_native"] is True
    assert figures["tender_lost_cpu_seconds"] == 0
    assert figures["tender_lost"] == [] and figures["ray_failed"] == []
    for key in ("tender_makespan", "ray_makespan", "ideal_makespan"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["ray_lost_cpu_seconds"] >= 0
    assert figures["ray_attempts"] >= figures["jobs"] == 2
    assert "| preemption |" in done.stdout
    report = tmp_path / "report"
    assert (report / "vs_ray.png").stat().st_size > 0
    assert (report / "preemption" / "load.png").stat().st_size > 0
    tender = json.loads((report / "preemption" / "report.json").read_text())
    # The balancer followed Ray's notice: a's machine was evacuated before its deadline.
    drains = [d for d in tender["node_drains"] if d["machine"] == "a"]
    assert drains and all(d["ok"] for d in drains), tender["node_drains"]
