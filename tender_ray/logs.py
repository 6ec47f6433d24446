"""Structured logs (structlog), configured once per process: the driver and every actor.

`TENDER_LOG_FORMAT=json|console` picks the renderer, `TENDER_LOG_LEVEL` the level. Logs go to
stderr of the process that writes them, never into a guest's output.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def configure(fmt: str | None = None, level: str | None = None) -> None:
    global _configured
    if _configured and fmt is None and level is None:
        return
    fmt = fmt or os.environ.get("TENDER_LOG_FORMAT", "console")
    level_name = (level or os.environ.get("TENDER_LOG_LEVEL", "WARNING")).upper()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level_name, logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False)
    _configured = True


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    configure()
    return structlog.get_logger(name)
