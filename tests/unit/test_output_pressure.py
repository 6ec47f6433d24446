"""A process's standard output is a pipe to its owner: at most OUTPUT_LIMIT untaken bytes per
stream once an owner takes it, a writer beyond that waits (and migrates while it waits), and
a write after the owner's reader has gone raises SIGPIPE and fails with EPIPE."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.machines import finish, local_mover, run_on_machine, wait_state
from support.programs import NATIVE_TIMEOUT, native, run_native, workload

from tender_ray.config import CheckpointSpec
from tender_ray.engines.native import check as native_check
from tender_ray.engines.native.output_pipes import CAPACITY
from tender_ray.kernel.checkpoint import CopyTransport
from tender_ray.kernel.machine import Machine
from tender_ray.migration.options import MigrationOptions
from tender_ray.resources.open_file import OUTPUT_LIMIT

FLOOD_KIB = "6144"  # six times the bound
# What an image may carry: the bound, plus one host pipeful a native guest wrote straight to
# its stream's pipe before the stream filled (engines/native/output_pipes.py).
BOUND = OUTPUT_LIMIT + CAPACITY


def _start(machine: Machine, *args: str) -> int:
    path = workload("outflood")
    return machine.exec(path.read_bytes(), "outflood", [os.fspath(path), *args],
                        stdin="stream")


def _blocked(machine: Machine, pid: int) -> bool:
    """Wait until the writer waits for its owner (it never sleeps otherwise): True, or
    False when it ended first."""
    return wait_state(machine, pid, ("sleeping", "zombie"), timeout=120.0).state != "zombie"


def _image_output(machine: Machine, pid: int) -> tuple[int, int]:
    """The output the process's image carries (taken as a checkpoint takes it)."""
    machine.freeze(pid)
    try:
        image = machine.export_image(pid, CopyTransport(), MigrationOptions())
    finally:
        machine.thaw(pid)
    return len(image.kernel.stdout), len(image.kernel.stderr)


def test_a_slow_owner_bounds_the_output_and_gets_it_all(
        make_machine: Callable[..., Machine]) -> None:
    m = make_machine(quantum_us=1000)
    pid = _start(m, FLOOD_KIB)
    out, err = m.take_output(pid)  # the owner follows from here, before anything is written
    assert (out, err) == (b"", b"")
    m.feed_stdin(pid, b"", eof=True)  # the start signal
    blocked_images = 0
    while _blocked(m, pid):  # not taken meanwhile, it fills the stream and waits
        stdout_bytes, _ = _image_output(m, pid)  # its image carries the bound at most
        assert stdout_bytes <= BOUND
        blocked_images += 1
        taken, taken_err = m.take_output(pid)  # the slow owner's take wakes it
        out += taken
        err += taken_err
    status, rest, rest_err, _ = finish(m, pid)
    assert blocked_images >= 5  # six times the bound, taken a bound at a time
    assert (status, out + rest, err + rest_err) == native("outflood", FLOOD_KIB)


@pytest.mark.parametrize("engine", ["emulated", "native"])
def test_a_blocked_writer_migrates_and_finishes_as_natively(
        make_machine: Callable[..., Machine], engine: str) -> None:
    if engine == "native":
        available, why = native_check.self_check()
        if not available:
            pytest.skip(f"native engine unavailable: {why}")
    machines = [make_machine(name=f"out-{i}", quantum_us=1000, engine=engine)
                for i in range(2)]
    move = local_mover()
    pid = _start(machines[0], FLOOD_KIB)
    out, err = machines[0].take_output(pid)
    machines[0].feed_stdin(pid, b"", eof=True)
    where, moves = 0, 0
    while _blocked(machines[where], pid):  # waiting for its owner: moved as it waits
        assert _image_output(machines[where], pid)[0] <= BOUND
        move(machines[where], pid, machines[1 - where])
        where, moves = 1 - where, moves + 1
        taken, taken_err = machines[where].take_output(pid)  # wakes it where it landed
        out += taken
        err += taken_err
    status, rest, rest_err, _ = finish(machines[where], pid)
    assert moves > 0
    assert (status, out + rest, err + rest_err) == native("outflood", FLOOD_KIB)


def test_a_process_nobody_follows_never_waits(make_machine: Callable[..., Machine]) -> None:
    m = make_machine(quantum_us=1000)
    status, out, err, _ = run_on_machine(m, workload("outflood"), [FLOOD_KIB])
    assert len(out) > OUTPUT_LIMIT
    assert (status, out, err) == native("outflood", FLOOD_KIB)


