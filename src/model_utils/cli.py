"""Entry-script plumbing: one-line errors for user mistakes, rank-aware log lines."""
import argparse
import sys

from src.errors import UserError

_RANK_PREFIX = [""]


class ArgumentParser(argparse.ArgumentParser):
    """`argparse` whose command-line mistakes are `UserError`s (one line, exit 2) instead of its usage text."""

    error_type = UserError

    def error(self, message):
        raise self.error_type(f"command line: {message}")


def set_log_rank(rank: int, group_size: int) -> None:
    """Prefix every later log line with the rank when more than one process trains."""
    _RANK_PREFIX[0] = f"[rank {rank}] " if group_size > 1 else ""


def log(message: str) -> None:
    """Print a log line (flushed, so logs of killed runs are complete)."""
    print("\n".join(_RANK_PREFIX[0] + line for line in message.split("\n")), flush=True)


def warn(message: str) -> None:
    print(f"{_RANK_PREFIX[0]}WARNING: {message}", file=sys.stderr, flush=True)


def run(main) -> None:
    """Call `main()`; a `UserError` becomes `ERROR: <message>` on stderr and exit status 2."""
    try:
        code = main()
    except UserError as err:
        print(f"{_RANK_PREFIX[0]}ERROR: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(code or 0)
