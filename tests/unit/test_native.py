"""The native engine: guests as traced host processes, every system call served by
the machine, memory the machine's shared real memory, one CPU image for both engines.

Skipped as a whole where the engine's start-up self-check fails (no ptrace, not Linux x86-64).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from support.machines import frames_free, run_on_machine, start, wait_finished, wait_until
from support.programs import run_native, workload

from tender_ray import engines as engine
from tender_ray.abi.cpu_state import CpuState, StopKind, SyscallOutcome
from tender_ray.engines.native import check as native_check
from tender_ray.engines.native import engine as native
from tender_ray.engines.native import libc, registers, tracer, vdso
from tender_ray.errors import ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.migration.protocol import migrate_local
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import (
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    VirtualUserSpace,
)

AVAILABLE, WHY = native_check.self_check()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"native engine unavailable: {WHY}")


@pytest.fixture
def native_machine(make_machine: Callable[..., Machine]) -> Machine:
    m = make_machine(engine="native", quantum_us=1000)
    assert m.engine == "native", m.engine_notice
    return m


def host_pid(m: Machine, pid: int) -> int:
    cpu = m.scheduler.table[pid].cpu
    assert isinstance(cpu, native.NativeCpu)
    return cpu.host_pid


# --- engine selection ------------------------------------------------------------------------

def test_resolve_picks_native_here_and_emulated_for_exact_quanta() -> None:
    assert engine.resolve("native") == ("native", "")
    assert engine.resolve("emulated") == ("emulated", "")
    name, notice = engine.resolve("native", exact=True)
    assert name == "emulated" and "exact" in notice
    assert engine.resolve("auto", exact=True) == ("emulated", "")
    assert "native" in engine.ENGINES and "emulated" in engine.ENGINES


def test_machine_with_exact_quanta_uses_the_emulated_cpu(
        make_machine: Callable[..., Machine]) -> None:
    m = make_machine(engine="native", quantum_instructions=100_000)
    assert m.engine == "emulated" and "exact" in m.engine_notice
    assert not m.memory.shared
    status, out, _, _ = run_on_machine(m, workload("hello"))
    assert (status, out) == (0, b"hello, tender\n")


def test_missing_stub_falls_back_with_a_reason(monkeypatch: pytest.MonkeyPatch,
                                               make_machine: Callable[..., Machine]) -> None:
    monkeypatch.setattr(native_check, "_check_result", None)
    monkeypatch.setattr(native_check, "STUB", Path("/nonexistent/tender-stub"))
    ok, why = native_check.self_check()
    assert not ok and "stub" in why
    name, notice = engine.resolve("native")
    assert name == "emulated" and notice.startswith("native engine unavailable")
    assert "stub" in notice
    m = make_machine(engine="native")
    assert m.engine == "emulated" and m.engine_notice == notice
    status, out, _, _ = run_on_machine(m, workload("hello"))
    assert (status, out) == (0, b"hello, tender\n")


def test_a_hanging_self_check_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_check, "_check_result", None)
    monkeypatch.setattr(native_check, "SELF_CHECK_TIMEOUT", 0.3)
    monkeypatch.setattr(native_check, "_probe", lambda: time.sleep(30) or (True, ""))
    start_time = time.monotonic()
    ok, why = native_check.self_check()
    assert not ok and "did not finish" in why
    assert time.monotonic() - start_time < 5


_REFUSE_PTRACE = """
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
# A seccomp filter that makes ptrace fail with EPERM, as a hardened host or container does.
code = b"".join(struct.pack("<HBBI", *insn) for insn in (
    (0x20, 0, 0, 0),            # A = system call number
    (0x15, 0, 1, 101),          # if A == ptrace
    (0x06, 0, 0, 0x00050001),   #   return ERRNO(EPERM)
    (0x06, 0, 0, 0x7FFF0000)))  # return ALLOW
