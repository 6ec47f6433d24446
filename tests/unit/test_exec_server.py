"""The exec server's parts that need no Ray cluster: its messages (descriptors passed with
them), when `exec` asks it at all, the one line it says when it cannot be used, and a server
whose drivers cannot join their cluster telling its clients why (they then run exec the usual
way)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tender_ray.cli import exec_server
from tender_ray.cli.exec_server import (
    _is_server,
    query,
    receive,
    send,
    socket_path,
    start_server,
    stop_server,
    through_server,
)
from tender_ray.cli.operate import _free_port


def test_a_message_carries_descriptors_and_any_length() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    try:
        payload = b"x" * 300_000  # more than one socket buffer: read in several pieces
        sender = os.fork()
        if sender == 0:  # the child writes while the parent reads
            send(a, b"A", payload, [write_end])
            os._exit(0)
        kind, got, fds = receive(b)
        os.waitpid(sender, 0)
        assert (kind, got, len(fds)) == (b"A", payload, 1)
        os.write(fds[0], b"through the passed descriptor")
        os.close(fds[0])
        assert os.read(read_end, 100) == b"through the passed descriptor"
        a.close()
        with pytest.raises(ConnectionError):
            receive(b)  # the other end went
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        b.close()


def test_the_signals_passed_on_are_execs() -> None:
    from tender_ray.cli.execute import FORWARDED

    assert [int(s) for s in exec_server.FORWARDED] == [int(s) for s in FORWARDED]


def _state(path: Path, address: str, sock: str | None) -> None:
    path.write_text(json.dumps({"address": address, "machines": {"m0": 0},
                                "shared_plate": str(path.parent), "exec_socket": sock}))


def test_exec_asks_no_server_where_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "cluster.json"
    monkeypatch.setenv("TENDER_STATE", str(state))
    assert through_server("auto", ["exec", "/bin/true"]) is None  # no cluster of `up`
    _state(state, "127.0.0.1:1", None)
    assert through_server("auto", ["exec", "/bin/true"]) is None  # `up` started none
    _state(state, "127.0.0.1:1", str(tmp_path / "gone.sock"))
    assert through_server("127.0.0.1:2", ["exec", "/bin/true"]) is None  # another cluster
    monkeypatch.setenv("TENDER_EXEC_SERVER", "off")
    assert through_server("auto", ["exec", "/bin/true"]) is None  # not asked
    assert capsys.readouterr().err == ""


def test_a_stale_socket_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "cluster.json"
    monkeypatch.setenv("TENDER_STATE", str(state))
    monkeypatch.delenv("TENDER_EXEC_SERVER", raising=False)
    stale = socket_path(state)
    assert stale == tmp_path / "cluster.exec.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(stale))  # bound once, nobody listens: what a killed server leaves
    _state(state, "127.0.0.1:1", os.fspath(stale))
    assert through_server("127.0.0.1:1", ["exec", "/bin/true"]) is None
    assert capsys.readouterr().err == (
        f"tender-ray: notice: the exec server at {stale} does not answer (Connection "
        "refused); starting exec the usual way\n")


def test_a_server_whose_drivers_cannot_join_says_why(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A cluster nobody answers at: the warm driver fails, the server says why to a client,
    which then runs exec the usual way; stopping the server removes its socket."""
    state = tmp_path / "cluster.json"
    monkeypatch.setenv("TENDER_STATE", str(state))
    monkeypatch.delenv("TENDER_EXEC_SERVER", raising=False)
    address = f"127.0.0.1:{_free_port()}"
    _state(state, address, None)
    pid, sock = start_server(state)
    try:
        data = json.loads(state.read_text())
        state.write_text(json.dumps({**data, "exec_server_pid": pid, "exec_socket": sock}))
        assert _is_server(pid, sock) and not _is_server(os.getpid(), sock)
        deadline = time.monotonic() + 600  # only against a hang
        while (said := query(sock)) == "warming":  # until its first driver has given up
            assert time.monotonic() < deadline, "the server is still warming its first driver"
            time.sleep(0.05)
        assert said.startswith(f"UnreachableError: no Ray cluster at '{address}'"), said
        capsys.readouterr()
        assert through_server("auto", ["exec", "/bin/true"]) is None
        err = capsys.readouterr().err
        assert err.startswith("tender-ray: notice: the exec server could not take the program "
                              f"(UnreachableError: no Ray cluster at '{address}'"), err
        assert err.endswith("; starting exec the usual way\n") and err.count("\n") == 1, err
    finally:
        stop_server(pid, sock)
    assert not _is_server(pid, sock) and not Path(sock).exists()


@pytest.mark.slow
def test_a_server_whose_cluster_is_gone_for_good_ends(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody answers at the cluster's address, driver after driver (its head was stopped
    without `down`): the server ends by itself, and removes its socket."""
    state = tmp_path / "cluster.json"
    monkeypatch.setenv("TENDER_STATE", str(state))
    _state(state, f"127.0.0.1:{_free_port()}", None)
    pid, sock = start_server(state)
    try:
        data = json.loads(state.read_text())
        state.write_text(json.dumps({**data, "exec_server_pid": pid, "exec_socket": sock}))
        deadline = time.monotonic() + 900  # only against a hang: it ends after ~5 drivers
        while _is_server(pid, sock):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert not Path(sock).exists()
        log = state.with_name("cluster.exec.log").read_text()
        assert "stopping: no cluster answers (UnreachableError: " in log, log
    finally:
        stop_server(pid, sock)
