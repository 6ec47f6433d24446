"""Program: what a process runs — segment sizes and addresses and the entry point.

It hides the executable format: the ELF file is parsed here (pyelftools) and nowhere else.
Only static x86-64 executables are accepted, since a Tender process has no dynamic loader.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from tender_ray.abi.linux import PROT_EXEC, PROT_READ, PROT_WRITE
from tender_ray.errors import BadProgramError
from tender_ray.resources.real_memory import page_down, page_up


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
    """A parsed static executable. `digest` names its image on a plate."""

    name: str
    digest: str
    size: int
    entry: int
    segments: tuple[Segment, ...]
    phdr: int  # address of the program headers once loaded (AT_PHDR)
    phent: int
    phnum: int

    @property
    def end(self) -> int:
        """First page after the image: where the program break starts."""
        return max(page_up(s.vaddr + s.memsz) for s in self.segments)


def parse_program(image: bytes, name: str) -> Program:
    """Parse and check an executable image; BadProgramError says what is wrong with it."""
    if image[:4] != b"\x7fELF":
        raise BadProgramError(name, "not an ELF executable (no ELF magic); give a static "
                                    "x86-64 Linux program, e.g. built with musl-gcc -static")
    try:
        elf = ELFFile(io.BytesIO(image))
        header = elf.header
        if elf.elfclass != 64 or header["e_machine"] != "EM_X86_64":
            raise BadProgramError(
                name, f"built for {header['e_machine']} ({elf.elfclass}-bit), not x86-64; "
                      "rebuild it for x86-64")
        phdrs = list(elf.iter_segments())
        if any(p["p_type"] == "PT_INTERP" for p in phdrs) or any(
            p["p_type"] == "PT_DYNAMIC" for p in phdrs
        ):
            raise BadProgramError(name, "dynamically linked; rebuild it statically "
                                        "(musl-gcc -static)")
        if header["e_type"] != "ET_EXEC":
            raise BadProgramError(name, f"ELF type {header['e_type']} is not a static "
                                        "executable (ET_EXEC); link with -static -no-pie")
        segments = []
        phdr_addr = 0
        for p in phdrs:
            if p["p_type"] == "PT_PHDR":
                phdr_addr = p["p_vaddr"]
            if p["p_type"] != "PT_LOAD" or p["p_memsz"] == 0:
                continue
            flags = p["p_flags"]
            perms = ((PROT_READ if flags & P_FLAGS.PF_R else 0)
                     | (PROT_WRITE if flags & P_FLAGS.PF_W else 0)
                     | (PROT_EXEC if flags & P_FLAGS.PF_X else 0))
            if p["p_offset"] + p["p_filesz"] > len(image):
                raise BadProgramError(name, "truncated: a segment lies past the end of the file")
            segments.append(Segment(p["p_vaddr"], p["p_memsz"], p["p_filesz"], p["p_offset"],
                                    perms))
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
        entry=header["e_entry"],
        segments=tuple(ordered),
        phdr=phdr_addr,
        phent=header["e_phentsize"],
        phnum=header["e_phnum"],
    )
