"""The system-call-heavy benchmark runs Debian's programs on each engine, checks their output
against the native run, and reports a ratio per case and engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tender_ray.bench.io import io_benchmark
from tender_ray.bench.options import usable_engines


def test_io_benchmark_reports_every_case_with_native_outputs() -> None:
    for program in ("/usr/bin/sha256sum", "/usr/bin/gzip", "/usr/bin/dd", "/usr/bin/python3"):
        if not Path(program).is_file():
            pytest.skip(f"{program} is not installed here")
    engines = usable_engines("native,emulated")
    result = io_benchmark(2, engines, repeat=1, ray=False)  # Ray's case: test_cli's
    assert [r["case"] for r in result["rows"]] == [
        "sha256sum FILE", "gzip -c -1 <FILE", "dd if=FILE bs=4k (to stdout)",
        "python3 line-by-line read", "sha256sum FILE, migrated",
        "sha256sum FILE, migrated every 50 ms", "gzip -c -1 <FILE, migrated every 50 ms",
        "dd bs=4k, migrated every 50 ms", "python3 line-by-line, migrated every 50 ms",
        "sha256sum FILE, migrated, home I/O (direct)"]
    for engine in engines:  # going home is priced against the same read migrated locally
        home, local = result["rows"][9]["engines"][engine], result["rows"][4]["engines"][engine]
        assert home["vs_local"] == pytest.approx(home["best_s"] / local["best_s"], rel=0.01)
    for row in result["rows"]:
        assert row["native_s"] > 0
        for engine in engines:
            column = row["engines"][engine]
            assert column["identical"], (row["case"], engine)
            # Both times are rounded to 0.1 ms, which on a millisecond case moves their
            # quotient by several percent: the tolerance is what that rounding allows.
            slack = 0.00005 / row["native_s"] + 0.00005 / column["best_s"]
            assert column["ratio"] == pytest.approx(column["best_s"] / row["native_s"],
                                                    rel=0.01 + slack)
