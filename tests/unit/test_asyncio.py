"""python3's asyncio under a Tender kernel: its event loop waits in epoll on its wake-up
socket pair (kernel/syscalls/sockets.py), a pipe and its timers (descriptors_events.py);
tasks that sleep, a queue, a reader on a pipe and socket streams between two coroutines give
the native output while the process migrates between machines."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover
from support.programs import NATIVE_TIMEOUT

from tender_ray.kernel.machine import Machine

MakeMachine = Callable[..., Machine]
PYTHON = Path("/usr/bin/python3")
PROGRAM = """
import asyncio, os, socket

async def sleeper(name, n, out):
    for i in range(n):
        await asyncio.sleep(0.01)
        out.append((name, i))

async def main():
    out = []
    await asyncio.gather(*(sleeper(name, 5, out) for name in "abc"))
    print(sorted(out) == [(n, i) for n in "abc" for i in range(5)], len(out))
    queue = asyncio.Queue()
    async def produce():
        for i in range(20):
            await queue.put(i)
            await asyncio.sleep(0)
        await queue.put(None)
    async def consume():
        total = 0
        while (item := await queue.get()) is not None:
            total += item
        return total
    print("queue", (await asyncio.gather(produce(), consume()))[1])
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    got = loop.create_future()
    loop.add_reader(r, lambda: got.set_result(os.read(r, 100)))
    loop.call_later(0.05, os.write, w, b"through a pipe")
    print((await got).decode())
    loop.remove_reader(r)
    a, b = socket.socketpair()
    reader_a, writer_a = await asyncio.open_connection(sock=a)
    reader_b, writer_b = await asyncio.open_connection(sock=b)
    writer_a.write(b"ping\\n" * 1000)
    await writer_a.drain()
    lines = [await reader_b.readline() for _ in range(1000)]
    print("stream", len(lines), set(lines))
    writer_a.close()
    print("eof", await reader_b.read())
    writer_b.close()
    start = loop.time()
    await asyncio.wait_for(asyncio.sleep(0.05), timeout=5)
    print("slept", loop.time() - start >= 0.049)

asyncio.run(main())
"""


@pytest.mark.parametrize("engine", ENGINES[1:])  # python3 at native speed
def test_asyncio_through_migrations(make_machine: MakeMachine, engine: str) -> None:
    if not PYTHON.exists():
        pytest.skip("python3 is not installed")
    native = subprocess.run([str(PYTHON), "-c", PROGRAM], capture_output=True, env={},
                            timeout=NATIVE_TIMEOUT, check=True)
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine, memory_mib=256)
                for i in range(3)]
    pid = machines[0].exec(PYTHON.read_bytes(), "python3", [str(PYTHON), "-c", PROGRAM])
    # A move every 30 ms: tens of them through its run. (Every 10 ms it barely ran between
    # moves: hundreds of them, 10-20 s.)
    at, records = bounce(machines, pid, move=local_mover(), pause=0.03)
    status, out, err, info = finish(machines[at], pid, timeout=300)
    assert records, "it ended before it moved"
    assert (status, out) == (0, native.stdout), (err, info.exit_reason)
    # glibc's rseq and robust list, and a socket() the library tries and goes on without.
    assert set(info.unsupported) <= {"rseq", "set_robust_list", "socket"}, info.unsupported
