"""Configuration models: a machine's settings and the scenarios of configs/*.yaml.

Everything read from a file or the command line is validated here, so the rest of the code can
trust its inputs; an error names the file, the field and what is wrong.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MachineConfig(BaseModel):
    """One Tender machine: its processors, real memory and scheduling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="m0", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    computations: int = Field(default=1, ge=1, le=64,
                              description="processes that may run at once (processor slots)")
    memory_mib: int = Field(default=512, ge=1, le=1 << 20, description="real memory, MiB")
    quantum_us: int = Field(default=5000, ge=100, le=1_000_000,
                            description="time slice of a timed quantum, microseconds")
    quantum_instructions: int | None = Field(
        default=None, ge=1000,
        description="exact quanta of this many instructions (deterministic, slower) instead "
                    "of timed ones")
    engine: str = Field(default="auto", pattern=r"^(auto|native|emulated)$",
                        description="what runs processes: native (host processes under "
                                    "ptrace, Linux x86-64), emulated (Unicorn) or auto")
    reuse: bool = Field(default=True, description="pre-create and hold resources for reuse")
    pool_size: int = Field(default=2, ge=0, le=64,
                           description="kernel processes created in advance")
    plate_dir: str | None = Field(default=None,
                                  description="the machine's plate directory (default: a "
                                              "temporary directory)")
