"""`tender-ray exec` of programs that create threads, with a real Ray: on either engine they
run as natively when asked to move every 50 ms over 3 machines (on either engine a process
with threads moves as one unit), and exec's `--stats` record says how many threads it made.
Debian's `xz -T2` and `zstd -T2` on the native engine, asked to move every 50 ms over 3
machines while they compress a generated input, write what they write natively, and every
move the record lists succeeded."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from support.engines import ENGINES, NATIVE_OK, NATIVE_WHY
from support.programs import ROOT, need, run_native, workload

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


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
@pytest.mark.parametrize("program", ["/usr/bin/xz", "/usr/bin/zstd"])
def test_exec_moves_debian_programs_with_threads_on_the_native_engine(
        tmp_path: Path, program: str) -> None:
    need(program)
    rng = random.Random(19)
    data = tmp_path / "lines.txt"
    data.write_bytes("".join(f"{rng.randrange(10**6)} {'x' * rng.randrange(1, 40)} "
                             f"{rng.randrange(10**4)}\n" for _ in range(100_000)).encode())
    stats = tmp_path / "stats.json"
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "tender_ray", "exec", "--engine", "native",
                        "--computations", "2", "--stats", os.fspath(stats), "--machines", "3",
                        "--migrate-every", "0.05", program, "-T2", "-c", os.fspath(data)],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT,
                       cwd=ROOT, check=False, env={**os.environ, **env})
    status, out, _ = run_native(program, ["-T2", "-c", os.fspath(data)], env)
    assert (r.returncode, r.stdout) == (status, out), r.stderr
    written = json.loads(stats.read_text())
    assert written["syscalls"].get("clone3", 0) + written["syscalls"].get("clone", 0) >= 1
    assert all(m["result"] == "ok" for m in written["migrations"]), written["migrations"]
