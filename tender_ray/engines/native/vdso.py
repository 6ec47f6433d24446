"""Time at native speed: the vDSO a Tender process sees, and the time page behind it.

A process started on a native machine gets, at fixed addresses that are part of its image, a
time page and then `tender-vdso.so` (built from `_stub/vdso.S`; AT_SYSINFO_EHDR points at
it). Its `clock_gettime`, `gettimeofday` and `time` read the time page: while the process
runs on a native engine, the page holds the addresses of the host vDSO's own functions —
mapped by the tracer at `HOST_VDSO_BASE` in every guest host process (ARCH_MAP_VDSO_64), so
not part of the image — and the call is answered without a stop, the process's monotonic
offset added. At every stop the engine clears them, so wherever the image goes next (another
machine, the emulated CPU, a checkpoint) the same code makes the system call until an engine
that has a host vDSO fills them in again. CPU-time clocks and `getcpu` always make the call.

C libraries cache pointers into a vDSO (musl and glibc both): this one is at the same address
after every migration because it is part of the process's memory, not the host's.
"""

from __future__ import annotations

import ctypes
import functools
import io
import struct
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from tender_ray.abi.linux import PROT_EXEC, PROT_READ
from tender_ray.resources.real_memory import PAGE_SIZE
from tender_ray.resources.virtual_space import BadAddress, VirtualSpace

IMAGE_PATH: Final = Path(__file__).resolve().parent / "_stub" / "tender-vdso.so"
# In the gap between the mmap area and the stack (the kernel hands out mmap addresses only
# below its MMAP_TOP, 0x7fffbf7ff000): the time page, then the vDSO's one page.
TIME_PAGE: Final = 0x7FFF_BF80_0000
VDSO_ADDRESS: Final = TIME_PAGE + PAGE_SIZE
VDSO_PAGES: Final = 1
# Where the host's own vDSO (and its data pages) sits in every guest host process: below the
# stub's trampoline page at 0x100000, where programs do not map.
HOST_VDSO_BASE: Final = 0xF0000
HOST_VDSO_END: Final = 0x100000
# The time page's words.
HOST_CLOCK_GETTIME, HOST_GETTIMEOFDAY, HOST_TIME, MONOTONIC_OFFSET = 0, 8, 16, 24
MAGIC_AT: Final = 56
MAGIC: Final = b"TNDRTIME"
SYS_ARCH_PRCTL: Final = 158
ARCH_MAP_VDSO_64: Final = 0x2003  # arch_prctl: map the vDSO at this address
AT_SYSINFO_EHDR: Final = 33
_HOST_FUNCTIONS: Final = ("__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time")


@functools.cache
def image() -> bytes:
    """The vDSO's bytes (one page at most), as mapped at VDSO_ADDRESS."""
    try:
        data = IMAGE_PATH.read_bytes()
    except OSError as exc:
        raise ValueError(f"the native engine's vDSO {IMAGE_PATH} cannot be read "
                         f"({exc.strerror}): rebuild it with `make stub`") from None
    if len(data) > VDSO_PAGES * PAGE_SIZE or data[:4] != b"\x7fELF":
        raise ValueError(f"{IMAGE_PATH} is not a vDSO of at most {VDSO_PAGES} page: "
                         "rebuild it with `make stub`")
    return data


def time_page() -> bytes:
    """A fresh time page: no host functions (every call is a system call), offset 0."""
    page = bytearray(PAGE_SIZE)
    page[MAGIC_AT: MAGIC_AT + len(MAGIC)] = MAGIC
    return bytes(page)


def areas() -> tuple[int, list[tuple[int, bytes, int]]]:
    """What a new process maps (`engines.vdso_areas`): AT_SYSINFO_EHDR, and the time page
    (read-only to the guest) and the vDSO (read and execute) as (address, contents, perms)."""
    return VDSO_ADDRESS, [(TIME_PAGE, time_page(), PROT_READ),
                          (VDSO_ADDRESS, image(), PROT_READ | PROT_EXEC)]


@functools.cache
def host_offsets() -> tuple[int, ...] | None:
    """The offsets of the host vDSO's clock_gettime, gettimeofday and time from its start,
    read from this process's own vDSO (the kernel gives every process the same one); None
    when there is none or it lacks one of them."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    base = int(libc.getauxval(AT_SYSINFO_EHDR))
    if not base:
        return None
    size = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[vdso]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo == base:
                    size = hi - lo
    if not size:
        return None
    try:
        elf = ELFFile(io.BytesIO(ctypes.string_at(base, size)))
        dynsym = elf.get_section_by_name(".dynsym")
        found = ({s.name: int(s["st_value"]) for s in dynsym.iter_symbols()}
                 if isinstance(dynsym, SymbolTableSection) else {})
    except Exception:  # an image pyelftools cannot read: no fast path, nothing else lost
        return None
    if not all(name in found for name in _HOST_FUNCTIONS):
        return None
    return tuple(found[name] for name in _HOST_FUNCTIONS)


def host_text(pid: int) -> int:
    """Where the host vDSO's text lies in host process `pid`, when it lies (with its data
    pages) inside [HOST_VDSO_BASE, HOST_VDSO_END); else 0."""
    text, inside = 0, True
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            name = line.split()[-1] if len(line.split()) > 5 else ""
            if name == "[vdso]" or name.startswith("[vvar"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                inside &= lo >= HOST_VDSO_BASE and hi <= HOST_VDSO_END
                if name == "[vdso]":
                    text = lo
    return text if inside else 0


def _page_at(space: VirtualSpace) -> npt.NDArray[np.uint8] | None:
    """The time page's bytes in real memory, if the process has one (its magic in place)."""
    us = space.find(TIME_PAGE)
    if us is None or us.start != TIME_PAGE:
        return None
    try:
        ((at, _, _),) = space.runs(TIME_PAGE, PAGE_SIZE)
    except (BadAddress, ValueError):
        return None
    page = space.memory.frames.reshape(-1)[at: at + PAGE_SIZE]
    if page[MAGIC_AT: MAGIC_AT + len(MAGIC)].tobytes() != MAGIC:
        return None
    return page


def fill(space: VirtualSpace, text: int, offset_ns: int) -> bool:
    """The process runs on a host whose vDSO text is at `text` (0: none): give its calls the
    host functions and the monotonic offset. False when the process has no time page."""
    page = _page_at(space)
    return page is not None and fill_page(page, text, offset_ns)


def fill_page(page: npt.NDArray[np.uint8], text: int, offset_ns: int) -> bool:
    """Write a time page's words: the host functions (none when `text` is 0 or this host's
    vDSO lacks one) and the monotonic offset."""
    offsets = host_offsets() if text else None
    words = [text + o for o in offsets] if offsets else [0, 0, 0]
    page[:32] = np.frombuffer(struct.pack("<3Qq", *words, offset_ns), np.uint8)
    return True


def clear(space: VirtualSpace) -> None:
    """The process stops: its calls become system calls until an engine fills the page."""
    page = _page_at(space)
    if page is not None:
        page[:24] = 0
