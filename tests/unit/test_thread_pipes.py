"""A pipe between two threads of one process (no tree: no fork made it): the reader blocked in
its read is woken by the other thread's write, and a blocking write to a pipe is all or
nothing as on Linux (a program that ignores the count it returns loses no byte)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from support.engines import ENGINES
from support.machines import assert_clean, run_on_machine
from support.programs import need, run_native

from tender_ray.kernel.machine import Machine
from tender_ray.resources.open_file import PIPE_BUF, PipeBuffer, PipeEnd

# The writer ignores what os.write returns: natively every write is whole (at most
# PIPE_BUF bytes, a blocking pipe), so the count only adds up if it is here too.
PIPE_BETWEEN_THREADS = """
import os, threading
r, w = os.pipe()
def writer():
    for i in range(300):
        os.write(w, bytes([65 + i % 26]) * 1000)
    os.close(w)
t = threading.Thread(target=writer)
t.start()
total, letters = 0, set()
while b := os.read(r, 4096):  # (where reads split the writes is the host's timing)
    total += len(b)
    letters |= set(b)
t.join()
print("read", total, "bytes,", len(letters), "letters")
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_thread_reads_what_another_writes_through_a_pipe(
        engine: str, make_machine: Callable[..., Machine]) -> None:
    need("/usr/bin/python3")
    machine = make_machine(quantum_us=1000, computations=2, engine=engine, memory_mib=256)
    args = ["-S", "-c", PIPE_BETWEEN_THREADS]
    status, out, err, info = run_on_machine(machine, "/usr/bin/python3", args)
    assert (status, out, err) == run_native("/usr/bin/python3", args)[:3], info.exit_reason
    assert out.startswith(b"read 300000 bytes")
    assert_clean(machine)


def test_a_pipe_write_is_whole_or_waits() -> None:
    pipe = PipeBuffer(capacity=3 * PIPE_BUF)
    reader = PipeEnd(pipe, False, 0)
    blocking = PipeEnd(pipe, True, 0)
    assert blocking.write(b"a" * (2 * PIPE_BUF + 100)) == 2 * PIPE_BUF + 100
    assert blocking.write(b"b" * PIPE_BUF) is None  # it does not all fit: wait, none taken
    assert blocking.write(b"c" * (PIPE_BUF + 1)) is None  # nor does a larger blocking one
    assert len(pipe.data) == 2 * PIPE_BUF + 100
    eager = PipeEnd(pipe, True, os.O_NONBLOCK)
    assert eager.write(b"d" * PIPE_BUF) is None  # atomic: all or nothing (EAGAIN)
    assert eager.write(b"e" * (PIPE_BUF + 1)) == PIPE_BUF - 100  # larger: what fits
    assert pipe.data.endswith(b"e" * (PIPE_BUF - 100))
    assert reader.read(1 << 20) is not None and not pipe.data
    assert blocking.write(b"f" * (4 * PIPE_BUF)) == 3 * PIPE_BUF  # past capacity: a part
