"""A guest's registers between the engine-neutral `CpuState` and the kernel's forms of them:
the user_regs_struct of PTRACE_GETREGS and the XSAVE area of PTRACE_GETREGSET (NT_X86_XSTATE):
its legacy FXSAVE part field by field, the rest (AVX, AVX-512) as bytes.

Converting the legacy part through `CpuState` is what lets a process move between hosts and
between engines mid-run; the rest moves only to a host of the same XSAVE layout.
"""

from __future__ import annotations

import struct
from typing import Final

from tender_ray.abi.cpu_state import GPR_NAMES, CpuState
from tender_ray.engines.native.libc import Regs
from tender_ray.errors import EngineError

MASK64: Final = (1 << 64) - 1

# The EFLAGS bits a process owns (the rest are the kernel's).
_USER_FLAGS: Final = 0x40CD5  # CF PF AF ZF SF DF OF AC
_ALWAYS_FLAGS: Final = 0x202  # reserved bit 1 and IF
_XSTATE_BV: Final = 512  # the XSAVE header's bitmap of the components in use
_X87_SSE: Final = 0b11  # its bits for the legacy part


def signed(value: int) -> int:
    """A 64-bit register value as the signed number a system call returns."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _fp_tag(present: bool, mantissa: int, exponent: int) -> int:
    """A full x87 tag (as Unicorn reports it): 0 valid, 1 zero, 2 special, 3 empty."""
    if not present:
        return 3
    exp = exponent & 0x7FFF
    if exp == 0 and mantissa == 0:
        return 1
    if exp == 0 or exp == 0x7FFF or not mantissa >> 63:
        return 2
    return 0


def state_from_host(regs: Regs, fp: bytes) -> CpuState:
    """The engine-neutral CpuState of a host thread's registers and XSAVE area (its first
    512 bytes, the FXSAVE area, alone will do: then nothing beyond them is kept).

    FXSAVE keeps ST(i) in stack order (relative to TOP, bits 11-13 of the status word) and an
    abridged tag (one bit per physical register); CpuState keeps physical registers and the
    full tag word.
    """
    fpcw, fpsw, abridged = struct.unpack_from("<HHB", fp, 0)
    (mxcsr,) = struct.unpack_from("<I", fp, 24)
    top = (fpsw >> 11) & 7
    stack = [struct.unpack_from("<QH", fp, 32 + 16 * i) for i in range(8)]
    st = [stack[(p - top) & 7] for p in range(8)]
    tag = 0
    for p in range(7, -1, -1):
        tag = (tag << 2) | _fp_tag(bool(abridged >> p & 1), st[p][0], st[p][1])
    xmm = tuple(int.from_bytes(fp[160 + 16 * i: 176 + 16 * i], "little") for i in range(16))
    return CpuState(
        gpr=tuple(int(getattr(regs, name)) for name in GPR_NAMES), rip=int(regs.rip),
        rflags=(int(regs.eflags) & _USER_FLAGS) | _ALWAYS_FLAGS, fs_base=int(regs.fs_base),
        gs_base=int(regs.gs_base), mxcsr=mxcsr, fpcw=fpcw, fpsw=fpsw, fptag=tag,
        st=tuple((int(m), int(e)) for m, e in st), xmm=xmm, extended=_extended(fp))


def _extended(fp: bytes) -> bytes:
    """The XSAVE area beyond FXSAVE when a component there is in use (else nothing)."""
    if len(fp) <= _XSTATE_BV + 8:
        return b""
    (in_use,) = struct.unpack_from("<Q", fp, _XSTATE_BV)
    return bytes(fp[512:]) if in_use & ~_X87_SSE else b""


def state_to_host(state: CpuState, regs: Regs, fp: bytearray, size: int = 512) -> None:
    """Write a CpuState into a host thread's registers and XSAVE area of `size` bytes (both
    updated in place; segment selectors, the MXCSR mask and the FXSAVE bytes Linux keeps for
    itself stay the host's). EngineError if the state's extended part is of another layout."""
    for name, value in zip(GPR_NAMES, state.gpr, strict=True):
        setattr(regs, name, value & MASK64)
    regs.rip = state.rip & MASK64
    regs.eflags = (state.rflags & _USER_FLAGS) | _ALWAYS_FLAGS
    regs.fs_base = state.fs_base & MASK64
    regs.gs_base = state.gs_base & MASK64
    regs.orig_rax = MASK64  # not in a system call: nothing to restart
    top = (state.fpsw >> 11) & 7
    abridged = sum(1 << p for p in range(8) if (state.fptag >> 2 * p) & 3 != 3)
    struct.pack_into("<HHBxHQQI", fp, 0, state.fpcw & 0xFFFF, state.fpsw & 0xFFFF, abridged,
                     0, 0, 0, state.mxcsr & 0xFFFF_FFFF)
    for i in range(8):
        mantissa, exponent = state.st[(top + i) & 7]
        struct.pack_into("<QH6x", fp, 32 + 16 * i, mantissa & MASK64, exponent & 0xFFFF)
    for i, value in enumerate(state.xmm):
        fp[160 + 16 * i: 176 + 16 * i] = (value & ((1 << 128) - 1)).to_bytes(16, "little")
    if size <= 512:
        return
    if state.extended:
        if len(state.extended) != size - 512:
            raise EngineError(
                f"the process's extended CPU state is {len(state.extended) + 512} bytes of "
                f"XSAVE area and this host's is {size}: it was saved on a CPU of another "
                "kind; run it on a machine of the kind it started on")
        fp[512:size] = state.extended
    else:  # nothing beyond SSE in use: AVX and the rest start in their initial state
        fp[512:size] = bytes(size - 512)
    (in_use,) = struct.unpack_from("<Q", fp, _XSTATE_BV)
    struct.pack_into("<Q", fp, _XSTATE_BV, in_use | _X87_SSE)  # the legacy part is given
