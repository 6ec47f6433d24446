"""The process-tree and thread benchmark runs fork+exec+wait, a threaded program on machines
of one and two computations, and shell pipelines natively and on each engine, and checks
every output against the native run; here tiny, checking what it reports, never speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tender_ray.bench.options import usable_engines
from tender_ray.bench.trees import HOST, Run, _check, _kept, _rounds, main, trees_benchmark


def test_rounds_rotate_which_side_goes_first() -> None:
    order: list[str] = []

    def measure(side: str) -> Run:
        order.append(side)
        return (0.0, 0, side.encode(), b"")

    runs = _rounds(3, [HOST, "native", "emulated"], measure)
    assert order == [HOST, "native", "emulated", "native", "emulated", HOST,
                     "emulated", HOST, "native"]
    assert {side: len(got) for side, got in runs.items()} == {HOST: 3, "native": 3,
                                                             "emulated": 3}


def test_a_run_that_differs_is_reported_and_not_kept_as_the_best() -> None:
    native: Run = (1.0, 0, b"40313906\n", b"")
    cut_short: Run = (0.1, 1, b"0\n", b"gzip: stdout: Broken pipe\n")
    runs = [(1.2, 0, b"40313906\n", b""), cut_short]
    assert _kept(runs, native) == [runs[0]]  # the fast wrong run is not the best
    assert _kept([cut_short], native) == [cut_short]  # shown all the same, marked
    column = _check({}, runs, native)
    assert column["identical"] is False
    assert column["differs"] == {"runs": 1, "status": 1, "native_status": 0, "stdout": "0\n",
                                 "native_stdout": "40313906\n",
                                 "stderr": "gzip: stdout: Broken pipe\n"}
    assert _check({}, runs[:1], native) == {"identical": True}


@pytest.mark.parametrize(("args", "said"), [
    (["--repeat", "0"], "--repeat, --rounds and --work must be at least 1"),
    (["--size", "-1"], "--size must be a positive number of MiB")])
def test_a_bad_option_is_refused_in_one_line(capsys: pytest.CaptureFixture[str],
                                             args: list[str], said: str) -> None:
    with pytest.raises(SystemExit) as refused:
        main(args, prog="tender-ray bench trees")
    assert refused.value.code == 2
    assert said in capsys.readouterr().err


def test_trees_benchmark_reports_every_part_with_native_outputs() -> None:
    for program in ("/bin/sh", "/usr/bin/sha256sum", "/usr/bin/gzip", "/usr/bin/wc"):
        if not Path(program).is_file():
            pytest.skip(f"{program} is not installed here")
    engines = usable_engines("native,emulated")
    result = trees_benchmark(engines, repeat=1, rounds=3, work=1, size_mib=0.25)
    assert result["engines"] == engines and result["identical"]

    cases = [row["case"] for row in result["fork_exec"]]
    assert cases[0] == "fork+exec+wait, static musl program"
    for row in result["fork_exec"]:
        assert row["rounds"] == 3 and row["native_ms"] > 0
        for engine in engines:
            column = row["engines"][engine]
            assert column["identical"], (row["case"], engine)
            assert column["ms"] > 0 and column["ratio"] > 0

    threads = result["threads"]
    assert threads["threads"] == 2 and threads["native_identical"]
    assert threads["native_speedup"] > 0
    for engine in engines:
        column = threads["engines"][engine]
        assert column["identical"], engine
        assert column["threads_serialised"] == (engine == "emulated")
        # The speed-up is the two times' quotient (each rounded to 0.1 ms).
        assert column["speedup"] == pytest.approx(
            column["one_computation_s"] / column["two_computations_s"], rel=0.05, abs=0.01)

    assert [row["case"] for row in result["pipelines"]] == [
        "sh -c 'cat FILE | sha256sum'", "sh -c 'cat FILE | gzip -1 | wc -c'"]
    for row in result["pipelines"]:
        assert row["bytes"] == int(0.25 * (1 << 20)) and row["native_mb_s"] > 0
        for engine in engines:
            column = row["engines"][engine]
            assert column["identical"], (row["case"], engine)
            # (its seconds are rounded to 0.1 ms: the tolerance is what that allows)
            assert column["mb_s"] == pytest.approx(row["bytes"] / column["s"] / 1e6,
                                                   rel=0.01 + 0.00005 / column["s"])
