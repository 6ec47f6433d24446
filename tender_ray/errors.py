"""The errors tender_ray raises, split by cause.

`UsageError` and its children mean the caller asked for something that cannot be done (a bad
program file, an unknown process, a migration to the machine it is already on): fix the request.
`MachineError` and its children mean a machine is broken or gone: the request may succeed
elsewhere or later. Guest faults are not errors of either kind: they end the guest process with
a status, the way a signal ends a host process.
"""

from __future__ import annotations


class TenderError(Exception):
    """Base of every error tender_ray raises on purpose."""


class UsageError(TenderError):
    """The request itself is wrong; retrying it unchanged fails the same way."""


class BadProgramError(UsageError):
    """A program file that cannot run as a Tender process (missing, not ELF, dynamic, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[BadProgramError], tuple[str, str]]:
        # Raised inside a machine actor, it must cross back to the caller intact.
        return (type(self), (self.path, self.reason))


class UnknownProcessError(UsageError):
    """No process with this id lives on the machine (or in the cluster)."""


class ProcessStateError(UsageError):
    """The process exists but is in a state that forbids the request (finished, migrating)."""


class UnknownMachineError(UsageError):
    """No machine with this name is part of the cluster."""


class MigrationError(UsageError):
    """A migration request that cannot be carried out as asked; the process did not move."""


class TextNotHeldError(MigrationError):
    """The destination no longer maps the text the source left out of the image (the process
    that had it ended meanwhile): nothing was made there; the source sends the text and
    transforms again."""


class ProcessTreeError(MigrationError):
    """A process of a tree (with a parent or children on its machine) asked to move on its
    own: its parent's wait, SIGCHLD and the pipes it shares stay on that machine, so it stays
    there too and runs on, nothing lost."""


class CordonedError(UsageError):
    """The machine is cordoned (draining for maintenance): it takes no new processes."""


class ConfigError(UsageError):
    """A configuration or scenario file is invalid."""


class OutOfMemoryError(TenderError):
    """A machine has not enough free real-memory frames for the request."""


class MachineError(TenderError):
    """A machine is broken or unreachable; the request was not carried out there."""


class MachineStoppedError(MachineError):
    """The machine has stopped: every call pending on it, and every later call, fails with this."""


class NoReplyError(MachineStoppedError):
    """A machine did not answer a call in time, or its answer was lost: it may be alive and
    may have carried the call out. Ask it again (a migration asks for its outcome by id)."""


class LeaseExpiredError(MachineError):
    """The destination gave up an incoming migration: its source was silent past the lease,
    so it released what it had made. The process stayed (and runs on) at its source."""


class OutcomeUnknownError(MachineError):
    """A migration's commit went out but no answer came and the destination never said what
    it did: the source keeps its copy frozen (it may not run twice). Ask again later."""


class CheckpointError(MachineError):
    """A checkpoint that cannot be written or read back (missing, or not matching its
    checksum): the process it was for cannot restart from it."""


class EngineError(MachineError):
    """The CPU engine failed in a way that is not the guest's fault (a broken host)."""


class WriteTrackingError(UsageError):
    """Write tracking asked of a process whose engine cannot track its writes, started twice,
    or taken where it was never started."""
