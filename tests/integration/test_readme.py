"""The README's shell examples (its ```sh blocks), run as a user would, so that every example
keeps doing what the text around it says.

Each line of a ```sh block is one command (comments dropped, `\\` continuations joined). Its
key is the program and subcommand (`tender-ray exec`, `make run`, `ray job submit`, ...;
`tender-ray exec --address` for an exec on a long-lived cluster).
`test_every_readme_command_is_tested` (fast) checks that the README's keys are exactly the
keys run here (RUN) plus those covered by another test (COVERED): a new example without a
test fails it.

The examples are run (slow: each starts a Ray of its own) with these rewrites:

- `.venv/bin/tender-ray` and `python -m tender_ray` are the tender-ray of this test's Python;
  the working directory is the checkout, so `workloads/bin/...` and `configs/...` resolve.
- Files written go under tmp_path: `--stats F` writes tmp_path/F, `--report D` tmp_path/D,
  `--json F` tmp_path/F; `run` without `--report` gets one under tmp_path.
- `exec`: the README's own sizes (each a second or less of guest time). An example that
  claims migrations (`--migrate-every`) gets `--stats` if it has none, and must show at least
  one migration there.
- `run`: the scenario (configs/laptop.yaml when none is given) is replaced by a copy in
  tmp_path whose workloads' numeric arguments are capped by SMALL (same programs, counts,
  machines, events and policy; a few seconds a policy), and `--metrics-port 0` is added (the
  default port may be taken by another run on this host). It must exit 0 and print its
  summary (`makespan`).
- `bench`: one small size (`--sizes 1 --repeats 1`; `--repeat 1 --workload sieve:2000000`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.programs import ROOT

README = ROOT / "README.md"
TIMEOUT = 600
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)

# Keys this module runs.
RUN = {"tender-ray exec", "tender-ray run", "tender-ray bench migration",
       "tender-ray bench engine", "tender-ray --help"}

# Keys covered by another test or check: (file, a string that file must contain).
COVERED: dict[str, tuple[str, str]] = {
    "make run": ("Makefile", "$(BIN)/tender-ray run configs/laptop.yaml"),  # = `tender-ray run`
    "make test": (".ci/run", "make test"),  # CI runs it on a fresh clone
    "tender-ray up": ("tests/integration/test_operate.py", '"up"'),
    "tender-ray exec --address": ("tests/integration/test_operate.py", '"exec", "--address"'),
    "tender-ray ps": ("tests/integration/test_operate.py", '"ps"'),
    "tender-ray migrate": ("tests/integration/test_operate.py", '"migrate"'),
    "tender-ray drain": ("tests/integration/test_operate.py", '"drain"'),
    "tender-ray undrain": ("tests/integration/test_operate.py", '"undrain"'),
    "tender-ray down": ("tests/integration/test_operate.py", '"down"'),
    "tender-ray top": ("tests/unit/test_top.py", "top"),
    "tender-ray bench io": ("tests/unit/test_bench_io.py", "io_benchmark"),
    "tender-ray bench vs-ray": ("tests/integration/test_vs_ray.py", "tender_ray.bench.vs_ray"),
    "tender-ray bench precopy": ("tests/integration/test_precopy_cluster.py",
                                 "precopy_benchmark"),
    "tender-ray bench trees": ("tests/unit/test_bench_trees.py", "trees_benchmark"),
    "prometheus": ("tests/integration/test_dashboards.py", "--config.file"),
    # Grafana itself is not run; its dashboards are checked against their builder and
    # every panel's query against a real Prometheus.
    "docker run": ("tests/unit/test_dashboards_generated.py", "dashboards"),
    "pip install": ("tests/integration/test_ray_job.py", "ray.job_submission"),
    "ray start": ("tests/integration/test_ray_job.py", '"start", "--head"'),
    "ray job submit": ("tests/integration/test_ray_job.py", '"job", "submit"'),
    "ray stop": ("tests/integration/test_ray_job.py", "stop_head"),
}

# Caps on a scenario's workload arguments, by program: argument i is at most SMALL[p][i].
SMALL: dict[str, tuple[int, ...]] = {
    "sieve": (2_000_000,), "hashwalk": (4,), "rmw_counter": (20_000_000,),
    "compute_sleep": (10,), "memhold": (8, 50, 10), "mallocstress": (20_000,),
    "recursion_fp": (2_000,), "deepstack": (5_000,), "bigmmap": (8,),
}


def readme_commands() -> list[str]:
    """Every command of the README's ```sh blocks, one string each."""
    commands = []
    for block in SH_BLOCK.findall(README.read_text()):
        pending = ""
        for raw in block.splitlines():
            line = pending + raw
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def words_of(command: str) -> list[str]:
    """The command's words, without environment assignments or a trailing `&`."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)
    if words and words[-1] == "&":
        words.pop()
    return words


def key(command: str) -> str:
    words = words_of(command)
    prog = Path(words[0]).name
    rest = words[1:]
    if prog.startswith("python") and rest[:2] == ["-m", "tender_ray"]:
        prog, rest = "tender-ray", rest[2:]
    if prog == "tender-ray" and rest and rest[0].startswith("-"):
        return f"tender-ray {rest[0]}"
    depth = {"tender-ray": 1, "make": 1, "docker": 1, "pip": 1, "ray": 1}.get(prog, 0)
    if (prog, rest[:1]) in (("ray", ["job"]), ("tender-ray", ["bench"])):
        depth = 2
    parts = [prog, *rest[:depth]]
    if parts[:2] == ["tender-ray", "exec"] and "--address" in rest:
        parts.append("--address")
    return " ".join(parts)


def test_every_readme_command_is_tested() -> None:
    keys = {key(c) for c in readme_commands()}
    assert keys, "no ```sh blocks found in README.md"
    assert not RUN & COVERED.keys()
    untested = keys - RUN - COVERED.keys()
    assert not untested, f"README examples no test runs or covers: {sorted(untested)}"
    stale = (RUN | COVERED.keys()) - keys
    assert not stale, f"tested commands the README no longer shows: {sorted(stale)}"
    for what, (path, needle) in COVERED.items():
        text = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
        assert needle in text, f"{what}: said to be covered by {path}, which lacks {needle!r}"


# A fenced block, or an inline code span (which may wrap onto the next line of its paragraph).
CODE = re.compile(r"```[a-z]*\n(.*?)^```|`((?:[^`\n]|\n(?!\n))+)`", re.S | re.M)
NAMED = re.compile(r"(?:tender-ray|python -m tender_ray)\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?")


def named_commands() -> set[tuple[str, ...]]:
    """Every `tender-ray COMMAND` (and `tender-ray bench WHICH`) the README names in code:
    its code blocks and the inline code of its prose, so that a command only mentioned in a
    sentence is checked like an example."""
    named: set[tuple[str, ...]] = set()
    for block, inline in CODE.findall(README.read_text()):
        for command, then in NAMED.findall(block or inline):
            named.add((command, then) if command == "bench" and then else (command,))
    return named


def test_every_command_the_readme_names_exists() -> None:
    """The commands the README names, in examples or in prose, are the parser's."""
    import argparse

    from tender_ray.cli.main import build_parser

    def choices(parser: argparse.ArgumentParser) -> dict[str, Any]:
        """What the first word after this parser's own may be: its subcommands, or the
        choices of its first positional argument (`bench NAME`)."""
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
            if not action.option_strings and action.choices:
                return {str(c): None for c in action.choices}
        return {}

    commands = choices(build_parser())
    named = named_commands()
    assert ("exec",) in named and ("kill",) in named, named  # the scan sees both kinds
    missing = sorted(" ".join(n) for n in named if n[0] not in commands
                     or (len(n) == 2 and n[1] not in choices(commands[n[0]])))
    assert not missing, f"the README names commands tender-ray does not have: {missing}"


