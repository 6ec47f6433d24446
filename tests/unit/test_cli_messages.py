"""The command line's own messages and exit statuses, without a Ray cluster: every option
has help, an unreachable cluster is one line and status 3 (also through RAY_ADDRESS), `down`
with nothing up is fine, a guest killed by a signal is named, `top` quits on q, the live view
has column headers, and a drain's summary says what was left and why."""

from __future__ import annotations

import argparse
import io
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from support.programs import workload

from tender_ray.balancing.state import DrainReport
from tender_ray.cli import status
from tender_ray.cli.exec_command import killed_message
from tender_ray.cli.live import MACHINE_COLUMNS, scenario_view
from tender_ray.cli.main import build_parser, drain_summary, main
from tender_ray.cli.top import run_top, wait_for_quit
from tender_ray.errors import UsageError


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_every_option_and_positional_has_help() -> None:
    missing = [f"{prog}: {'/'.join(a.option_strings) or a.dest}"
               for prog, parser in _parsers(build_parser())
               for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []
    assert len(_parsers(build_parser())) >= 11  # the walk reached every command


def test_exec_usage_shows_args_as_optional() -> None:
    usage = dict(_parsers(build_parser()))["tender-ray exec"].format_usage()
    assert "PROGRAM [ARGS ...]" in usage and "--machine NAME" in usage


def test_exec_without_a_program_asks_for_the_program_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["exec"])
    assert exit_.value.code == status.EXEC_FAILED  # exec's own misuse, apart from 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("the following arguments are required: PROGRAM"), err


def test_statuses_are_distinct() -> None:
    codes = [status.OK, status.FAILED, status.USAGE, status.UNREACHABLE, status.SIGNAL_BASE]
    assert codes == [0, 1, 2, 3, 128]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens there once closed


def test_check_reachable() -> None:
    status.check_reachable(None)  # embedded: nothing to check
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        status.check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(status.UnreachableError, match="does not answer"):
        status.check_reachable(f"127.0.0.1:{closed_port()}")
    with pytest.raises(UsageError, match="not host:port"):
        status.check_reachable("nonsense")


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tender-ray: error: "), err
    return lines[0]


@pytest.mark.parametrize("by_env", [False, True])
def test_exec_on_an_unreachable_cluster(by_env: bool, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TENDER_STATE", str(tmp_path / "cluster.json"))
    address = f"127.0.0.1:{closed_port()}"
    if by_env:
        monkeypatch.setenv("RAY_ADDRESS", address)
        argv = ["exec", os.fspath(workload("hello"))]
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        argv = ["exec", "--address", address, os.fspath(workload("hello"))]
    assert main(argv) == status.EXEC_FAILED  # exec's own failure, not its program's 3
    line = one_error_line(capsys.readouterr().err)
    assert f"no Ray cluster at '{address}'" in line and "tender-ray up" in line


def test_down_with_nothing_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TENDER_STATE", str(tmp_path / "cluster.json"))
    assert main(["down"]) == status.OK
    out = capsys.readouterr()
    assert "nothing is running (no cluster started by `tender-ray up`)" in out.out
    assert out.err == ""


def test_drain_deadline_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drain", "m0", "--deadline", "0"]) == status.USAGE
    assert "--deadline" in one_error_line(capsys.readouterr().err)


def test_killed_message() -> None:
    assert killed_message(1001, 139, "write to unmapped address 0x0") == \
        "tender-ray: process 1001 killed by SIGSEGV (write to unmapped address 0x0)"
    assert killed_message(7, 137, "killed by signal 9") == "tender-ray: process 7 killed by " \
                                                          "SIGKILL"
    assert killed_message(7, 0, "exited") == ""
    assert killed_message(7, 139, "exited") == ""  # exit(139) is an exit, not a signal


def test_drain_summary_says_what_was_left_and_why() -> None:
    failed = DrainReport("m0", 2.0, 2.0, (), (1001, 1002), False, "no other machine")
    assert drain_summary(failed) == ("drain of m0: 0 moved in 2.00 s; still there at the "
                                     "deadline (2 s): 1001 1002 (no other machine)")
    ended = DrainReport("m0", 1.5, 60.0, (), (), True, "no other machine", (1001,))
    assert drain_summary(ended) == "drain of m0: 0 moved, 1 ended there in 1.50 s (no other " \
                                   "machine)"


def test_q_quits_top() -> None:
    read, write = os.pipe()
    with os.fdopen(read) as keys:
        start = time.monotonic()
        assert wait_for_quit(keys, 0.1) is False  # nothing pressed: the interval passes
        assert time.monotonic() - start >= 0.09
        os.write(write, b"x")
        assert wait_for_quit(keys, 0.1) is False
        threading.Timer(0.2, os.write, (write, b"q")).start()
        start = time.monotonic()
        run_top([], 0.05, console=Console(file=io.StringIO()), keys=keys)
        assert time.monotonic() - start < 5  # it returned, on q, long before anything else
    os.close(write)


def test_live_view_has_machine_column_headers() -> None:
    from tender_ray.kernel.snapshots import MachineStatistics
    from tender_ray.resources.computation import ComputationStatistics
    from tender_ray.resources.real_memory import RealMemoryStatistics

    stats = MachineStatistics(
        name="m0", state="running", computations=(ComputationStatistics(0, "idle", None, 0.0,
                                                                         0),),
        processes={}, runnable=1, load=1.0, utilisation=0.0,
        memory=RealMemoryStatistics(4096, 2048, 2048), managers=(), syscalls={},
        unsupported={}, exited=0, uptime=1.0, cordoned=False)
    run = SimpleNamespace(last_poll={"m0": SimpleNamespace(statistics=stats, processes=[1])},
                          arrivals=[], tracked={}, queue=[], elapsed=1.0,
                          scenario=SimpleNamespace(name="s"),
                          policy=SimpleNamespace(value="none"))
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(scenario_view(run, []))  # type: ignore[arg-type]
    lines = console.export_text().splitlines()
    row = next(i for i, line in enumerate(lines) if " m0 " in line)
    header = next(line for line in reversed(lines[:row]) if "machine" in line)
    for col in MACHINE_COLUMNS:
        assert col in header, (col, header)
    assert "8 MiB" in lines[row]


def test_down_and_ps_when_the_cluster_of_up_has_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "cluster.json"
    state.write_text(f'{{"address": "127.0.0.1:{closed_port()}", "machines": {{"m0": 0}}, '
                     f'"shared_plate": "{tmp_path / "plate"}"}}')
    monkeypatch.setenv("TENDER_STATE", os.fspath(state))
    assert main(["ps"]) == status.UNREACHABLE
    assert "`tender-ray down` forgets it" in one_error_line(capsys.readouterr().err)
    assert main(["down"]) == status.OK
    assert "no cluster answered at 127.0.0.1:" in capsys.readouterr().out
    assert not state.exists()
