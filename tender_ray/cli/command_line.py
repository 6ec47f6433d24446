"""What `tender-ray` reads of its command line before it builds a parser: the command it names,
so that `exec` builds only its own parser and loads only what exec needs before it hands its
program to a warm driver; and the balancer policies, loaded only for the commands that take
one."""

from __future__ import annotations

from collections.abc import Sequence

# The top-level options that take a value (cli/main.py's build_parser).
VALUED = ("--log-format", "--log-level")


def command_of(words: Sequence[str]) -> str | None:
    """The command `words` name, seen the way the parser will see it: after the top-level
    options (`--log-format F`, `--log-level=L`, ...); None for anything else (`-h`, an
    abbreviated option), which the whole parser then reads."""
    i = 0
    while i < len(words):
        word = words[i]
        if word in VALUED:
            i += 2
        elif word.startswith(tuple(f"{option}=" for option in VALUED)):
            i += 1
        elif word.startswith("-"):
            return None
        else:
            return word
    return None


def policies() -> list[str]:
    """The balancer policies' names. (Their module brings numpy and the kernel's snapshots: a
    quarter of a second that exec's start does not need.)"""
    from tender_ray.balancing.policies import Policy

    return [p.value for p in Policy]
