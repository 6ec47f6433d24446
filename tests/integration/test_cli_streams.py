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



SQL = """CREATE TABLE t(id INTEGER PRIMARY KEY, word TEXT, n INTEGER);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000)
INSERT INTO t(word, n) SELECT 'w' || (i * 7919 % 613), i * 104729 % 100003 FROM c;
CREATE INDEX t_word ON t(word);
DELETE FROM t WHERE id % 7 = 0;
SELECT count(*), sum(n) FROM t;
SELECT word, count(*), sum(n) FROM t GROUP BY word ORDER BY 3 DESC LIMIT 5;
PRAGMA integrity_check;
"""


def test_through_their_home_as_natively(tmp_path: Path) -> None:
    """`--host-files home`: only the machine the program starts on reads the host's files;
    the other two have none and serve the program's file calls through it, while it moves
    among the three. grep reads a file given as its stdin, sort spills to the private /tmp,
    sqlite3 writes its database (and journal) in the working directory."""
    need("/usr/bin/grep", "/usr/bin/sort", "/usr/bin/sqlite3")
    rng = random.Random(180)
    text = tmp_path / "in.txt"
    text.write_text("".join(f"{rng.randrange(10**9)} line {i}\n" for i in range(60_000)))
    (tmp_path / "script.sql").write_text(SQL)
    host_tmp = tmp_path / "host-tmp"
    host_tmp.mkdir()
    env = {**os.environ, "LC_ALL": "C", "TMPDIR": str(host_tmp),
           "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp")}
    runs = {
        # a back-reference takes grep's slow matcher: it computes long enough to be moved
        "grep": (["/usr/bin/grep", "-E", r"^([0-9])[0-9]*\1 line"], text),
        "sort": (["/usr/bin/sort", "-S", "64K", "--parallel=1", "-T", "/tmp"], text),
        "sqlite3": (["/usr/bin/sqlite3", "db.sqlite"], tmp_path / "script.sql"),
    }
    for name, (argv, stdin) in runs.items():
        for side in ("native", "tender"):
            where = tmp_path / f"{name}-{side}"  # each run's own working directory
            where.mkdir()
            stats = tmp_path / f"{name}.json"
            prefix = [] if side == "native" else [
                sys.executable, "-m", "tender_ray", "exec", "--stats", str(stats), *MIGRATING,
                "--host-files", "home"]
            with stdin.open("rb") as i, (tmp_path / f"{name}.{side}").open("wb") as o:
                result = subprocess.run([*prefix, *argv], stdin=i, stdout=o,
                                        stderr=subprocess.PIPE, env=env, cwd=where,
                                        timeout=CLI_TIMEOUT, check=False)
            assert result.returncode == 0, (name, side, result.stderr)
        tender = (tmp_path / f"{name}.tender").read_bytes()
        assert tender == (tmp_path / f"{name}.native").read_bytes(), name
        assert tender, f"{name} printed nothing: nothing to compare"
        assert json.loads(stats.read_text())["migrations"], f"{name} ended before it moved"
    assert list(host_tmp.glob("tender-tmp-*")) == [], "a run's private /tmp was left behind"
