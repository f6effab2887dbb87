"""One-line errors on stderr with a non-zero exit, instead of tracebacks, for problems users can fix."""
from __future__ import annotations

import contextlib

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


def runtime_errors() -> tuple[type[BaseException], ...]:
    """What the runtime raises for problems users can fix (no torch: checkpoint problems arrive as BackendError)."""
    from ..engine.backends import BackendError
    from ..engine.images import ImageError, OutputError
    from ..engine.masks import MaskError
    from ..engine.ray_driver import RayError

    return (BackendError, ImageError, OutputError, MaskError, ValueError, RayError)