def _native_closed(mode: str) -> tuple[int, bytes]:
    """outflood closed MODE on the host, its stdout's reader closed once it is ready."""
    with subprocess.Popen([os.fspath(workload("outflood")), "closed", mode],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env={}) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        ready = proc.stderr.readline()
        proc.stdout.close()
        rest = proc.stderr.read()
        proc.wait(timeout=NATIVE_TIMEOUT)
    return (proc.returncode if proc.returncode >= 0 else 128 - proc.returncode), ready + rest


def _ready(m: Machine, pid: int) -> bytes:
    """Follow `outflood closed` until it says it is ready (it then waits for its input);
    the stderr taken."""
    err = b""
    while b"ready" not in err:
        err += m.take_output(pid)[1]
        if b"ready" not in err:
            assert m.wait(pid, timeout=0.02).state != "zombie", err
    return err


def test_a_write_to_a_closed_output_fails_with_epipe(
        make_machine: Callable[..., Machine]) -> None:
    m = make_machine(quantum_us=1000)
    for mode in ("ignore", "handle", "default"):
        pid = _start(m, "closed", mode)
        err = _ready(m, pid)
        m.close_output(pid, 1)
        m.feed_stdin(pid, b"", eof=True)  # now it writes
        status, _, rest, _ = finish(m, pid)
        assert (status, err + rest) == _native_closed(mode), mode
    assert _native_closed("default")[0] == 141  # killed by SIGPIPE


def test_a_blocked_writer_learns_of_the_close(make_machine: Callable[..., Machine]) -> None:
    m = make_machine(quantum_us=1000)
    pid = _start(m, "closed", "ignore")
    err = _ready(m, pid)
    m.feed_stdin(pid, b"", eof=True)
    assert _blocked(m, pid)  # its stdout is full: it waits for this owner
    m.close_output(pid, 1)  # wakes it to fail
    status, _, rest, _ = finish(m, pid)
    assert (status, err + rest) == _native_closed("ignore")


def test_the_closed_output_travels(make_machine: Callable[..., Machine]) -> None:
    a, b = make_machine(name="closed-a"), make_machine(name="closed-b")
    pid = _start(a, "closed", "handle")
    err = _ready(a, pid)
    a.close_output(pid, 1)
    local_mover()(a, pid, b)  # waiting for its input: it moves as it is
    b.feed_stdin(pid, b"", eof=True)
    status, _, rest, _ = finish(b, pid)
    assert (status, err + rest) == _native_closed("handle")


def test_output_held_for_a_checkpoint_never_makes_the_writer_wait(
        make_machine: Callable[..., Machine], tmp_path: Path) -> None:
    """Every byte is held (a periodic checkpointer that will not run within the test): the
    writer does not wait for room only a checkpoint could make; its exit releases it all."""
    m = make_machine(quantum_us=1000,
                     checkpoint=CheckpointSpec(every=3600.0, dir=str(tmp_path)))
    pid = _start(m, FLOOD_KIB)
    assert m.take_output(pid) == (b"", b"")  # followed from here on
    m.feed_stdin(pid, b"", eof=True)
    info = wait_state(m, pid, ("sleeping", "zombie"), timeout=120.0)
    assert info.state == "zombie"  # it never waited
    assert m.take_output(pid) != (b"", b"")  # ended: the exit released what it held
    status, _, _, _ = finish(m, pid)
    assert status == 0


def test_sendfile_to_a_full_output_waits_and_loses_nothing(
        make_machine: Callable[..., Machine], tmp_path: Path) -> None:
    """sendfile to standard output waits for room before it reads its source."""
    source = tmp_path / "source"
    source.write_bytes(bytes(range(251)) * 12_000)  # about 2.9 MiB
    m = make_machine(quantum_us=1000)
    pid = _start(m, "sendfile", str(source))
    out, err = m.take_output(pid)
    m.feed_stdin(pid, b"", eof=True)
    blocked = 0
    while _blocked(m, pid):
        assert _image_output(m, pid)[0] <= BOUND
        blocked += 1
        taken, taken_err = m.take_output(pid)
        out += taken
        err += taken_err
    status, rest, rest_err, _ = finish(m, pid)
    assert blocked >= 2
    assert (status, out + rest, err + rest_err) == run_native(
        workload("outflood"), ["sendfile", str(source)])
