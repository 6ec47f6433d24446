"""The churn benchmark's memory evidence, without Ray: the real-memory mapping's share of a
process's RSS read from /proc/<pid>/smaps, the start/half-way/end figures, and the steady
state of the second half (slopes per minute, growths to the end, of the whole and of the rest
besides the frames)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from tender_ray.bench.churn import (
    RssSample,
    _start_middle_end,
    memory_kib,
    slope,
    steady_state,
)

PAGE = 4096
ODD = (24 << 20) + PAGE  # a mapping size nothing else in this process has


def _fenced_anonymous(size: int) -> tuple[mmap.mmap, memoryview]:
    """An anonymous mapping of exactly `size` bytes between two inaccessible pages, so the
    kernel cannot merge it with a neighbour (as it may merge real memory's in an actor)."""
    whole = mmap.mmap(-1, size + 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = ctypes.addressof(ctypes.c_char.from_buffer(whole))
    libc = ctypes.CDLL(None, use_errno=True)
    for at in (start, start + PAGE + size):
        assert libc.mprotect(ctypes.c_void_p(at), PAGE, 0) == 0, ctypes.get_errno()
    return whole, memoryview(whole)[PAGE: PAGE + size]


def _frames(size: int) -> int:
    got = memory_kib(os.getpid(), size)
    assert got is not None and got["rss"] > 1000 and "anon" in got
    return got.get("frames", 0)  # machines of earlier tests may still be mapped here


def test_the_real_memory_mapping_counts_only_its_touched_pages() -> None:
    base = _frames(ODD)
    whole, anon = _fenced_anonymous(ODD)  # the emulated engine's frames
    try:
        got = memory_kib(os.getpid(), ODD)
        assert got is not None and got["frames"] == base  # committed lazily: nothing yet
        anon[: 3 << 20] = b"\1" * (3 << 20)
        assert _frames(ODD) == base + (3 << 10)
    finally:
        anon.release()
        whole.close()
    assert _frames(ODD) == base
    named = _frames(PAGE // 2)  # no mapping is half a page: only the memfds are counted
    fd = os.memfd_create("tender-real-memory", os.MFD_CLOEXEC)  # the native engine's frames
    try:
        os.ftruncate(fd, ODD)
        shared = mmap.mmap(fd, ODD, flags=mmap.MAP_SHARED)
        shared[: 1 << 20] = b"\1" * (1 << 20)
        assert _frames(PAGE // 2) == named + (1 << 10)  # found by its name, whatever size
        shared.close()
    finally:
        os.close(fd)
    assert memory_kib(2**22 + 12345, ODD) is None  # no such process


def test_the_object_store_is_its_own_part(tmp_path: Path) -> None:
    # Ray's object store is a named file ("/dev/shm/plasma..."), of the size real memory
    # may have too: it is never taken for the frames.
    before = memory_kib(os.getpid(), ODD)
    assert before is not None
    path = tmp_path / "plasmaXYZ"
    with open(path, "wb") as f:
        f.truncate(ODD)
    with open(path, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), ODD)
        mapped[: 2 << 20] = b"\1" * (2 << 20)
        got = memory_kib(os.getpid(), ODD)
        mapped.close()
    assert got is not None
    assert got["object_store"] - before.get("object_store", 0) == 2 << 10
    assert got.get("frames", 0) == before.get("frames", 0)


def _samples(*rows: tuple[float, float, float | None]) -> list[RssSample]:
    out = []
    for t, rss, frames in rows:
        mib = {"rss": rss, "anon": rss / 2}
        if frames is not None:
            mib.update(frames=frames, object_store=10.0)
        out.append(RssSample(t, int(t), mib))
    return out


def test_a_warm_up_of_frames_is_told_from_a_leak() -> None:
    # The RSS grows 6 MiB in the second half, all of it frames touched for the first time:
    # the rest is flat.
    samples = _samples((0, 100, 0), (60, 180, 70), (120, 200, 90), (180, 203, 93),
                       (240, 206, 96))
    st = steady_state(samples, 120)
    assert st.samples == 3
    assert st.growth_mib["rss"] == pytest.approx(6.0)
    assert st.growth_mib["frames"] == pytest.approx(6.0)
    assert st.growth_mib["object_store"] == 0.0
    assert st.growth_mib["other"] == pytest.approx(0.0)
    assert st.mib_per_min["rss"] == pytest.approx(3.0)
    assert st.mib_per_min["other"] == pytest.approx(0.0)
    # A leak outside the frames shows in the rest.
    leak = steady_state(_samples((120, 200, 90), (180, 210, 90), (240, 220, 90)), 120)
    assert leak.mib_per_min["other"] == pytest.approx(10.0)
    assert leak.growth_mib["frames"] == 0.0


def test_without_the_frames_only_the_whole_is_given() -> None:
    st = steady_state(_samples((0, 100, None), (60, 104, None), (120, 108, None)), 30)
    assert st.growth_mib["rss"] == pytest.approx(4.0)
    assert st.mib_per_min["rss"] == pytest.approx(4.0)
    assert st.growth_mib["frames"] is None and st.mib_per_min["other"] is None
    empty = steady_state(_samples((0, 100, 10)), 30)  # nothing from the half-way point on
    assert empty.samples == 0 and empty.growth_mib["rss"] is None


def test_start_half_way_and_end() -> None:
    samples = _samples((0, 100, 0), (15, 150, 0), (30, 160, 0), (45, 170, 0))
    assert _start_middle_end(samples, 20) == [100, 160, 170]
    assert _start_middle_end(samples, 45) == [100, 170]  # the half-way sample is the last
    assert _start_middle_end([], 20) == []


def test_slope_per_x() -> None:
    assert slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)
    assert slope([(1.0, 1.0), (1.0, 5.0)]) is None
    assert slope([]) is None
