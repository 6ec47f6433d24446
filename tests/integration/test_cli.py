"""`tender-ray exec` as a user runs it: a subprocess, an embedded Ray, output and status as if
the program had run natively.

Every run that gets past argument checking starts its own Ray (~8 s), so there are few of them:
hello, exitcode, segv, one long migrating sieve, and one run per migration strategy flag.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.programs import native, workload

CLI_TIMEOUT = 240


def tender_ray(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tender_ray", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT, cwd=cwd, check=False)


def run_exec(tmp_path: Path, *options: str, program: str, args: tuple[str, ...] = ()
             ) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    stats = tmp_path / "stats.json"
    result = tender_ray("exec", "--stats", os.fspath(stats), *options,
                        os.fspath(workload(program)), *args)
    data = json.loads(stats.read_text()) if stats.exists() else {}
    return result, data


# --- programs run as if native ------------------------------------------------------------------

# (segv, killed by a signal, is test_cli_signals' default case: here only in the slow run)
@pytest.mark.parametrize(("program", "status"), [
    ("hello", 0), ("exitcode", 42), pytest.param("segv", 139, marks=pytest.mark.slow)])
def test_exec_matches_native(tmp_path: Path, program: str, status: int) -> None:
    result, stats = run_exec(tmp_path, program=program)
    expected = native(program)
    assert expected[0] == status
    stderr = result.stderr
    if status > 128:  # killed by a signal: the program's own stderr, then ours saying why
        *rest, last = stderr.splitlines(keepends=True) or [b""]
        assert last.startswith(b"tender-ray: process ") and b" killed by SIG" in last, stderr
        stderr = b"".join(rest)
    assert (result.returncode, result.stdout, stderr) == expected, result.stderr
    assert stats["exit_status"] == status
    assert stats["migrations"] == []


@pytest.mark.parametrize(("engine", "program", "args"), [
    ("emulated", "sieve", ("20000000",)),
    # natively a sieve ends before it can move often; a long, mostly sleeping process can
    ("native", "memhold", ("8", "150", "5")),
])
def test_exec_migrating(tmp_path: Path, engine: str, program: str, args: tuple[str, ...]
                        ) -> None:
    result, stats = run_exec(tmp_path, "--machines", "3", "--migrate-every", "0.05",
                             "--engine", engine, program=program, args=args)
    assert (result.returncode, result.stdout, result.stderr) == native(program, *args), \
        result.stderr
    migrations = stats["migrations"]
    # Several moves fit in a run however busy the host (the memhold sleeps 0.75 s at least);
    # how many depends on its speed, so two are asked for.
    assert len(migrations) >= 2, f"only {len(migrations)} migrations"
    machines = {"m0", "m1", "m2"}
    for m in migrations:
        assert m["from"] in machines and m["to"] in machines and m["from"] != m["to"]
        assert m["result"] == "ok" and m["bytes"] == m["pages"] * 4096
        assert (m["transfer"], m["reuse"], m["resources"]) == ("dsm", True, "needed")
    assert stats["exit_status"] == 0 and stats["final_machine"] in machines


STRATEGY_FLAGS = {"--transfer=plate": ("transfer", "plate"), "--no-reuse": ("reuse", False),
                  "--move-all": ("resources", "all")}


# Every flag at once in the default run (each reaches every migration: one Ray start, not
# three); each alone, as a user would give it, in the slow run.
@pytest.mark.parametrize("flags", [
    tuple(STRATEGY_FLAGS),
    *(pytest.param((flag,), marks=pytest.mark.slow) for flag in STRATEGY_FLAGS),
], ids=lambda flags: "+".join(flags))
def test_exec_migration_strategies(tmp_path: Path, flags: tuple[str, ...]) -> None:
    # 8 MiB touched (the pages each strategy moves), then 80 rounds of 10 ms sleep: at least
    # 0.8 s of running however fast the host is (a sieve's time shrinks with CPU speed; on a
    # fast host one ended after a single move), so ~11 moves at 0.05 s where 2 are asked for;
    # ~1.1 s a run, ~8 s with every CPU busy (where an 8000000 sieve took ~27 s)
    args = ("8", "80", "10")
    result, stats = run_exec(tmp_path, "--machines", "2", "--migrate-every", "0.05", *flags,
                             "--engine", "emulated", program="memhold", args=args)
    assert (result.returncode, result.stdout, result.stderr) == native("memhold", *args), \
        result.stderr
    assert len(stats["migrations"]) >= 2
    asked = [STRATEGY_FLAGS[flag] for flag in flags]
    assert all(m["result"] == "ok" and all(m[field] == value for field, value in asked)
               for m in stats["migrations"]), stats["migrations"]


# --- programs that cannot run: refused before Ray starts ----------------------------------------

def _one_line_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    assert result.returncode == code, result
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_program(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-program"
    line = _one_line_error(tender_ray("exec", os.fspath(missing)), 127)  # as a shell says
    assert os.fspath(missing) in line


def test_not_an_elf(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    line = _one_line_error(tender_ray("exec", os.fspath(text)), 126)  # found, cannot run
    assert os.fspath(text) in line and "ELF" in line


def test_dynamic_elf_is_not_refused() -> None:
    """exec checks its program before it starts or joins a Ray: pointed at an address where
    nothing answers (a port held bound, never listening), a dynamically linked program gets
    past the checks to the cluster's absence. (Dynamic programs run to their end as natively
    in test_cli_streams.)"""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        result = tender_ray("exec", "--address", address, "/bin/true")
    assert b"dynamically linked" not in result.stderr and b"ET_EXEC" not in result.stderr
    assert result.returncode == 125 and result.stderr.startswith(
        f"tender-ray: error: no Ray cluster at '{address}'".encode()), result.stderr


def test_help() -> None:
    top = tender_ray("--help")
    assert top.returncode == 0
    assert b"exec" in top.stdout
    sub = tender_ray("exec", "--help")
    assert sub.returncode == 0
    for option in (b"--machines", b"--migrate-every", b"--transfer", b"--no-reuse",
                   b"--move-all", b"--stats", b"PROGRAM"):
        assert option in sub.stdout, option
    text = b" ".join(top.stdout.split() + sub.stdout.split())
    assert b"static x86-64 Linux programs" not in text and b"#! scripts" in text
    for code in (b"125", b"126", b"127"):  # its own statuses, apart from the program's
        assert code in text, code
