"""Scale on this host: `tender-ray run configs/scale.yaml` (16 machines, 512 short processes,
the threshold balancer on) runs to completion, every process's output is its native run's,
and the balancer had to move processes. A run of the command itself, in a process of its own
(its embedded Ray is not this session's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.programs import ROOT

pytestmark = pytest.mark.slow  # ~45 s on the 2-core development host


def test_the_scale_scenario_completes_with_native_outputs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tender_ray", "run",
                           str(ROOT / "configs" / "scale.yaml"), "--report", str(tmp_path),
                           "--no-live"], capture_output=True, timeout=900, check=False,
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    processes = report["processes"]
    assert len(processes) == 512
    assert all(p["output_matches_native"] is True and p["exit_status"] == 0
               for p in processes)
    assert report["lost"] == [] and report["not_started"] == []
    assert report["migrations"]["count"] > 0
    moved = {p["name"] for p in processes if len(p["machines"]) > 1}
    assert any(name.startswith("compute_sleep") for name in moved)  # spread off m0
