"""The system calls of one kernel: a call's number looked up in the table (table.py), its
handler run, a fault on the guest's memory answered EFAULT, and a call nobody serves answered
ENOSYS and counted by its Linux name, so a report shows what a program wanted. The calls reach
their kernel only through `Services`.
"""

from __future__ import annotations

import weakref

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno, syscall_name
from tender_ray.kernel.futex import FutexTable
from tender_ray.kernel.host_tree import HostTree
from tender_ray.kernel.syscalls.base import Handler, Services
from tender_ray.kernel.syscalls.table import handlers
from tender_ray.resources.file_view import FileService
from tender_ray.resources.open_file import FdTable
from tender_ray.resources.process import Process
from tender_ray.resources.virtual_space import BadAddress


class SystemCalls:
    """The system call table of one kernel."""

    def __init__(self, services: Services, host_tree: HostTree | None = None) -> None:
        self.services = services
        self.managers = services.managers
        self.host_tree = host_tree or HostTree("")  # whose host files a view uses
        self._table: dict[int, Handler] = handlers()
        # The descriptor tables of this machine's processes that hold advisory locks, by pid
        # (kernel/syscalls/locks.py); a table a process left behind drops out by itself.
        self.lock_holders: weakref.WeakValueDictionary[int, FdTable] = (
            weakref.WeakValueDictionary())
        self.futexes = FutexTable()  # this machine's futex waiters (kernel/futex.py)

    @property
    def file_service(self) -> FileService:
        """This machine's own host files (views of processes that started here)."""
        return self.host_tree.local

    def attach(self, p: Process) -> None:
        """Point the process's CPU at its space and at these calls, and load its registers."""
        cpu = p.context
        assert p.space is not None and p.registers is not None
        dispatch = self.dispatch
        cpu.bind(p.space, lambda nr, args: dispatch(p, nr, args))
        direct = getattr(cpu, "direct", None)  # a native CPU: its direct descriptors follow
        if direct is not None:  # the process's table, and its streams are host pipes
            direct.table = lambda: p.files  # where they are its own (`output_pipes`)
            direct.output = self.services.stream_sink(p)
            direct.preempt = cpu.preempt
        cpu.load(p.registers)
        if getattr(p.files, "locks", None):  # it arrived holding locks: they hold here too
            self.lock_holders[p.pid] = p.files

    def dispatch(self, process: Process, nr: int, args: SyscallArgs) -> SyscallOutcome:
        name = syscall_name(nr)
        process.accounting.syscalls[name] += 1
        handler = self._table.get(nr)
        if handler is None:
            process.accounting.unsupported[name] += 1
            return SyscallOutcome(-Errno.ENOSYS)
        space = process.space
        generation = space.generation if space is not None else 0
        try:
            outcome = handler(self, process, args)
        except BadAddress:
            return SyscallOutcome(-Errno.EFAULT)
        if space is not None and space.generation != generation and not outcome.stop:
            # Translations were removed or narrowed: stop so the CPU flushes its TLB before
            # the process runs on.
            return SyscallOutcome(outcome.result, stop=True)
        return outcome
