"""A system call the tracer injects at the trampoline answers exactly what the kernel answered,
whatever the value: a result is never taken for the next call's number, since some numbers
pass every filter without a stop (uretprobe 335 and uprobe 336 on recent kernels, and the
data-plane calls the stub's filter lets through). A thread id of 335 made a clone look failed
and left a thread the tracer did not know."""

from __future__ import annotations

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY

from tender_ray.engines.native.tracer import MEMORY_FD, release_tracer, tracer_for
from tender_ray.resources.real_memory import RealMemory

pytestmark = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)

SYS_LSEEK, SEEK_SET = 8, 0
# The data-plane calls' numbers (read, fstat, lseek, pread64, fadvise64), the two that pass
# every filter, and their neighbours.
VALUES = [0, 1, 5, 8, 17, 39, 221, 334, 335, 336, 337, 4096]


def test_an_injected_call_answers_its_own_result_whatever_the_value() -> None:
    memory = RealMemory(1 << 20, shared=True)
    tracer = tracer_for(memory)

    def answers() -> list[int]:
        host = tracer.spawn()
        try:  # lseek(the memory file, v, SEEK_SET) answers v
            return [tracer.inject(host, SYS_LSEEK, MEMORY_FD, v, SEEK_SET) for v in VALUES]
        finally:
            tracer.kill(host)

    try:
        assert tracer.call(answers) == VALUES
    finally:
        release_tracer(memory, tracer)
