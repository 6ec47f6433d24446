"""`python -m tender_ray.kernel.syscalls --markdown` writes docs/syscalls.md: the system-call
table (table.py) with its counts, checked whole first."""

from __future__ import annotations

import sys

from tender_ray.kernel.syscalls.table import markdown, problems


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m tender_ray.kernel.syscalls --markdown > docs/syscalls.md",
              file=sys.stderr)
        return 2
    wrong = problems()
    if wrong:
        print("the system-call table is not whole: " + "; ".join(wrong), file=sys.stderr)
        return 1
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
