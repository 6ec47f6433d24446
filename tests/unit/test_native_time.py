"""Time at native speed: a process started on a native machine reads the clocks through a vDSO
of Tender's own, answered by the host's vDSO without a stop while it runs on a native engine
and by the machine's system calls anywhere else. The answers agree with the mediated ones and
never go backwards, across migrations between machines and engines."""

from __future__ import annotations

import ctypes
import io
import mmap
import time
from collections.abc import Callable

import numpy as np
import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from support.machines import start, wait_finished, wait_ready

from tender_ray.abi.linux import Signal
from tender_ray.engines.native import check as native_check
from tender_ray.engines.native import vdso
from tender_ray.errors import ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.migration.protocol import migrate_local

AVAILABLE, WHY = native_check.self_check()
READY = b"clockwalk: ready\n"
AGREED = (b"monotonic backwards: 0\nfast and system call disagree: 0\n"
          b"process cpu time backwards: 0\n")


def test_the_vdso_image_is_a_loadable_shared_object_with_the_clock_functions() -> None:
    elf = ELFFile(io.BytesIO(vdso.image()))
    assert elf["e_type"] == "ET_DYN"
    dynsym = elf.get_section_by_name(".dynsym")
    assert isinstance(dynsym, SymbolTableSection)
    names = {s.name for s in dynsym.iter_symbols()}
    assert {"__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time",
            "__vdso_getcpu"} <= names
    versions = elf.get_section_by_name(".gnu.version_d")
    assert versions is not None and any(
        aux.name == "LINUX_2.6" for _, auxes in versions.iter_versions() for aux in auxes)
    assert elf.get_section_by_name(".hash") is not None  # musl reads only the SysV table
    assert not any(s.name.startswith(".rela") for s in elf.iter_sections())
    segments = {seg["p_type"]: seg for seg in elf.iter_segments()}
    assert not segments["PT_DYNAMIC"]["p_flags"] & P_FLAGS.PF_W  # a loader never writes it
    loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
    assert len(loads) == 1 and loads[0]["p_memsz"] <= vdso.VDSO_PAGES * 4096


def test_a_fresh_time_page_sends_every_call_to_the_machine() -> None:
    page = vdso.time_page()
    assert page[:32] == bytes(32) and page[vdso.MAGIC_AT:].startswith(vdso.MAGIC)
    address, areas = vdso.areas()
    assert address == vdso.VDSO_ADDRESS
    assert [a for a, _, _ in areas] == [vdso.TIME_PAGE, vdso.VDSO_ADDRESS]


def _wait_ready(machine: Machine, pid: int) -> bytes:
    return wait_ready(machine, pid, timeout=120, line=READY)


def _finish(machine: Machine, pid: int, taken: bytes) -> tuple[int | None, bytes]:
    machine.kill(pid, int(Signal.SIGUSR1))
    info = wait_finished(machine, pid)
    info, out, _ = machine.reap(pid)
    return info.exit_status, taken + out


needs_native = pytest.mark.skipif(not AVAILABLE, reason=f"native engine unavailable: {WHY}")


@needs_native
def test_clock_reads_agree_with_the_system_call_and_use_the_host_vdso(
        make_machine: Callable[..., Machine]) -> None:
    m = make_machine(name="clock", engine="native")
    pid = start(m, "clockwalk", "probe")
    taken = _wait_ready(m, pid)
    status, out = _finish(m, pid, taken)
    assert status == 0
    assert out == READY + AGREED + b"vdso: yes, host function at the last check: yes\n"


@needs_native
def test_a_guest_mapping_over_the_host_vdso_turns_clock_reads_into_system_calls(
        make_machine: Callable[..., Machine]) -> None:
    """Where the engine keeps the host's vDSO is free for the guest to map: then its clock
    reads go to the machine (still right), never into what it mapped there."""
    m = make_machine(name="cover", engine="native")
    pid = start(m, "clockwalk", "cover")
    taken = _wait_ready(m, pid)
    status, out = _finish(m, pid, taken)
    assert (status, out) == (0, READY + AGREED
                             + b"vdso: yes, host function at the last check: no\n")


@needs_native
def test_an_emulated_machine_gives_no_vdso(make_machine: Callable[..., Machine]) -> None:
    m = make_machine(name="emu-clock", engine="emulated")
    pid = start(m, "clockwalk", "probe")
    taken = _wait_ready(m, pid)
    status, out = _finish(m, pid, taken)
    assert (status, out) == (0, READY + AGREED
                             + b"vdso: no, host function at the last check: no\n")


