"""`tender-ray exec` builds only exec's command line: the same usage, help, defaults and
messages as the whole parser's exec, and none of the modules only other commands' options
need (the policies with numpy, the metrics exporter, structlog, Ray), so exec on a running
cluster hands its program over without loading them. Which parser a command line gets is
`command_of`'s reading of it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from tender_ray.cli.command_line import command_of
from tender_ray.cli.main import build_parser


def _exec_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices["exec"]
            return found
    raise AssertionError("no exec command")


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices]


@pytest.mark.parametrize(("words", "command"), [
    (["exec", "/bin/true"], "exec"),
    (["--log-level", "info", "--log-format", "json", "exec", "prog"], "exec"),
    (["--log-level=info", "exec", "--help"], "exec"),
    (["up", "--machines", "1"], "up"),
    (["-h", "exec"], None),  # the whole parser's help, which lists every command
    (["--log-lev", "info", "exec", "prog"], None),  # abbreviations: the whole parser reads
    (["--log-level"], None),
    ([], None),
])
def test_the_command_is_read_after_the_top_level_options(words: list[str],
                                                         command: str | None) -> None:
    assert command_of(words) == command


def test_exec_alone_is_the_whole_parsers_exec() -> None:
    alone, whole = _exec_parser(build_parser("exec")), _exec_parser(build_parser())
    assert alone.format_help() == whole.format_help()
    assert alone.format_usage() == whole.format_usage()
    argv = ["exec", "--address", "auto", "--machines", "2", "/bin/echo", "a", "--b"]
    assert vars(build_parser("exec").parse_args(argv)) == vars(build_parser().parse_args(argv))
    # Only exec is there: the other commands are the whole parser's.
    assert _commands(build_parser("exec")) == ["exec"]
    assert {"exec", "run", "up", "down", "migrate", "bench"} <= set(_commands(build_parser()))


def test_exec_parses_without_the_other_commands_modules() -> None:
    """In a fresh interpreter, as `tender-ray exec` starts: exec's command line is read and none
    of what only other commands need is loaded; the whole parser loads them."""
    probe = ("import importlib, json, sys; m = importlib.import_module('tender_ray.cli.main'); "
             "m.build_parser(sys.argv[1] or None).parse_args(['exec', '--address', 'auto', "
             "'/bin/true']); print(json.dumps(sorted(n for n in ('tender_ray.balancing.policies',"
             " 'tender_ray.metrics.collector', 'numpy', 'structlog', 'ray') "
             "if n in sys.modules)))")
    loaded = {which: json.loads(subprocess.run([sys.executable, "-c", probe, which],
                                               capture_output=True, text=True, check=True,
                                               timeout=120).stdout)
              for which in ("exec", "")}
    assert loaded["exec"] == []
    assert "tender_ray.balancing.policies" in loaded[""] and "numpy" in loaded[""]
