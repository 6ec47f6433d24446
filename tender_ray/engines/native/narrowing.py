"""The narrowing seccomp filter a native guest's host process gets stacked before it runs:
which data-plane calls on which descriptor numbers, with which buffers, go straight to the
host kernel (`direct_files` explains why, `output_pipes` the writes); everything it does not
let pass stops at the tracer.
"""

from __future__ import annotations

import struct
from typing import Final

LIMIT: Final = 64  # descriptors 0..LIMIT-1 can be direct (the stub's filter says so)
SYS_READ: Final = 0
SYS_WRITE: Final = 1
SYS_FSTAT: Final = 5
SYS_LSEEK: Final = 8
SYS_PREAD64: Final = 17
SYS_FADVISE64: Final = 221
PIPE_BUF: Final = 4096  # a pipe write this long or shorter is atomic
STAT_SIZE: Final = 144  # struct stat on x86-64: what fstat writes

# cBPF opcodes and seccomp constants.
_LD_ABS, _LD_IMM, _TAX, _TXA = 0x20, 0x00, 0x07, 0x87
_JEQ, _JGE, _JGT, _JGE_X = 0x15, 0x35, 0x25, 0x3D
_ADD_X, _ADD_K, _SUB_K, _AND_K, _RSH_X = 0x0C, 0x04, 0x14, 0x54, 0x7C
_RET = 0x06
RET_ALLOW: Final = 0x7FFF0000
RET_TRACE: Final = 0x7FF00000
_NR, _ARG = 0, 16  # offsets in struct seccomp_data: nr, args[0] (args[i] at 16 + 8 i)

class _Program:
    """A cBPF program with forward jumps to labels, assembled to struct sock_filter[]."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                off = self.labels[target] - i - 1 if isinstance(target, str) else target
                if not 0 <= off <= 255:
                    raise ValueError(f"filter jump out of range at {i}")
                offsets.append(off)
            out += struct.pack("<HBBI", code, offsets[0], offsets[1], k)
        return bytes(out)


def narrowing_filter(allowed: int, window: tuple[int, int] | None, writes: int = 0) -> bytes:
    """The stacked filter: the data-plane calls pass on descriptor numbers whose bit is set
    in `allowed` and, for those that write guest memory, a buffer inside `window` (bytes
    [lo, hi), within one 4 GiB-aligned block); `write` passes on the numbers of `writes`
    (standard streams held as host pipes, `output_pipes`) with at most PIPE_BUF bytes from
    a buffer inside `window`; anything else it sends to the tracer. Calls it does not judge
    it lets the other filters decide."""
    p = _Program()
    p.op(_LD_ABS, _NR)
    p.op(_JEQ, SYS_READ, "read")
    p.op(_JEQ, SYS_PREAD64, "read")
    p.op(_JEQ, SYS_FSTAT, "fstat")
    p.op(_JEQ, SYS_LSEEK, "plain")
    p.op(_JEQ, SYS_FADVISE64, "plain")
    p.op(_JEQ, SYS_WRITE, "write")
    p.op(_RET, RET_ALLOW)
    for kind in ("read", "fstat", "plain", "write"):
        mask = writes if kind == "write" else allowed
        p.label(kind)
        # The descriptor: the low word (the kernel's unsigned int fd); bit n of the mask.
        p.op(_LD_ABS, _ARG)
        p.op(_JGE, 32, f"{kind}_hi")
        p.op(_TAX)
        p.op(_LD_IMM, mask & 0xFFFFFFFF)
        p.op(_RSH_X)
        p.op(_AND_K, 1)
        p.op(_JEQ, 1, f"{kind}_buf", "trace")
        p.label(f"{kind}_hi")
        p.op(_JGE, LIMIT, "trace")
        p.op(_SUB_K, 32)
        p.op(_TAX)
        p.op(_LD_IMM, (mask >> 32) & 0xFFFFFFFF)
        p.op(_RSH_X)
        p.op(_AND_K, 1)
        p.op(_JEQ, 1, f"{kind}_buf", "trace")
        p.label(f"{kind}_buf")
        if kind == "plain":
            p.op(_RET, RET_ALLOW)
            continue
        if window is None:
            p.op(_RET, RET_TRACE)
            continue
        lo, hi = window
        block = lo >> 32
        p.op(_LD_ABS, _ARG + 8 + 4)  # the buffer's high word: the window's block
        p.op(_JEQ, block, 0, "trace")
        p.op(_LD_ABS, _ARG + 8)
        p.op(_JGE, lo & 0xFFFFFFFF, 0, "trace")
        p.op(_TAX)
        if kind in ("read", "write"):
            # the length: below 2 GiB; a write at most PIPE_BUF, so the host pipe takes it
            # whole or not at all (a blocked one cut off by a signal has written nothing)
            p.op(_LD_ABS, _ARG + 16 + 4)
            p.op(_JEQ, 0, 0, "trace")
            p.op(_LD_ABS, _ARG + 16)
            p.op(_JGT if kind == "write" else _JGE,
                 PIPE_BUF if kind == "write" else 0x8000_0000, "trace")
            p.op(_ADD_X)
        else:
            p.op(_TXA)
            p.op(_ADD_K, STAT_SIZE)
        p.op(_JGE_X, 0, 0, "trace")  # no wrap past the block
        p.op(_JGT, min(hi - (block << 32), 0xFFFFFFFF), "trace")
        p.op(_RET, RET_ALLOW)
    p.label("trace")
    p.op(_RET, RET_TRACE)
    return p.assemble()
