"""The Linux system calls a Tender process may make, served by its kernel, by family (files,
descriptors and events, memory, signals, processes, threads, time, identity) in one table
(`table.py`, every x86-64 call marked supported, partial or not; docs/syscalls.md is made from
it). A call gets the process and its six raw arguments and returns what goes into rax, plus
whether the computation must stop running the process (it sleeps, exits, yields).
"""

from tender_ray.kernel.syscalls.base import Handler, Services, restart_call
from tender_ray.kernel.syscalls.dispatch import SystemCalls

__all__ = ["Handler", "Services", "SystemCalls", "restart_call"]
