"""`tender-ray exec` of programs that create threads, with a real Ray: on either engine they
run as natively when asked to move every 50 ms over 3 machines (on the emulated engine a
process with threads moves as one unit; on the native one each move is refused by name and it
runs on where it is), and exec's `--stats` record says how many threads it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.programs import ROOT, run_native, workload

CLI_TIMEOUT = 240


@pytest.mark.parametrize("engine", ENGINES)
def test_exec_runs_threads(tmp_path: Path, engine: str) -> None:
    stats = tmp_path / "stats.json"
    r = subprocess.run([sys.executable, "-m", "tender_ray", "exec", "--engine", engine,
                        "--stats", os.fspath(stats), "--machines", "3", "--migrate-every",
                        "0.05", os.fspath(workload("thread_hash")), "4"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT, cwd=ROOT, check=False)
    status, out, _ = run_native(workload("thread_hash"), ["4"])
    assert (r.returncode, r.stdout) == (status, out), r.stderr
    written = json.loads(stats.read_text())
    assert written["exit_status"] == 0
    assert written["unsupported_syscalls"] == {}
    assert written["syscalls"]["clone"] == 4  # musl's pthread_create: one clone a thread
