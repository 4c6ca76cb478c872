"""Starts one stdio upstream: sets the child's limits, then replaces itself with the command.

Run by the gateway as ``python -I stdio_launch.py --memory-mb N --max-files N -- argv...``
(isolated mode: no user site, no ``PYTHON*`` variables, no current directory on the path),
with a minimal environment and a private working directory chosen by the gateway. Limits
set here survive ``exec`` and bind the command and everything it starts:

- no core dumps (a crash must not write the process's memory, credentials included, to disk);
- an address-space cap (``--memory-mb``; 0 leaves it unlimited), so a runaway tool cannot
  take the gateway's memory;
- an open-file cap (``--max-files``);
- umask 077, so what the tool writes is readable by this user only.

This file imports nothing from the project, so it starts in milliseconds and cannot be
used to reach the gateway's settings or secrets.
"""

from __future__ import annotations

import argparse
import os
import sys


def apply_limits(memory_mb: int, max_files: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_files if hard == resource.RLIM_INFINITY else min(max_files, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    os.umask(0o077)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stdio_launch", description=__doc__)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--max-files", type=int, default=256)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    try:
        apply_limits(args.memory_mb, args.max_files)
    except (ImportError, OSError, ValueError) as exc:  # refuse to run unconfined rather than run silently
        print(f"stdio_launch: cannot set limits: {exc}", file=sys.stderr)
        return 126
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"stdio_launch: cannot start {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