def small_scenario(path: Path, tmp_path: Path) -> Path:
    """A copy of scenario `path` with its workloads' numeric arguments capped by SMALL (its
    file paths still resolve where the original's did)."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    for w in data.get("workloads", []):
        w["cwd"] = str((path.parent / w.get("cwd", ".")).resolve())
        if "stdin" in w:
            w["stdin"] = str((path.parent / w["stdin"]).resolve())
        caps = SMALL.get(Path(str(w["program"])).name, ())
        w["args"] = [str(min(int(a), caps[i])) if i < len(caps) and str(a).isdigit() else str(a)
                     for i, a in enumerate(w.get("args", []))]
    small = tmp_path / f"small-{path.name}"
    small.write_text(yaml.safe_dump(data, sort_keys=False))
    return small


def rewrite(command: str, tmp_path: Path) -> tuple[list[str], Path | None]:
    """The argv to run for a README command, and the --stats file to check (see above)."""
    words = words_of(command)
    words = words[3:] if Path(words[0]).name.startswith("python") else words[1:]  # -m tender_ray
    entry = Path(sys.executable).parent / "tender-ray"  # the venv's entry point
    argv = [str(entry)] if entry.is_file() else [sys.executable, "-m", "tender_ray"]
    out: list[str] = []
    stats: Path | None = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("--stats", "--report", "--json") and i + 1 < len(words):
            target = tmp_path / words[i + 1]
            target.parent.mkdir(parents=True, exist_ok=True)
            out += [w, str(target)]
            if w == "--stats":
                stats = target
            i += 2
            continue
        out.append(w)
        i += 1
    command_name = out[0] if out else ""
    if command_name == "exec" and "--migrate-every" in out and stats is None:
        stats = tmp_path / "stats.json"
        out[1:1] = ["--stats", str(stats)]
    if command_name == "run":
        options_with_values = {"--report", "--address", "--policy", "--compare",
                               "--metrics-port", "--log-format", "--log-level"}
        positional = [j for j in range(1, len(out))
                      if not out[j].startswith("-") and out[j - 1] not in options_with_values]
        scenario = ROOT / (out[positional[0]] if positional else "configs/laptop.yaml")
        small = str(small_scenario(scenario, tmp_path))
        if positional:
            out[positional[0]] = small
        else:
            out.insert(1, small)
        if "--report" not in out:
            out += ["--report", str(tmp_path / "report")]
        if "--metrics-port" not in out and "--no-metrics" not in out:
            out += ["--metrics-port", "0"]
    if out[:2] == ["bench", "migration"]:
        out += ["--sizes", "1", "--repeats", "1"]
    if out[:2] == ["bench", "engine"]:
        out += ["--repeat", "1", "--workload", "sieve:2000000"]
    return argv + out, stats


def runnable() -> list[str]:
    return [c for c in readme_commands() if key(c) in RUN]


@pytest.mark.slow
@pytest.mark.parametrize("command", runnable(), ids=runnable())
def test_readme_example(command: str, tmp_path: Path) -> None:
    argv, stats = rewrite(command, tmp_path)
    env = {**os.environ, "COLUMNS": "200", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stdout}\n{r.stderr}"
    if "--migrate-every" in argv:
        assert stats is not None
        record = json.loads(stats.read_text())
        assert record["exit_status"] == 0
        assert len(record["migrations"]) >= 1, (
            f"{command}: claims migrations but made none in {record['run_seconds']:.3f} s")
    if key(command) == "tender-ray run":
        assert "makespan" in r.stdout, r.stdout
