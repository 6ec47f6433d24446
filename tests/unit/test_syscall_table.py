"""The system-call table (kernel/syscalls/table.py): every x86-64 Linux call has one entry with
Linux's name, every handler of the family modules is in it, docs/syscalls.md is what the
generator writes from it now, and a call marked "not" answers ENOSYS and is counted by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tender_ray
from tender_ray.abi.linux import SYSCALL_NAMES, Errno, sysno
from tender_ray.kernel.syscalls import SystemCalls, table
from tender_ray.kernel.syscalls.table import TABLE, Status
from tender_ray.resources.process import Process

ROOT = Path(tender_ray.__file__).resolve().parents[1]
DOC = ROOT / "docs" / "syscalls.md"


def test_the_table_is_whole() -> None:
    assert table.problems() == []
    assert sorted(TABLE) == sorted(SYSCALL_NAMES)
    assert all(e.note for e in TABLE.values() if e.status is not Status.SUPPORTED), \
        "a partial or missing call says why"


def test_docs_are_the_generated_table() -> None:
    generated = subprocess.run([sys.executable, "-m", "tender_ray.kernel.syscalls",
                                "--markdown"], capture_output=True, check=True, text=True,
                               timeout=120).stdout
    assert generated == table.markdown()
    assert DOC.read_text() == generated, (
        "docs/syscalls.md is not the table's current output: run `make syscalls-doc`")


def test_the_docs_count_what_the_table_holds() -> None:
    counts = table.counts()
    text = table.markdown()
    assert f"| supported | {counts[Status.SUPPORTED]} |" in text
    assert f"| not | {counts[Status.NOT]} |" in text
    assert f"{table.GVISOR_SUPPORTED} of about {table.GVISOR_TOTAL}" in text
    for nr, entry in TABLE.items():
        assert f"| {nr} | `{entry.name}` | {entry.status.value} |" in text


def test_no_overflow_modules() -> None:
    package = Path(tender_ray.__file__).resolve().parent
    assert [p.name for p in package.rglob("*_more.py")] == []


class _NoServices:
    managers = None


@pytest.mark.parametrize("name", ["socket", "ptrace", "shmget"])
def test_a_call_marked_not_answers_enosys_and_is_counted(name: str) -> None:
    assert TABLE[sysno(name)].status is Status.NOT
    calls = SystemCalls(_NoServices())  # type: ignore[arg-type]
    p = Process()
    outcome = calls.dispatch(p, sysno(name), (0, 0, 0, 0, 0, 0))
    assert outcome.result == -Errno.ENOSYS and not outcome.stop
    assert p.accounting.unsupported[name] == 1 and p.accounting.syscalls[name] == 1


def test_a_bad_generator_argument_says_how() -> None:
    result = subprocess.run([sys.executable, "-m", "tender_ray.kernel.syscalls", "--html"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--markdown > docs/syscalls.md" in result.stderr