buf = ctypes.create_string_buffer(code, len(code))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(4, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, filter
from tender_ray.config import MachineConfig
from tender_ray.kernel.machine import Machine
m = Machine(MachineConfig(engine="native", memory_mib=16))
pid = m.exec(open(sys.argv[1], "rb").read(), "hello", ["hello"])
info = m.wait(pid, timeout=60)
print(m.engine)
print(m.engine_notice)
print(info.exit_status, bytes(m.take_output(pid)[0]).decode().strip())
m.stop()
"""


def test_a_host_that_refuses_ptrace_falls_back_to_the_emulated_cpu() -> None:
    done = subprocess.run([sys.executable, "-c", _REFUSE_PTRACE, str(workload("hello"))],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    engine_name, notice, result = done.stdout.splitlines()[:3]
    assert engine_name == "emulated"
    assert notice.startswith("native engine unavailable") and "ptrace" in notice
    assert result == "0 hello, tender"


# --- the CPU image ---------------------------------------------------------------------------

def _random_state(rng: random.Random) -> CpuState:
    st = []
    for _ in range(8):
        kind = rng.randrange(4)
        if kind == 0:
            st.append((0, 0))  # zero
        elif kind == 1:
            st.append((rng.getrandbits(63), 0x7FFF))  # special (NaN/inf pattern)
        else:
            st.append((rng.getrandbits(64) | 1 << 63, rng.randrange(1, 0x7FFF) | rng.choice(
                (0, 0x8000))))
    tag = 0
    for p in range(7, -1, -1):
        tag = (tag << 2) | registers._fp_tag(rng.random() < 0.6, *st[p])
    return CpuState(
        gpr=tuple(rng.getrandbits(64) for _ in range(16)), rip=rng.getrandbits(47),
        rflags=0x202 | rng.choice((0, 1, 0x40, 0x801, 0x400)), fs_base=rng.getrandbits(47),
        gs_base=0, mxcsr=rng.choice((0x1F80, 0x9FC0, 0x7F80)),
        fpcw=rng.choice((0x37F, 0x27F, 0xF7F)),
        fpsw=rng.randrange(8) << 11 | rng.choice((0, 0x20, 0x41)), fptag=tag,
        st=tuple(st), xmm=tuple(rng.getrandbits(128) for _ in range(16)))


def test_state_conversion_round_trips() -> None:
    rng = random.Random(6)
    for _ in range(200):
        state = _random_state(rng)
        regs, fp = libc.Regs(), bytearray(512)
        registers.state_to_host(state, regs, fp)
        assert registers.state_from_host(regs, bytes(fp)) == state


def test_fxsave_layout_is_stack_order_relative_to_top() -> None:
    st = tuple((0x8000_0000_0000_0000 | i, 0x3FFF + i) for i in range(8))
    tag = 0xFFFF & ~(0b11 << 2 * 5)  # only physical register 5 is in use
    state = CpuState.initial(0, 0)
    state = CpuState(state.gpr, 0, 0x202, 0, 0, 0x1F80, 0x37F, 5 << 11, tag, st, state.xmm)
    regs, fp = libc.Regs(), bytearray(512)
    registers.state_to_host(state, regs, fp)
    assert struct.unpack_from("<QH", fp, 32) == st[5]  # ST(0) = physical register TOP
    assert struct.unpack_from("<QH", fp, 32 + 16 * 3) == st[0]  # ST(3) = R[(5 + 3) % 8]
    assert fp[4] == 1 << 5  # abridged tag: one bit per physical register


# Part 1 leaves three values on the x87 stack (TOP = 5) and two in SSE registers, then makes a
# system call (where the engines swap); part 2 stores them and the control/status words.
_FP_PART1 = bytes.fromhex(
    "d9ebd9e8d9ea48b8efcdab896745230166480f6ed848b8000000000000f03f664c0f6ec8b8270000000f05")
_FP_PART2 = bytes.fromhex(
    "db3c2500006000db3c2510006000db3c2520006000660fd61c253000600066440fd60c2538006000"
    "dd3c25400060000fae1c2544006000d93c2548006000b83c0000000f05")


class RawGuest:
    """A bare address space (code at 0x400000, data at 0x600000) on one engine."""

    def __init__(self, engine_name: str, code: bytes) -> None:
        self.memory = RealMemory(64 * PAGE_SIZE, shared=True)
        self.space = VirtualSpace(self.memory)
        self.code = self._area(0x400000, PROT_READ | PROT_EXEC, RegionKind.TEXT)
        self.data = self._area(0x600000, PROT_READ | PROT_WRITE, RegionKind.DATA)
        self.memory.frames[self.code, : len(code)] = np.frombuffer(code, np.uint8)
        self.calls: list[int] = []
        self.cpu = engine.create(engine_name, self.memory)
        self.cpu.bind(self.space, self._handler)

    def _area(self, start: int, perms: int, kind: RegionKind) -> int:
        region = VirtualRegion().setup(kind, 1)
        frame = region.populate([0], self.memory)[0]
        self.space.paste(VirtualUserSpace().setup(region, start, perms))
        return frame

    def _handler(self, nr: int, args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        self.calls.append(nr)
        return SyscallOutcome(0, stop=True)

    def run_to_syscall(self) -> None:
        for _ in range(1000):
            stop = self.cpu.run(50_000)
            if stop.kind is StopKind.SYSCALL:
                return
            assert stop.kind is StopKind.QUANTUM, stop
        raise AssertionError("no system call")

    def close(self) -> None:
        self.cpu.close()


@pytest.mark.parametrize(("first", "second"), list(itertools.product(("native", "emulated"),
                                                                       repeat=2)))
def test_fpu_and_sse_state_moves_between_engines(first: str, second: str) -> None:
    code = _FP_PART1 + _FP_PART2
    a, b = RawGuest(first, code), RawGuest(second, code)
    try:
        initial = CpuState.initial(0x400000, 0)
        initial = CpuState(initial.gpr, initial.rip, initial.rflags, 0, 0, 0x9FC0, 0x27F,
                           0, 0xFFFF, initial.st, initial.xmm)
        a.cpu.load(initial)
        a.run_to_syscall()
        state = a.cpu.save()
        assert state.rip == 0x400000 + len(_FP_PART1)
        assert (state.fpsw >> 11) & 7 == 5 and state.fptag == 0x03FF  # R5..R7 valid
        b.cpu.load(state)
        b.run_to_syscall()
        data = b.memory.frames[b.data].tobytes()
        assert struct.unpack_from("<QH", data, 0x00) == (0xB8AA3B295C17F0BC, 0x3FFF)  # log2 e
        assert struct.unpack_from("<QH", data, 0x10) == (0x8000000000000000, 0x3FFF)  # 1
        assert struct.unpack_from("<QH", data, 0x20) == (0xC90FDAA22168C235, 0x4000)  # pi
        assert struct.unpack_from("<QQ", data, 0x30) == (0x0123456789ABCDEF,
                                                          0x3FF0000000000000)
        (fpsw,), (mxcsr,), (fpcw,) = (struct.unpack_from(f, data, o) for f, o in
                                      (("<H", 0x40), ("<I", 0x44), ("<H", 0x48)))
        assert (fpsw >> 11) & 7 == 0 and mxcsr & 0xFFFF == 0x9FC0 and fpcw == 0x27F
    finally:
        a.close()
        b.close()


def test_both_engines_save_the_same_image() -> None:
    states = []
    for name in ("native", "emulated"):
        g = RawGuest(name, _FP_PART1 + _FP_PART2)
        try:
            g.cpu.load(CpuState.initial(0x400000, 0x600800))
            g.run_to_syscall()
            states.append(g.cpu.save())
        finally:
            g.close()
    nat, emu = states
    for field in ("rip", "fs_base", "gs_base", "mxcsr", "fpcw", "fpsw", "fptag", "st", "xmm"):
        assert getattr(nat, field) == getattr(emu, field), field
    # rcx and r11 are what a real `syscall` leaves there (the emulated CPU leaves them alone).
    for i, name in enumerate(("rax", "rbx", "rdx", "rsi", "rdi", "rbp", "rsp")):
        assert nat.reg(name) == emu.reg(name), (i, name)


# --- workloads -------------------------------------------------------------------------------

WORKLOADS = [
    ("hello", []), ("args", ["one", "two words"]), ("exitcode", ["7"]),
    ("rmw_counter", ["300000"]), ("segv", []), ("sigill", []), ("efault", []),
    ("bigmmap", ["8"]), ("deepstack", ["20000"]), ("floats", []), ("timecheck", []),
    ("stdin_eof", []), ("memhold", ["2", "3", "1"]), ("mallocstress", ["3000"]),
    ("sieve", ["300000"]), ("hashwalk", ["2"]), ("recursion_fp", ["3000"]),
    ("compute_sleep", ["3"]),
]


@pytest.mark.parametrize(("name", "args"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_workload_output_is_native(native_machine: Machine, name: str,
                                   args: list[str]) -> None:
    env = {"TENDER_TEST": "native engine"} if name == "args" else None
    expected = run_native(workload(name), args, env)
    status, out, err, info = run_on_machine(native_machine, workload(name), args, env)
    assert (status, out, err) == expected, info.exit_reason
    assert frames_free(native_machine)


def test_faults_end_the_process_with_the_signal(native_machine: Machine) -> None:
    status, _, _, info = run_on_machine(native_machine, workload("segv"))
    assert status == 139 and "0x0" in info.exit_reason
    status, _, _, info = run_on_machine(native_machine, workload("sigill"))
    assert status == 132 and "invalid instruction" in info.exit_reason


# Quanta under a kernel tick end by the machine's timer thread (a signal through a pidfd),
# longer ones by the guest's own ITIMER_PROF: both paths are tried.
@pytest.mark.parametrize("quantum_us", [200, 5000])
def test_time_slicing_several_processes_on_one_computation(
        make_machine: Callable[..., Machine], quantum_us: int) -> None:
    # Fixed slices: each path is tried at its own length, and the count of quanta says so.
    m = make_machine(engine="native", quantum_us=quantum_us, quantum_growth=1, computations=1)
    scale = 1 if quantum_us < 1000 else 10
    jobs = [("rmw_counter", [str(2000000 * scale)]), ("hashwalk", ["3"]),
            ("rmw_counter", [str(1500000 * scale)]), ("sieve", [str(2000000 * scale)])]
    pids = [start(m, name, *args) for name, args in jobs]
    for pid, (name, args) in zip(pids, jobs, strict=True):
        wait_finished(m, pid)
        info, out, err = m.reap(pid)
        assert (info.exit_status, out, err) == run_native(workload(name), args), name
    assert m.statistics().computations[0].quanta > 4 * len(jobs)
    assert frames_free(m)


@pytest.mark.parametrize(("quantum_us", "count"), [(100, "50000000"), (4000, "150000000")])
def test_read_modify_write_is_exact_under_many_preemptions(
        make_machine: Callable[..., Machine], quantum_us: int, count: str) -> None:
    m = make_machine(engine="native", quantum_us=quantum_us, quantum_growth=1)
    expected = run_native(workload("rmw_counter"), [count])
    status, out, err, _ = run_on_machine(m, workload("rmw_counter"), [count])
    assert (status, out, err) == expected and b"ok" in out
    assert m.statistics().computations[0].quanta > 20


def test_two_computations_run_two_guests_at_once(make_machine: Callable[..., Machine]) -> None:
    m = make_machine(engine="native", quantum_us=2000, computations=2, memory_mib=128)
    pids = [start(m, "rmw_counter", "30000000") for _ in range(2)]
    both = False
    deadline = time.monotonic() + 60
    while not both and time.monotonic() < deadline:
        running = [c.pid for c in m.statistics().computations]
        both = sorted(p for p in running if p is not None) == sorted(pids)
        time.sleep(0.002)
    assert both, "the two processes never held both computations at once"
    for pid in pids:
        wait_finished(m, pid)
        info, out, _ = m.reap(pid)
        assert info.exit_status == 0 and b"ok" in out
    assert frames_free(m)


# --- the sandbox: denied calls never reach the host ------------------------------------------

def _lines(out: bytes) -> dict[str, tuple[int, int]]:
    """`what: result errno=N` lines as {what: (result, errno)}."""
    found = {}
    for line in out.decode().splitlines():
        if ": " in line and "errno=" in line:
            what, rest = line.split(": ", 1)
            result, err = rest.split(" errno=")
            found[what] = (int(result), int(err))
    return found


def test_denied_file_calls_touch_no_file(native_machine: Machine, tmp_path: Path) -> None:
    """Outside the writable directories nothing is created, removed or changed; the host's
    files are reached only through the machine's file view (read-only here), and fd 3 is the
    guest's own descriptor, never the host process's memory file."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    victim.chmod(0o644)
    status, out, _, info = run_on_machine(native_machine, workload("deny_files"),
                                          [str(tmp_path)])
    assert status == 0 and out.endswith(b"done\n"), info.exit_reason
    results = _lines(out)
    assert len(results) == 17
    readable = {"open(/etc/passwd)", "read(3)", "dup(3)"}  # fd 3 is /etc/passwd, read-only
    assert all(results[k][0] >= 0 for k in readable), results
    refused = {k: v for k, v in results.items() if k not in readable}
    assert all(r == -1 for r, _ in refused.values()), results
    # Paths outside the writable directories: read-only (EROFS), or calls not served.
    assert results["open(O_CREAT)"][1] == 30 and results["openat(O_CREAT)"][1] == 30
    assert results["open(x32 ABI)"][1] == 38  # another ABI never reaches the machine
    assert results["write(3)"][1] == 9 and results["pwrite64(3)"][1] == 9  # opened O_RDONLY
    assert results["mmap(fd 3, MAP_SHARED)"][1] == 13  # a writable share of a read-only fd
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
    assert victim.read_text() == "keep me" and victim.stat().st_mode & 0o777 == 0o644
    # The memory file (fd 3 in the host process) is intact: the machine still works.
    status, out, _, _ = run_on_machine(native_machine, workload("sieve"), ["100000"])
    assert (status, out) == run_native(workload("sieve"), ["100000"])[:2]
    assert frames_free(native_machine)


def test_denied_network_calls_open_no_connection(native_machine: Machine) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        status, out, _, info = run_on_machine(native_machine, workload("deny_net"), [str(port)])
        assert status == 0 and out.endswith(b"done\n"), info.exit_reason
        answers = _lines(out)
        # A socket pair is the process's own (kernel/syscalls/sockets.py): made, and nothing
        # outside sees it; sendto on a descriptor that is no socket is ENOTSOCK, as on Linux.
        assert answers.pop("socketpair") == (0, 0)
        assert answers.pop("sendto") == (-1, 88)
        assert all(r == -1 and e == 38 for r, e in answers.values())
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
        udp.settimeout(0.2)
        with pytest.raises(TimeoutError):
            udp.recv(16)


def test_denied_process_calls_make_no_process_and_signal_no_one(
        native_machine: Machine) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        path = workload("deny_procs")
        pid = native_machine.exec(path.read_bytes(), "deny_procs",
                                  [str(path), str(victim.pid), "400"])
        # While it sleeps after its attempts, its host process has no children.
        wait_until(lambda: native_machine.info(pid).state in ("sleeping", "zombie"),
                   interval=0.005)
        host = host_pid(native_machine, pid)
        if host:
            children = Path(f"/proc/{host}/task/{host}/children").read_text().split()
            assert children == []
            assert os.readlink(f"/proc/{host}/exe") == str(tracer.STUB)  # not /bin/sh
        wait_finished(native_machine, pid)
        info, out, _ = native_machine.reap(pid)
        # It ended as the program it exec'd last (the machine's execve, not the host's).
        assert info.exit_status == 7 and out.endswith(b"done\n"), info.exit_reason
        results = _lines(out)
        # fork and clone made Tender processes on the machine, not host ones (the host
        # process has no child); every other call was refused.
        assert results.pop("fork")[0] > 0 and results.pop("clone")[0] > 0
        assert len(results) == 9 and all(r == -1 for r, _ in results.values()), results
        assert victim.poll() is None  # never signalled
    finally:
        victim.kill()
        victim.wait()
    assert frames_free(native_machine)


def test_the_32_bit_system_call_abi_kills_the_process(native_machine: Machine,
                                                      tmp_path: Path) -> None:
    target = tmp_path / "made-by-int80"
    status, out, _, info = run_on_machine(native_machine, workload("deny_int80"), [str(target)])
    assert status == 128 + 31 and out == b"before\n"
    assert "sandbox" in info.exit_reason
    assert not target.exists()
    assert frames_free(native_machine)
    assert run_on_machine(native_machine, workload("hello"))[0] == 0


# --- bad ends --------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("when", ["running", "sleeping"])
def test_guest_killed_from_outside_ends_with_a_reason(native_machine: Machine,
                                                      sig: signal.Signals, when: str) -> None:
    # Each runs far longer than any host takes to get to the kill (which ends it).
    name, args = ("rmw_counter", ["4000000000"]) if when == "running" else (
        "memhold", ["1", "1000", "20"])
    pid = start(native_machine, name, *args)
    if when == "running":
        wait_until(lambda: native_machine.info(pid).cpu_seconds > 0
                   or native_machine.info(pid).resident_pages > 0, interval=0.005)
        time.sleep(0.05)
    else:
        wait_until(lambda: native_machine.info(pid).state == "sleeping", interval=0.005)
    host = host_pid(native_machine, pid)
    assert host > 0
    os.kill(host, sig)
    info = wait_finished(native_machine, pid)
    assert info.exit_status == 128 + sig
    assert f"signal {int(sig)}" in info.exit_reason and str(host) in info.exit_reason
    native_machine.reap(pid)
    assert frames_free(native_machine)
    status, out, _, _ = run_on_machine(native_machine, workload("hello"))
    assert (status, out) == (0, b"hello, tender\n")


def test_harmless_signals_from_outside_are_ignored(native_machine: Machine) -> None:
    pid = start(native_machine, "rmw_counter", "20000000")
    wait_until(lambda: host_pid(native_machine, pid) > 0
               and native_machine.info(pid).resident_pages > 0, interval=0.005)
    for sig in (signal.SIGCHLD, signal.SIGWINCH, signal.SIGCONT, signal.SIGSTOP):
        host = host_pid(native_machine, pid)
        if host:
            os.kill(host, sig)
        time.sleep(0.01)
    info = wait_finished(native_machine, pid)
    _, out, _ = native_machine.reap(pid)
    assert info.exit_status == 0 and b"ok" in out


def test_killed_machine_process_frees_its_host_process(native_machine: Machine) -> None:
    pid = start(native_machine, "memhold", "1", "1000", "20")
    wait_until(lambda: native_machine.info(pid).state == "sleeping", interval=0.005)
    host = host_pid(native_machine, pid)
    native_machine.kill(pid)
    wait_finished(native_machine, pid)
    native_machine.reap(pid)
    wait_until(lambda: not Path(f"/proc/{host}").exists(), interval=0.005)
    assert frames_free(native_machine)


# --- memory ----------------------------------------------------------------------------------

def _elf(code: bytes) -> bytes:
    """A minimal static x86-64 executable: one read+execute segment at 0x400000."""
    entry = 0x400000 + 120
    header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1,
                         entry, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    size = 120 + len(code)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, size, size, 0x1000)
    return header + segment + code


