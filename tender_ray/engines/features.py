"""CPU features: what each engine's CPU offers a guest, by the names Linux gives cpuid bits.

glibc's start-up code reads `cpuid` and binds memcpy, strlen and friends to the widest code it
finds (ifuncs), so a process must never go on where a feature its code may have chosen is
missing. The two engines differ: Unicorn does not emulate AVX/AVX2/AVX-512 (its leaf 1 ecx has
no AVX bit, its leaf 7 ebx only FSGSBASE, BMI1, SMEP, BMI2, ERMS), while the native engine runs
the guest on the host CPU, whatever it offers (this host: AVX2, AVX-512F, SHA).

Chosen: record the features of the engine a process started on, and refuse a migration to an
engine that lacks any of them (the process keeps running at the source). Masking cpuid so all
engines agree would need CPUID faulting (arch_prctl(ARCH_SET_CPUID, 0)) on the native engine,
which this host refuses (ENODEV), and masking AT_HWCAP alone does not change what glibc reads
from cpuid. Static musl programs do not choose code by cpuid, but they are refused the same way
unless they started on the smaller set: processes started on the emulated engine move to native
(the host offers every feature Unicorn does) and back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# (leaf, subleaf, register, bit) -> Linux's /proc/cpuinfo name, the features compilers and
# glibc's ifuncs choose code by.
CPUID_BITS: dict[tuple[int, int, str, int], str] = {
    (1, 0, "edx", 15): "cmov", (1, 0, "edx", 23): "mmx", (1, 0, "edx", 24): "fxsr",
    (1, 0, "edx", 25): "sse", (1, 0, "edx", 26): "sse2",
    (1, 0, "ecx", 0): "pni", (1, 0, "ecx", 1): "pclmulqdq", (1, 0, "ecx", 9): "ssse3",
    (1, 0, "ecx", 12): "fma", (1, 0, "ecx", 13): "cx16", (1, 0, "ecx", 19): "sse4_1",
    (1, 0, "ecx", 20): "sse4_2", (1, 0, "ecx", 22): "movbe", (1, 0, "ecx", 23): "popcnt",
    (1, 0, "ecx", 25): "aes", (1, 0, "ecx", 26): "xsave", (1, 0, "ecx", 28): "avx",
    (1, 0, "ecx", 29): "f16c", (1, 0, "ecx", 30): "rdrand",
    (7, 0, "ebx", 0): "fsgsbase", (7, 0, "ebx", 3): "bmi1", (7, 0, "ebx", 5): "avx2",
    (7, 0, "ebx", 8): "bmi2", (7, 0, "ebx", 9): "erms", (7, 0, "ebx", 16): "avx512f",
    (7, 0, "ebx", 17): "avx512dq", (7, 0, "ebx", 19): "adx", (7, 0, "ebx", 29): "sha_ni",
    (7, 0, "ebx", 30): "avx512bw", (7, 0, "ebx", 31): "avx512vl",
    (7, 0, "ecx", 9): "vaes", (7, 0, "ecx", 10): "vpclmulqdq", (7, 0, "edx", 4): "fsrm",
    (0x8000_0001, 0, "ecx", 0): "lahf_lm", (0x8000_0001, 0, "ecx", 5): "abm",
}
KNOWN = frozenset(CPUID_BITS.values())


def decode(read_cpuid: Callable[[int, int], tuple[int, int, int, int]]) -> frozenset[str]:
    """The known features a CPU reports; `read_cpuid(leaf, subleaf)` gives its
    (eax, ebx, ecx, edx)."""
    names = set()
    cache: dict[tuple[int, int], dict[str, int]] = {}
    for (leaf, sub, reg, bit), name in CPUID_BITS.items():
        if (leaf, sub) not in cache:
            eax, ebx, ecx, edx = read_cpuid(leaf, sub)
            cache[leaf, sub] = {"eax": eax, "ebx": ebx, "ecx": ecx, "edx": edx}
        if cache[leaf, sub][reg] >> bit & 1:
            names.add(name)
    return frozenset(names)


@functools.cache
def emulated_features() -> frozenset[str]:
    """What the emulated engine's CPU reports: cpuid run in a throwaway Unicorn CPU."""
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as x86

    def read_cpuid(leaf: int, sub: int) -> tuple[int, int, int, int]:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, b"\x0f\xa2")  # cpuid
        uc.reg_write(x86.UC_X86_REG_RAX, leaf)
        uc.reg_write(x86.UC_X86_REG_RCX, sub)
        uc.emu_start(0x1000, 0x1002)
        regs = (x86.UC_X86_REG_EAX, x86.UC_X86_REG_EBX, x86.UC_X86_REG_ECX, x86.UC_X86_REG_EDX)
        eax, ebx, ecx, edx = (int(uc.reg_read(r)) for r in regs)
        return eax, ebx, ecx, edx

    return decode(read_cpuid)


@functools.cache
def host_features(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """What the host CPU offers a native guest, as the kernel lists it (the flags of the first
    processor; the kernel already hides what it disabled)."""
    with open(cpuinfo) as f:
        for line in f:
            if line.startswith("flags"):
                return KNOWN & frozenset(line.split(":", 1)[1].split())
    return frozenset()


def engine_features(engine: str) -> frozenset[str]:
    """The features a guest sees on `engine` ("emulated" or "native") on this host."""
    return emulated_features() if engine == "emulated" else host_features()


def missing(started_with: frozenset[str], offered: frozenset[str]) -> frozenset[str]:
    """Features a process's code may rely on that a destination lacks (empty: it may go)."""
    return started_with - offered
