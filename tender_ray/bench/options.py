"""What the benchmarks share on their command lines: which engines to measure side by side."""

from __future__ import annotations

import sys

from tender_ray.errors import UsageError

DEFAULT_ENGINES = "native,emulated"


def usable_engines(spec: str) -> list[str]:
    """The engines of a comma-separated `--engines` value that can run here; one that cannot
    is skipped with a notice on stderr (a benchmark measures what it names, never a
    stand-in). An unknown name is a UsageError."""
    from tender_ray.engines import ENGINES, resolve

    engines = [e.strip() for e in spec.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise UsageError(f"--engines: unknown engines {bad}; choose "
                         f"{' and/or '.join(ENGINES)}")
    usable = []
    for e in engines:
        got, notice = resolve(e)
        if got != e:
            print(f"tender-ray: {notice}; skipping the {e} engine", file=sys.stderr)
            continue
        usable.append(e)
    return usable
