"""Programs whose threads wake each other through an eventfd. Node's main thread ends its
worker threads' event loops by writing an eventfd each of them waits on in epoll_pwait, then
joins them; so an eventfd written by one thread wakes another thread blocked on it in read,
poll, select or epoll, as on Linux. Debian's node prints a value it computes and a sha256 from
its crypto module, and ends, as natively; python3 threads passing a token through eventfds,
each waiting in another call, print what they print natively (native engine, two
computations). Plain logic: a change of an eventfd's counter is told to the kernel; each
thread keeps its own timed wait (node's main thread waits in epoll_pwait with a deadline
while its workers wait in futexes with theirs), the first thread's in its descriptor table,
which travels in the image."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import assert_clean, run_on_machine
from support.programs import need, run_native

from tender_ray.kernel.machine import Machine
from tender_ray.kernel.syscalls.base import end_timed_wait, timed_wait_left
from tender_ray.resources import event_file
from tender_ray.resources.event_file import EventFd
from tender_ray.resources.process import Process, ThreadEntry
from tender_ray.resources.thread import Thread

MakeMachine = Callable[..., Machine]
native_only = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}


def test_a_change_of_an_eventfd_counter_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[int] = []
    monkeypatch.setattr(event_file, "counter_changed", lambda: told.append(1))
    fd = EventFd(0, semaphore=False, flags=0)
    assert fd.read(8) is None and told == []  # nothing taken: nothing changed
    assert fd.write((0).to_bytes(8, "little")) == 8 and told == []  # adds nothing
    assert fd.write((5).to_bytes(8, "little")) == 8 and len(told) == 1  # a reader may go on
    assert fd.read(8) == (5).to_bytes(8, "little") and len(told) == 2  # a writer may go on


def test_each_thread_keeps_its_own_timed_wait() -> None:
    p = Process()
    p.pid = 1000
    t = ThreadEntry(p, Thread(1001))
    p.accounting.syscalls["epoll_pwait"] = 5
    t.accounting.syscalls["futex"] = 6  # its next call follows the first thread's last
    long = timed_wait_left(p, 3600.0)
    assert long is not None and long > 60 and p.files.timed_wait is not None
    deadline = p.files.timed_wait[1]
    short = timed_wait_left(t, 0.0)  # a wait of its own, not the first thread's deadline
    assert short == 0.0
    assert t.thread.timed_wait is not None and t.thread.timed_wait[0] == 6
    p.accounting.syscalls["epoll_pwait"] += 1  # issued again after an early wake
    again = timed_wait_left(p, 3600.0)
    assert again is not None and again <= long
    assert p.files.timed_wait == (6, deadline)  # its deadline, not a new one; in the image
    end_timed_wait(t)
    assert t.thread.timed_wait is None and p.files.timed_wait is not None
    end_timed_wait(p)
    assert p.files.timed_wait is None


def _compare(machine: Machine, argv: list[str]) -> None:
    expected = run_native(argv[0], argv[1:], ENV)
    assert expected[0] == 0, expected
    status, out, err, info = run_on_machine(machine, argv[0], argv[1:], ENV)
    assert (status, out, err) == expected, info.exit_reason
    assert info.syscalls.get("clone3", 0) + info.syscalls.get("clone", 0) >= 1  # threads ran
    assert_clean(machine)


NODE = """
const n = Number(process.argv[1]);
let s = 0;
for (let i = 0; i < n; i++) s += i % 7919;
const text = Array.from({length: 1000}, (_, i) => (i * n) % 1009).join(',');
console.log(s, require('crypto').createHash('sha256').update(text).digest('hex'));
"""


@native_only
def test_node_computes_hashes_and_ends_as_natively(make_machine: MakeMachine) -> None:
    need("/usr/bin/node")
    machine = make_machine(quantum_us=1000, computations=2, engine="native", memory_mib=1024)
    n = random.randrange(500_000, 1_500_000)
    _compare(machine, ["/usr/bin/node", "-e", NODE, str(n)])


# Two threads pass a token back and forth, each waiting for it on its own eventfd in one of
# the calls that wait on a descriptor: each hand-over wakes a thread that may be blocked.
PYTHON = """
import os, select, sys, threading
rounds = int(sys.argv[1])
def by_read(fd):
    return os.eventfd_read(fd)
def by_poll(fd):
    p = select.poll(); p.register(fd, select.POLLIN); p.poll()
    return os.eventfd_read(fd)
def by_select(fd):
    select.select([fd], [], [])
    return os.eventfd_read(fd)
def by_epoll(fd):
    ep = select.epoll(); ep.register(fd, select.EPOLLIN); ep.poll(); ep.close()
    return os.eventfd_read(fd)
WAYS = [by_read, by_poll, by_select, by_epoll]
ping, pong = os.eventfd(0), os.eventfd(0)
seen = []
def other():
    for i in range(rounds):
        token = WAYS[i % 4](ping)
        os.eventfd_write(pong, token + 1)
t = threading.Thread(target=other); t.start()
token = 1
for i in range(rounds):
    os.eventfd_write(ping, token)
    token = WAYS[(i + 1) % 4](pong) * 3 % 1000003
    seen.append(token)
t.join()
print(rounds, sum(seen), seen[-1])
"""


@native_only
def test_python_threads_wake_each_other_through_eventfds(make_machine: MakeMachine) -> None:
    need("/usr/bin/python3")
    machine = make_machine(quantum_us=1000, computations=2, engine="native", memory_mib=512)
    rounds = random.randrange(150, 250)
    _compare(machine, ["/usr/bin/python3", "-c", PYTHON, str(rounds)])
