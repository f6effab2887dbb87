"""One-line errors on stderr with a non-zero exit, instead of tracebacks, for problems users can fix."""
from __future__ import annotations

import contextlib
from pathlib import Path

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


def output_folder(folder: Path, option: str) -> None:
    """Refuse, before any work, an output folder an option names that cannot be made or written (a file there or
    above it, no permission): one line, exit 2. Creates nothing (engine.jobs.check_writable)."""
    from ..engine.images import OutputError
    from ..engine.jobs import check_writable

    try:
        check_writable(Path(folder))
    except OutputError as e:
        raise fail(f"{option}: {e}") from None


def output_file(path: Path | None, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """The same for a file an option names (--json, --grid): a folder there, another format than `suffixes` (if
    given), or a folder above it not writable."""
    if path is None:
        return
    if Path(path).is_dir():
        raise fail(f"{option} {path} is a folder: name a file")
    if suffixes and Path(path).suffix.lower() not in suffixes:
        raise fail(f"{option} {path}: name a {' or '.join(suffixes)} file")
    output_folder(Path(path).absolute().parent, option)


@contextlib.contextmanager
def writing(path: Path, option: str):
    """Writing the file an option names at the end of a run: an OSError then is one line (exit 1: the work was
    done, its record was not written), not a traceback."""
    import cv2

    from ..engine.images import opencv_reason

    try:
        yield
    except OSError as e:  # images.OutputError included
        raise fail(f"{option} {path}: cannot write it ({e.strerror or e})", code=1) from None
    except (ValueError, cv2.error) as e:  # images.ImageError (cannot encode), OpenCV's own refusal
        raise fail(f"{option} {path}: cannot write it ({opencv_reason(e)})", code=1) from None
