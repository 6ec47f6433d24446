"""The engine-neutral processor state of an x86-64 Linux process, and the words an engine and
its kernel exchange: why a run stopped, and what a system call's handler answered.

Both engines load and save `CpuState`, so a process image moves between them and between
machines; nothing here knows how an engine runs instructions.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

LINUX_FPCW = 0x37F  # the x87 control word Linux gives a new process
LINUX_MXCSR = 0x1F80  # the SSE control/status Linux gives a new process


@dataclass(frozen=True)
class CpuState:
    """Everything of a CPU a process needs to continue elsewhere, independent of the engine.

    `st` holds the x87 data registers as (64-bit mantissa, 16-bit sign+exponent) in physical
    register order; `xmm` the sixteen 128-bit SSE registers. `extended` is the rest of the
    XSAVE area as the native engine's host saved it (AVX upper halves, AVX-512 registers and
    masks; Linux's NT_X86_XSTATE layout from byte 512): empty when no such component is in
    use. Only a host with the same XSAVE layout restores it, which the CPU features a process
    records ensure (`engines.features`); the emulated CPU has none of those registers.
    """

    gpr: tuple[int, ...]
    rip: int
    rflags: int
    fs_base: int
    gs_base: int
    mxcsr: int
    fpcw: int
    fpsw: int
    fptag: int
    st: tuple[tuple[int, int], ...]
    xmm: tuple[int, ...]
    extended: bytes = b""

    @classmethod
    def initial(cls, entry: int, stack_pointer: int) -> CpuState:
        return cls(gpr=tuple(stack_pointer if n == "rsp" else 0 for n in GPR_NAMES), rip=entry,
                   rflags=0x202, fs_base=0, gs_base=0, mxcsr=LINUX_MXCSR, fpcw=LINUX_FPCW,
                   fpsw=0, fptag=0xFFFF, st=((0, 0),) * 8, xmm=(0,) * 16)

    def reg(self, name: str) -> int:
        return self.gpr[GPR_NAMES.index(name)]

    def with_regs(self, **values: int) -> CpuState:
        """A copy with some general registers (by name) and/or `rip`, `rflags` changed."""
        rip = values.pop("rip", self.rip)
        rflags = values.pop("rflags", self.rflags)
        unknown = set(values) - set(GPR_NAMES)
        if unknown:
            raise ValueError(f"no such register: {', '.join(sorted(unknown))}")
        gpr = tuple(values.get(n, v) for n, v in zip(GPR_NAMES, self.gpr, strict=True))
        return dataclasses.replace(self, gpr=gpr, rip=rip, rflags=rflags)


class StopKind(str, enum.Enum):
    QUANTUM = "quantum"  # the quantum ran out; the process is runnable
    SYSCALL = "syscall"  # the system call handler asked to stop (block, exit, map change)
    FAULT = "fault"  # the guest faulted; `signal` says how it dies


@dataclass(frozen=True)
class Stop:
    """Why an engine's `run` returned."""

    kind: StopKind
    signal: int = 0
    address: int = 0
    detail: str = ""
    # A fault the CPU raised: its si_code (SEGV_MAPERR, FPE_INTDIV, SI_KERNEL...), so the
    # kernel can hand it to the process's handler. 0: the process was killed, lost its host
    # process or its engine broke; it cannot go on.
    code: int = 0


@dataclass(frozen=True)
class SyscallOutcome:
    """What the handler did with a system call: the value for rax (None: leave it), and
    whether the CPU must stop after it."""

    result: int | None
    stop: bool = False


SyscallArgs = tuple[int, int, int, int, int, int]
RegisterEdit = Callable[[CpuState], CpuState]  # a change the kernel makes between two runs
SyscallHandler = Callable[[int, SyscallArgs], SyscallOutcome]
