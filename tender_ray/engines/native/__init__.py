"""The native engine (Linux x86-64): a process runs as a host process traced by its machine,
every system call mediated by seccomp and served by the machine, its memory the machine's
shared real-memory file. Imports `abi/`, `resources/`, `errors`; never the emulated engine.

Modules, bottom up: `libc` (ptrace and the kernel's layouts), `registers` (CpuState to and
from them), `host_map` (the host mappings as runs), `tracer` (the tracer thread and its host
processes), `mappings` (keeping host mappings what the virtual space says), `engine`
(NativeCpu), `check` (the start-up self-check); `stopcost` measures what one mediated
call's stop costs through ptrace and through seccomp user notification.
"""

from tender_ray.engines.native.check import self_check
from tender_ray.engines.native.engine import NativeCpu

__all__ = ["NativeCpu", "self_check"]
