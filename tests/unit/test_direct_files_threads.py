"""Direct files in a guest of several threads: from the first clone on, every data-plane call
is mediated (one host descriptor table cannot follow several tables of direct numbers), so a
file opened before the threads, files opened and closed in them and descriptor numbers reused
all read as natively, however many threads come and go (no filter piles up per thread)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import assert_clean, run_on_machine
from support.programs import need, run_native

from tender_ray.kernel.machine import Machine

pytestmark = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)

SCRIPT = """
import hashlib, os, sys, threading
path = sys.argv[1]
first = open(path, "rb")  # opened (and read) while the process has one thread
head = first.read(1 << 16)
digests = []
def work():
    with open(path, "rb") as f:  # each thread's own descriptor, often the same number
        digests.append(hashlib.sha256(f.read()).hexdigest())
    r, w = os.pipe()  # a number a direct file held before may now be a pipe's
    os.write(w, b"x")
    assert os.read(r, 1) == b"x"
    os.close(r); os.close(w)
for _ in range(THREADS):
    t = threading.Thread(target=work)
    t.start()
    t.join()
rest = first.read()
print(len(digests), len(set(digests)), hashlib.sha256(head + rest).hexdigest())
"""


def test_threads_come_and_go_while_files_are_read(
        make_machine: Callable[..., Machine], tmp_path: Path) -> None:
    need("/usr/bin/python3")
    data = tmp_path / "data.bin"
    data.write_bytes(random.Random(7).randbytes(3 << 20))
    script = SCRIPT.replace("THREADS", "300")
    machine = make_machine(quantum_us=1000, computations=2, engine="native", memory_mib=256)
    args = ["-S", "-c", script, str(data)]
    status, out, err, info = run_on_machine(machine, "/usr/bin/python3", args)
    assert (status, out, err) == run_native("/usr/bin/python3", args)[:3], info.exit_reason
    assert out.startswith(b"300 1 ")
    assert_clean(machine)