# mmap(0x100000, 4096, RW, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS) over the stub's trampoline
# page; movq $77 there; nanosleep({0, 1 ms}) so the tracer works again; exit(*0x100000).
_MAP_OVER_TRAMPOLINE = bytes.fromhex(
    "b809000000bf00001000be00100000ba0300000041ba3200000049c7c0ffffffff4531c90f05"
    "48c70425000010004d000000"
    "6840420f006a004889e731f6b8230000000f05"
    "488b3c2500001000b83c0000000f05")


@pytest.mark.parametrize("engine_name", ["native", "emulated"])
def test_a_process_may_map_over_the_trampoline(make_machine: Callable[..., Machine],
                                               engine_name: str) -> None:
    m = make_machine(engine=engine_name)
    pid = m.exec(_elf(_MAP_OVER_TRAMPOLINE), "trampoline", ["trampoline"])
    info = wait_finished(m, pid)
    assert info.exit_status == 77, info.exit_reason
    assert info.syscalls.get("nanosleep") == 1
    m.reap(pid)
    assert frames_free(m)


def test_guest_memory_is_the_machines_memory(native_machine: Machine) -> None:
    pid = start(native_machine, "memhold", "4", "1000", "20")
    wait_until(lambda: native_machine.info(pid).state == "sleeping", interval=0.005)
    p = native_machine.scheduler.table[pid]
    assert p.space is not None
    us = max((u for u in p.space.user_spaces if u.perms & PROT_WRITE and u.region is not None),
             key=lambda u: u.region.resident() if u.region is not None else 0)
    assert us.region is not None
    index = us.region.present()[-1]
    address, frame = us.start + index * PAGE_SIZE, us.region.frames[index]
    host = host_pid(native_machine, pid)
    with open(f"/proc/{host}/mem", "rb") as mem:
        mem.seek(address)
        assert mem.read(PAGE_SIZE) == native_machine.memory.frames[frame].tobytes()
        # A change to the machine's frame is the process's memory changing: no copy between.
        native_machine.memory.frames[frame, :8] = np.frombuffer(b"TENDER!!", np.uint8)
        mem.seek(address)
        assert mem.read(8) == b"TENDER!!"
    maps = Path(f"/proc/{host}/maps").read_text()
    assert "memfd:tender-real-memory" in maps
    assert "[stack]" not in maps
    # The host's vDSO only where every guest host process has it (the guest's own vDSO calls
    # into it), never where the stub had it.
    for line in maps.splitlines():
        if line.endswith(("[vdso]", "[vvar]", "[vvar_vclock]")):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            assert vdso.HOST_VDSO_BASE <= lo < hi <= vdso.HOST_VDSO_END, line
    native_machine.kill(pid)
    wait_finished(native_machine, pid)
    native_machine.reap(pid)
    assert frames_free(native_machine)


