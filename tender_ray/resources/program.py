"""Program: what a process runs — segment sizes and addresses and the entry point.

It hides the executable format: the ELF file is parsed here (pyelftools) and nowhere else.
x86-64 executables of both kinds are accepted: fixed-address (ET_EXEC) ones at their link
addresses, and position-independent (ET_DYN: PIE, static-PIE, the dynamic loader itself) ones
at a load base chosen by the kernel, every address here already moved by it. Nothing is
relocated: a PIE asks for its dynamic loader (PT_INTERP) and the loader relocates itself and
the program; a static-PIE relocates itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import threading
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from tender_ray.abi.linux import PROT_EXEC, PROT_READ, PROT_WRITE
from tender_ray.errors import BadProgramError
from tender_ray.resources.real_memory import page_down, page_up

PIE_BASE = 0x5555_5555_4000  # where Linux puts a PIE (ELF_ET_DYN_BASE, no randomisation)


@dataclass(frozen=True)
class Segment:
    """One loadable piece of the image."""

    vaddr: int
    memsz: int
    filesz: int
    offset: int
    perms: int  # PROT_* bits

    @property
    def writable(self) -> bool:
        return bool(self.perms & PROT_WRITE)


@dataclass(frozen=True)
class Program:
    """A parsed executable, its addresses as loaded at `base`. `digest` names its image on a
    plate. All fields are set once by `parse_program`."""

    name: str
    digest: str
    size: int
    entry: int  # where it starts once loaded (AT_ENTRY)
    segments: tuple[Segment, ...]
    phdr: int  # address of the program headers once loaded (AT_PHDR)
    phent: int
    phnum: int
    base: int = 0  # load bias: 0 for ET_EXEC, the chosen base for ET_DYN (AT_BASE of a loader)
    interpreter: str = ""  # PT_INTERP: the dynamic loader the kernel must load first ("": none)

    @property
    def end(self) -> int:
        """First page after the image: where the program break starts."""
        return max(page_up(s.vaddr + s.memsz) for s in self.segments)


def parse_program(image: bytes, name: str, base: int | None = None) -> Program:
    """Parse and check an executable image; BadProgramError says what is wrong with it.

    A position-independent image (ET_DYN) is placed at `base` (PIE_BASE unless given, page
    aligned); a fixed-address one (ET_EXEC) ignores it.
    """
    if image[:4] != b"\x7fELF":
        raise BadProgramError(name, "not an ELF executable (no ELF magic); give an x86-64 "
                                    "Linux program")
    try:
        elf = ELFFile(io.BytesIO(image))
        header = elf.header
        if elf.elfclass != 64 or header["e_machine"] != "EM_X86_64":
            raise BadProgramError(
                name, f"built for {header['e_machine']} ({elf.elfclass}-bit), not x86-64; "
                      "rebuild it for x86-64")
        phdrs = list(elf.iter_segments())
        if header["e_type"] not in ("ET_EXEC", "ET_DYN"):
            raise BadProgramError(name, f"ELF type {header['e_type']} is not an executable "
                                        "(ET_EXEC or ET_DYN); link it as a program")
        bias = 0
        if header["e_type"] == "ET_DYN":
            bias = PIE_BASE if base is None else base
            if bias % 4096:
                raise ValueError(f"load base {bias:#x} is not page aligned")
        interpreter = ""
        segments = []
        phdr_addr = 0
        for p in phdrs:
            if p["p_type"] == "PT_PHDR":
                phdr_addr = bias + p["p_vaddr"]
            if p["p_type"] == "PT_INTERP":
                raw = image[p["p_offset"]: p["p_offset"] + p["p_filesz"]]
                interpreter = raw.split(b"\0", 1)[0].decode(errors="replace")
                if not interpreter.startswith("/"):
                    raise BadProgramError(name, f"its dynamic loader {interpreter!r} is not an "
                                                "absolute path; relink it")
            if p["p_type"] != "PT_LOAD" or p["p_memsz"] == 0:
                continue
            flags = p["p_flags"]
            perms = ((PROT_READ if flags & P_FLAGS.PF_R else 0)
                     | (PROT_WRITE if flags & P_FLAGS.PF_W else 0)
                     | (PROT_EXEC if flags & P_FLAGS.PF_X else 0))
            if p["p_offset"] + p["p_filesz"] > len(image):
                raise BadProgramError(name, "truncated: a segment lies past the end of the file")
            segments.append(Segment(bias + p["p_vaddr"], p["p_memsz"], p["p_filesz"],
                                    p["p_offset"], perms))
    except ELFError as exc:
        raise BadProgramError(name, f"malformed ELF ({exc})") from exc
    if not segments:
        raise BadProgramError(name, "has no loadable segment")
    ordered = sorted(segments, key=lambda s: s.vaddr)
    for a, b in itertools.pairwise(ordered):
        if page_up(a.vaddr + a.memsz) > page_down(b.vaddr):
            raise BadProgramError(name, "segments share a page; link with the default "
                                        "page-aligned layout")
    if not phdr_addr:
        # Without PT_PHDR the headers sit in the segment that maps file offset e_phoff.
        phoff = header["e_phoff"]
        for s in ordered:
            if s.offset <= phoff < s.offset + s.filesz:
                phdr_addr = s.vaddr + (phoff - s.offset)
    return Program(
        name=name,
        digest=hashlib.sha256(image).hexdigest(),
        size=len(image),
        entry=bias + header["e_entry"],
        segments=tuple(ordered),
        phdr=phdr_addr,
        phent=header["e_phentsize"],
        phnum=header["e_phnum"],
        base=bias,
        interpreter=interpreter,
    )


class HeldPrograms:
    """The program resources a machine holds for later execs of the same image, parsed once
    per image (the first exec pays for reading its headers); the oldest goes first past
    `limit`. Thread-safe."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[str, Program] = {}  # image digest -> parsed program; _lock

    def get(self, image: bytes, name: str) -> Program:
        """The program of `image`, named `name` (BadProgramError if it is not one)."""
        digest = hashlib.sha256(image).hexdigest()
        with self._lock:
            held = self._held.get(digest)
        if held is None:
            held = parse_program(image, name)
            with self._lock:
                self._held[digest] = held
                while len(self._held) > self.limit:
                    del self._held[next(iter(self._held))]
        return held if held.name == name else dataclasses.replace(held, name=name)
