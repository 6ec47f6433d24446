"""`tender-ray exec` of a program that creates a thread, with a real Ray: the process ends at
its clone, exec says why on stderr in one line naming the call and what to do, after a line
counting the calls it could not make, and exits non-zero (the status of a call refused as
seccomp refuses one, 128 + SIGSYS); what it printed before is there, as natively."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.programs import ROOT, run_native, workload

CLI_TIMEOUT = 240


def test_exec_names_the_thread_it_cannot_run(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    r = subprocess.run([sys.executable, "-m", "tender_ray", "exec", "--stats", os.fspath(stats),
                        os.fspath(workload("threads")), "create"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT, cwd=ROOT, check=False)
    assert run_native(workload("threads"), ["create"])[:2] == (0, b"creating a thread\n"
                                                                  b"joined: 42\n")
    assert (r.returncode, r.stdout) == (128 + 31, b"creating a thread\n"), r.stderr
    written = json.loads(stats.read_text())
    assert written["exit_status"] == 159
    assert written["unsupported_syscalls"] == {"clone (a thread)": 1}
    # The calls it could not make, then why it ended and what to do instead, one line each.
    assert r.stderr.decode().splitlines()[-2:] == [
        "tender-ray: the program made system calls tender_ray does not support: "
        "clone (a thread): 1",
        f"tender-ray: process {written['pid']} killed by SIGSYS (clone with CLONE_THREAD "
        "(a thread) is not supported yet: tender_ray runs single-threaded processes; run the "
        "program with one thread (its -j1 or --threads=1 option, say) or natively)"]
