"""One-line errors on stderr with a non-zero exit, instead of tracebacks, for problems users can fix."""
from __future__ import annotations

import contextlib
import sys

import typer


def fail(msg: str, code: int = 2) -> "typer.Exit":
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]):
    """Turn the listed exception types into `error: <message>` and exit code 2."""
    try:
        yield
    except kinds as e:
        raise fail(str(e)) from None


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)