@needs_native
def test_clock_is_monotonic_and_agrees_across_migrations_and_engines(
        make_machine: Callable[..., Machine]) -> None:
    """Native -> native -> emulated -> native: in every leg the library's reads bracket the
    system call's and never go backwards; on the emulated CPU the vDSO makes the system call
    (the page was cleared at the stop), back on a native machine it calls the host's again."""
    a = make_machine(name="nat-a", engine="native", quantum_us=5000, memory_mib=128)
    c = make_machine(name="nat-c", engine="native", quantum_us=5000, memory_mib=128,
                     pid_base=5000)
    b = make_machine(name="emu-b", engine="emulated", quantum_us=1000, memory_mib=128,
                     pid_base=9000)
    pid = start(a, "clockwalk", "probe")
    taken = _wait_ready(a, pid)
    where = a
    for there in (c, b, a, c, a):
        try:
            migrate_local(where, pid, there)
        except ProcessStateError as exc:  # it cannot end before it is told: a real failure
            pytest.fail(f"migration {where.name} -> {there.name} failed: {exc}")
        where = there
        # It runs on at the destination: its monotonic reads continue from where they were.
        before = where.info(pid).cpu_seconds
        deadline = time.monotonic() + 60
        while where.info(pid).cpu_seconds <= before and time.monotonic() < deadline:
            time.sleep(0.005)
    status, out = _finish(where, pid, taken)
    assert status == 0
    assert out == READY + AGREED + b"vdso: yes, host function at the last check: yes\n"


class _LoadedVdso:
    """The vDSO image and a time page mapped in this process, its functions callable: the
    vDSO's own code run against the host's vDSO, without a guest around it."""

    def __init__(self) -> None:
        image = vdso.image()
        self.map = mmap.mmap(-1, 2 * 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE
                             | mmap.PROT_EXEC)
        self.map[4096:4096 + len(image)] = image
        self.map[:4096] = vdso.time_page()
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        elf = ELFFile(io.BytesIO(image))
        dynsym = elf.get_section_by_name(".dynsym")
        assert isinstance(dynsym, SymbolTableSection)
        self.symbols = {s.name: int(s["st_value"]) for s in dynsym.iter_symbols()}
        self.clock_gettime = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)(
            self._at("__vdso_clock_gettime"))

    def _at(self, name: str) -> int:
        return self.base + 4096 + self.symbols[name]

    def point_at_host(self, offset_ns: int) -> None:
        """Fill the time page as the engine does, for this process's own host vDSO."""
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        host = int(libc.getauxval(vdso.AT_SYSINFO_EHDR))
        offsets = vdso.host_offsets()
        assert host and offsets is not None
        page = np.frombuffer(self.map, np.uint8, 4096)
        assert vdso.fill_page(page, host, offset_ns)

    def read(self, clock: int) -> int:
        ts = (ctypes.c_int64 * 2)()
        assert self.clock_gettime(clock, ctypes.addressof(ts)) == 0
        assert 0 <= ts[1] < 1_000_000_000
        return ts[0] * 1_000_000_000 + ts[1]


@pytest.mark.parametrize("offset_ns", [0, 5_000_000_123, -3_999_999_999, 987_654_321])
def test_the_vdso_code_adds_the_monotonic_offset_and_keeps_realtime_true(
        offset_ns: int) -> None:
    loaded = _LoadedVdso()
    # Without a host function every call is the system call (here: this host's kernel).
    a = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    b = loaded.read(time.CLOCK_MONOTONIC)
    assert a <= b <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    loaded.point_at_host(offset_ns)
    for clock, source, shift in [
            (time.CLOCK_MONOTONIC, time.CLOCK_MONOTONIC, offset_ns),
            (time.CLOCK_BOOTTIME, time.CLOCK_MONOTONIC, offset_ns),  # as the machine does
            (time.CLOCK_MONOTONIC_RAW, time.CLOCK_MONOTONIC, offset_ns),
            (time.CLOCK_REALTIME, time.CLOCK_REALTIME, 0)]:
        before = time.clock_gettime_ns(source) + shift
        got = loaded.read(clock)
        after = time.clock_gettime_ns(source) + shift
        assert before <= got <= after, (clock, before, got, after)
    # CPU time is always the system call: this process's own.
    cpu = loaded.read(time.CLOCK_PROCESS_CPUTIME_ID)
    assert 0 < cpu <= time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)
