"""What the `lensing` subcommands share about their command line: argparse types (a bad number is a usage
error that names the option and says why, exit 2, not a traceback from deep inside the run) and the
command as typed, which model cards record."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable


def at_least(minimum: int, why: str) -> Callable[[str], int]:
    """An integer >= minimum; `why` tells the user what the bound is for."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} ({why}), got {value}")
        return value

    return parse


SEED = at_least(0, "numpy seeds are non-negative")


def invoked_command() -> str:
    """The running `lensing` command line, quoted as a shell would need it (a card's provenance)."""
    return "lensing " + shlex.join(sys.argv[1:])
