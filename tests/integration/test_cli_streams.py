"""`tender-ray exec` with its streams redirected as a shell redirects them, the process moving
every 50 ms over 3 machines: Debian's gzip reading a file given as stdin (its header keeps the
file's time), tar writing its archive to a file, and sort spilling its runs to the run's
private /tmp — each byte for byte what the native run writes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from support.programs import need

CLI_TIMEOUT = 600
MIGRATING = ("--machines", "3", "--migrate-every", "0.05")


def _redirected(argv: list[str], stdin: Path, stdout: Path, env: dict[str, str]
                ) -> subprocess.CompletedProcess[bytes]:
    with stdin.open("rb") as i, stdout.open("wb") as o:
        return subprocess.run(argv, stdin=i, stdout=o, stderr=subprocess.PIPE, env=env,
                              timeout=CLI_TIMEOUT, check=False)


def test_redirected_streams_and_private_tmp_match_native(tmp_path: Path) -> None:
    need("/usr/bin/gzip", "/usr/bin/sort", "/usr/bin/tar")
    rng = random.Random(18)
    text = tmp_path / "in.txt"
    text.write_text("".join(f"{rng.randrange(10**9)} line {i}\n" for i in range(60_000)))
    os.utime(text, (1_500_000_000, 1_500_000_000))
    host_tmp = tmp_path / "host-tmp"  # where exec makes each run's private /tmp
    host_tmp.mkdir()
    # Ray's own files stay where they were (its socket paths must be short).
    env = {**os.environ, "LC_ALL": "C", "TMPDIR": str(host_tmp),
           "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp")}
    exec_ = [sys.executable, "-m", "tender_ray", "exec", *MIGRATING]
    runs = {
        # gzip stores fstat(0)'s mtime when stdin is a regular file
        "gzip": (["/usr/bin/gzip", "-c"], text),
        # tar compares fstat(1) with /dev/null and writes nothing when they match
        "tar": (["/usr/bin/tar", "-cf", "-", "-C", str(tmp_path), "in.txt"], Path(os.devnull)),
        # a 64 KiB buffer makes sort write its runs to -T /tmp, the run's own
        "sort": (["/usr/bin/sort", "-S", "64K", "--parallel=1", "-T", "/tmp"], text),
    }
    for name, (argv, stdin) in runs.items():
        native, tender = tmp_path / f"{name}.native", tmp_path / f"{name}.tender"
        assert _redirected(argv, stdin, native, env).returncode == 0
        stats = tmp_path / f"{name}.json"
        result = _redirected([*exec_[:4], "--stats", str(stats), *exec_[4:], *argv], stdin,
                             tender, env)
        assert result.returncode == 0, result.stderr
        assert tender.read_bytes() == native.read_bytes(), (name, result.stderr)
        assert json.loads(stats.read_text())["exit_status"] == 0
    assert (tmp_path / "gzip.tender").read_bytes()[4:8] == (1_500_000_000).to_bytes(4, "little")
    assert list(host_tmp.glob("tender-tmp-*")) == [], "a run's private /tmp was left behind"