# --- migration between engines ---------------------------------------------------------------

@pytest.fixture
def two_engines(make_machine: Callable[..., Machine]) -> Iterator[tuple[Machine, Machine]]:
    a = make_machine(name="nat", engine="native", quantum_us=5000, memory_mib=128)
    b = make_machine(name="emu", engine="emulated", quantum_us=1000, memory_mib=128)
    assert (a.engine, b.engine) == ("native", "emulated")
    yield a, b


@pytest.mark.parametrize(("name", "args"), [("recursion_fp", ["8000"]), ("floats", []),
                                            ("hashwalk", ["8"])])
def test_migration_native_emulated_native_keeps_native_output(
        two_engines: tuple[Machine, Machine], name: str, args: list[str]) -> None:
    a, b = two_engines
    # How many moves land before the program ends depends on the host's speed: a run that
    # ended before its first move proves nothing about migration and is run again (a few
    # times at most); every run's output must be native's.
    for _ in range(5):
        pid = start(a, name, *args)
        where, other = a, b
        moves = 0
        while moves < 40:
            time.sleep(0.005 if where is a else 0.05)  # native runs fast: short legs there
            try:
                migrate_local(where, pid, other)
            except ProcessStateError:
                break  # it finished
            moves += 1
            where, other = other, where
        info = wait_finished(where, pid)
        info, out, err = where.reap(pid)
        assert (info.exit_status, out, err) == run_native(workload(name), args), (
            info.exit_reason)
        assert frames_free(a) and frames_free(b)
        if moves or name == "floats":  # floats is over in a few milliseconds
            break
    else:
        pytest.fail(f"{name} ended before its first move in each of 5 runs")
