"""The leaf of the house: the Linux x86-64 interface a guest program sees (one table of
system calls, errno, signals, memory flags and auxiliary-vector keys) and the engine-neutral
CPU state. It models no resource and imports nothing of tender_ray's; every other layer may
import it.
"""

from tender_ray.abi.cpu_state import (
    CpuState,
    Stop,
    StopKind,
    SyscallArgs,
    SyscallHandler,
    SyscallOutcome,
)
from tender_ray.abi.linux import Errno, Signal, signal_name, syscall_name

__all__ = ["CpuState", "Errno", "Signal", "Stop", "StopKind", "SyscallArgs", "SyscallHandler",
           "SyscallOutcome", "signal_name", "syscall_name"]
