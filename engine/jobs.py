"""Jobs over folder trees: listing the inputs, shards, the resume rule, output paths, the summary.

Every driver (the local one in driver.py, the Ray driver) lists and resumes through these, so a job
gives the same outputs and summary whichever runs it.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

from .. import __version__
from . import images
from .images import TMP_PREFIX, ImageError, OutputError
from .blend import blend_name
from .masks import MaskSpec
from .options import CompleteOptions, Settings

SUMMARY_NAME = "gcomp-summary.json"
PROGRESS_DIR = "_gcomp_progress"


@dataclass
class Item:
    path: Path
    key: str  # path relative to the input root, '/'-separated: names masks, seeds and outputs
    out: Path


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    search_seconds: float = 0.0
    images_per_s: float = 0.0
    settings: dict = field(default_factory=dict)
    summary_path: str = ""
    ray: dict = field(default_factory=dict)  # the Ray driver's cluster settings and per-worker counts
    # the settings of skipped outputs an earlier run made with other settings (resume_note), or with these when this
    # run made none itself (_carry_forward), so the summary describes every output in the folder
    earlier_settings: list = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C: `done` counts the outputs written before it

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        d = asdict(self)
        d["n_failed"] = len(self.failed)
        for key in ("ray", "earlier_settings", "interrupted"):
            if not d[key]:
                del d[key]
        return d


def iter_inputs(root: Path, not_followed: list[tuple[str, str]] | None = None,
                output: Path | None = None) -> Iterator[tuple[Path, str]]:
    """Image files under root in a stable order (sorted per folder), streamed folder by folder.

    Linked folders are followed like linked files (whoever links a folder into the input means its images),
    except a link back into a folder above it (a loop) and, through links, the `output` folder (its outputs
    would be read back as inputs): those are left out, and each (path, why) goes to `not_followed`."""
    if root.is_file():
        yield root, root.name
        return
    out_real = os.path.realpath(output) if output is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = os.path.realpath(dirpath)
        dirnames[:] = [d for d in sorted(dirnames) if d != PROGRESS_DIR
                       and _follow(os.path.join(dirpath, d), here, out_real, not_followed)]
        for name in sorted(filenames):
            if images.is_image_name(name):  # gcomp's temporary files end in .tmp: never an image name
                p = Path(dirpath) / name
                yield p, p.relative_to(root).as_posix()


def _follow(path: str, here: str, out_real: str | None, not_followed: list | None) -> bool:
    """Whether the listing descends into the folder `path` (inside the folder whose real path is `here`)."""
    real = os.path.realpath(path)
    why = None
    if os.path.islink(path) and _inside(Path(here), Path(real)):
        why = f"a link to {real}, a folder above it: a loop"
    elif out_real is not None and _inside(Path(real), Path(out_real)):
        why = "the OUTPUT folder or inside it, reached through a link"
    if why and not_followed is not None:
        not_followed.append((path, why))
    return why is None


def not_followed_note(not_followed: list[tuple[str, str]]) -> str | None:
    """One line for the folders the listing left out (iter_inputs), naming the first few and why."""
    if not not_followed:
        return None
    n, shown = len(not_followed), "; ".join(f"{p} ({why})" for p, why in not_followed[:3])
    more = f"; and {n - 3} more" if n > 3 else ""
    return f"note: {n} linked folder{'s' if n != 1 else ''} not followed: {shown}{more}"


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Deterministic split by a hash of the name: stable when files are added or removed."""
    k, n = shard
    return n == 1 or zlib.crc32(key.encode("utf-8")) % n == k


def single_image_job(src: Path, dst: Path) -> bool:
    """`gcomp complete photo.jpg done.jpg`: one image in, one image path out (not an existing folder)."""
    return src.is_file() and images.is_image_name(dst) and not dst.is_dir()


def output_path(src_root: Path, out_root: Path, key: str) -> Path:
    return out_root if single_image_job(src_root, out_root) else out_root / key


def output_dir(src: Path, dst: Path) -> Path:
    """The folder outputs, temporary files and the summary go to."""
    return dst.parent if single_image_job(src, dst) else dst


def list_todo(src: Path, dst: Path, opts: CompleteOptions,
              log: Callable[[str], None] | None = None) -> tuple[list[Item], int]:
    """This job's (shard's) images still to do, in listing order, and how many it skips because
    their output exists (the resume rule; --overwrite redoes them). Every driver uses it. `log` gets
    the note on linked folders the listing did not follow, if any."""
    todo: list[Item] = []
    skipped = 0
    not_followed: list[tuple[str, str]] = []
    for path, key in iter_inputs(src, not_followed, output_dir(src, dst)):
        if not in_shard(key, opts.shard):
            continue
        out = output_path(src, dst, key)
        if not opts.overwrite and finished(out):
            skipped += 1
            continue
        todo.append(Item(path, key, out))
    note = not_followed_note(not_followed)
    if note and log is not None:
        log(note)
    return todo, skipped


def finished(out: Path) -> bool:
    """An output a rerun keeps: a non-empty regular file (outputs are written atomically, so an empty file is not
    one of ours: a crashed copy, a `touch`). Anything else there (a folder) is not a result: its write fails by name."""
    try:
        st = os.stat(out)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def temp_tag(shard: tuple[int, int]) -> str:
    """Goes into temporary output names, so a rerun of this shard removes only its own leftovers."""
    return f"s{shard[0]}of{shard[1]}-"


def to_stderr(msg: str) -> None:
    """A job's default log: one message, one line on stderr. A newline in a file's name would split it (and break
    `grep ^error:`), so line breaks print as \\n."""
    print(msg.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)


def error_text(key: str, path: str, err: Exception | str) -> str:
    """A per-image error as logged, in the README's one form `<input file as given>: <reason>`. Reading names
    the file already; mask and prepare errors start with the image's key (all the Python API knows, as `name`),
    which is swapped for the file here; anything else (a failed write) gets the file in front."""
    msg = str(err)
    if msg.startswith(f"{key}: ") and not msg.startswith(f"{path}: "):
        msg = msg[len(key) + 2:]
    return msg if msg.startswith(f"{path}: ") else f"{path}: {msg}"


def nothing_to_do(src: Path, shard: tuple[int, int]) -> str:
    """Why a job listed no image at all: none under the input, or none in this shard (names are split by a hash,
    so a small input can leave a shard empty; "no images under ..." would wrongly blame the input)."""
    k, n = shard
    total = sum(1 for _ in iter_inputs(src)) if n > 1 else 0  # listed again only in this rare case
    if total:
        return (f"shard {k}/{n} holds none of the {total} image{'s' if total != 1 else ''} under {src} "
                f"(images go to shards by a hash of their names): the other shards have them")
    return f"no images under {src} ({', '.join(images.SUFFIXES)})"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a job, with how far it got: still a KeyboardInterrupt to callers that catch that. Outputs are
    written whole (temporary name, then rename) and a rerun skips them, so the same command resumes."""

    def __init__(self, done: int, left: int):
        super().__init__(f"interrupted: {done} done, {left} left; run the same command again to resume "
                         f"(finished images are skipped)")
        self.done, self.left = done, left


class JobError(ValueError):
    """A job that must not run as asked (it would write over or inside its own input)."""


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written, creating nothing: the folder itself when it exists
    (a probe file, removed at once), else the nearest existing folder above it, which must be a folder
    this process may create entries in."""
    try:
        if folder.is_dir():
            probe = folder / f"{TMP_PREFIX}probe-{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
            return
        parent = folder
        while not parent.exists():
            if parent.parent == parent:
                break
            parent = parent.parent
        if parent == folder or not parent.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, f"Permission denied ({parent})")
    except OSError as e:
        raise OutputError(f"output folder {folder} is not writable: {e.strerror or e}") from None


def make_output_dir(folder: Path) -> None:
    """Create the output folder (once every check has passed and the model is open), probing that it takes files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    check_writable(folder)


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or inside it (compared as given: resolve both first)."""
    return path == folder or folder in path.parents


def check_paths(src: Path, dst: Path) -> None:
    """Inputs are never written: refuse OUTPUT equal to INPUT, an OUTPUT folder inside the INPUT folder (a
    later run would list its outputs as inputs), an INPUT inside the OUTPUT folder, and a single image whose
    OUTPUT is the same file. Symbolic links are resolved first. A folder INPUT's OUTPUT must be a folder."""
    rs, rd = src.resolve(), dst.resolve()
    if src.is_file():
        if not images.is_image_name(src):
            raise JobError(f"{src}: {src.suffix or 'a name without a suffix'} is not an image format gcomp reads "
                           f"({', '.join(images.SUFFIXES)})")
        check_image_output(dst)
        out_file = rd if single_image_job(src, dst) else rd / src.name
        if out_file == rs or (dst.exists() and not dst.is_dir() and os.path.samefile(src, dst)):
            raise JobError(f"{dst}: the output would overwrite the input image {src}; choose another OUTPUT")
        return
    check_folder_output(src, dst)
    if rd == rs:
        raise JobError(f"{dst}: OUTPUT is the INPUT folder; gcomp never writes over its inputs: choose another OUTPUT")
    if _inside(rd, rs):
        raise JobError(f"{dst}: OUTPUT is inside the INPUT folder {src}, so a later run would read its outputs "
                       f"back as inputs; choose an OUTPUT outside it")
    if _inside(rs, rd):
        raise JobError(f"{dst}: OUTPUT contains the INPUT folder {src}; choose an OUTPUT outside it")


def check_image_output(dst: Path) -> None:
    """One image in: OUTPUT is an image path (its suffix picks the format) or a folder. A name with another suffix
    (`out.txt`) is neither: refused, rather than made a folder of that name."""
    if dst.suffix and not dst.is_dir() and not images.is_image_name(dst):
        raise JobError(f"{dst}: {dst.suffix} is not an image format gcomp writes ({', '.join(images.SUFFIXES)}); "
                       f"OUTPUT for one image is an image path or a folder (an existing one, or a name without a "
                       f"suffix)")


def check_folder_output(src: Path, dst: Path) -> None:
    """A folder INPUT writes a tree of outputs, so OUTPUT is a folder: an image file name (`out.png`) that is not an
    existing folder is refused, rather than made a folder of that name (the user meant one image, or a typo)."""
    if images.is_image_name(dst) and not dst.is_dir():
        raise JobError(f"{dst}: INPUT {src} is a folder, so OUTPUT must be a folder, not an image file name; "
                       f"choose a folder name")


def check_job(input, output, opts: CompleteOptions) -> tuple[Path, Path, MaskSpec, Path]:
    """(input, output, mask spec, output folder) after the checks that fail a whole job. Creates nothing:
    the output folder is made when the job starts writing (make_output_dir)."""
    for what, path in (("INPUT", input), ("OUTPUT", output)):
        if not str(path):  # Path("") would be the current folder: an unset shell variable must not mean "here"
            raise JobError(f"{what} is an empty path (an unset variable?): name a file or folder")
    src, dst = Path(input), Path(output)
    spec = MaskSpec.parse(opts.mask)
    if not src.exists():
        raise ImageError(f"input not found: {src}")
    check_paths(src, dst)
    out_dir = output_dir(src, dst)
    check_writable(out_dir)
    return src, dst, spec, out_dir


def start_writing(out_dir: Path, opts: CompleteOptions) -> str:
    """This job's temporary-file tag, after removing what a killed run of the same shard left."""
    make_output_dir(out_dir)
    tag = temp_tag(opts.shard)
    images.remove_stale_temps(out_dir, tag)
    return tag


#: the options a summary records as they are (the mask, blend and search are recorded resolved)
JOB_FIELDS = tuple(f.name for f in fields(CompleteOptions) if f.name not in ("search", "mask", "blend"))


def job_settings(src: Path, dst: Path, spec: MaskSpec, opts: Settings) -> dict:
    """The job's settings as the summary records them (the same for every driver): paths resolved and the blend
    resolved (`auto` names what the model recommends for the mask, else this version's AUTO), so a later run can
    compare them; `blend_asked` is what the job asked for (before the model resolved it)."""
    return {
        "gcomp_version": __version__, "input": str(src), "output": str(dst), "model": _resolved(opts.model),
        "backend": opts.backend, "device": opts.device, "backend_settings": opts.backend_settings,
        "mask": _resolved(spec.path) if spec.path is not None else spec.describe(),
        **{k: getattr(opts, k) for k in JOB_FIELDS},
        "blend": str(opts.blend), "blend_asked": opts.blend_asked,
        "search": opts.search.as_dict(), "encoder": _resolved(opts.encoder) if opts.encoder else None,
    }


def _resolved(path) -> str:
    p = Path(str(path))
    return str(p.resolve()) if p.exists() else str(path)


#: the summary's settings that decide what an output holds: an earlier run that differs in one of them
#: left outputs the resume rule keeps as they are (init is covered by `encoder`: its path, or None)
OUTPUT_SETTINGS = ("model", "mask", "search", "blend", "seed", "restarts", "face", "encoder")


def summary_name(shard: tuple[int, int]) -> str:
    k, n = shard
    return SUMMARY_NAME if n == 1 else f"gcomp-summary.shard-{k}-of-{n}.json"


def _fingerprint(st: dict) -> dict:
    """What in a summary's settings shapes the outputs, in one canonical form: paths resolved, the blend
    resolved (`auto` before 0.2.0 meant `poisson`), the search's settings only if it ran."""
    fp = {k: st.get(k) for k in OUTPUT_SETTINGS}
    for k in ("model", "encoder", "mask"):  # recorded resolved; best effort for a summary that did not
        if isinstance(fp[k], str) and ("/" in fp[k] or os.sep in fp[k]):
            fp[k] = str(Path(fp[k]).resolve())
    blend = fp["blend"]
    if blend == "auto" and str(st.get("gcomp_version", "0")).startswith("0.1."):
        blend = "poisson"
    try:
        fp["blend"] = blend_name(blend)
    except (ValueError, TypeError):
        pass
    search = fp["search"] or {}
    if isinstance(search, dict) and search.get("iters") == 0:
        fp["search"] = {"iters": search["iters"]}  # no step ran: lr, lam, ... did not touch the outputs
    return fp


def _earlier_runs(out_dir: Path) -> list[dict]:
    """The settings of every run recorded in out_dir's summaries (any shard), with what they kept from before."""
    runs = []
    for f in sorted(out_dir.glob("gcomp-summary*.json")):
        try:
            d = json.loads(f.read_text())
            # a run that wrote nothing (all skipped) describes no file: only what it kept from before counts
            runs += ([d["settings"]] if d.get("done") else []) + list(d.get("earlier_settings") or [])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or unreadable: nothing to compare with
    return [r for r in runs if isinstance(r, dict)]


def resume_note(summary: Summary, out_dir: Path, todo: int, single: bool) -> str | None:
    """The line to print when the resume rule skips outputs: they are kept as they were made, so say so when
    an earlier run recorded in out_dir made outputs with other settings (whose settings this summary then keeps
    as earlier_settings), or when nothing is left to do."""
    n = summary.skipped
    if not n:
        return None
    outputs = f"{n} output{'s' if n != 1 else ''}"
    if single:
        return None if todo else "note: the output exists: kept as it is (--overwrite replaces it)"
    now = _fingerprint(summary.settings)
    other, seen = [], []
    for st in _earlier_runs(out_dir):
        fp = _fingerprint(st)
        if fp != now and fp not in seen:
            seen.append(fp)
            other.append(st)
    if other:
        summary.earlier_settings = other
        changed = [k for k in OUTPUT_SETTINGS if seen[0][k] != now[k]]
        what = "; ".join(f"{k}: {_brief(seen[0][k])} -> {_brief(now[k])}" for k in changed)
        more = f" and {len(other) - 1} other setting{'s' if len(other) > 2 else ''}" if len(other) > 1 else ""
        return (f"warning: {out_dir} holds outputs of earlier runs with other settings ({what}{more}): the {outputs} "
                "already there are kept as they are; --overwrite redoes them, or write to another OUTPUT")
    if not todo:
        return f"note: all {outputs} exist in {out_dir}: nothing to do (--overwrite redoes them)"
    return None


def _brief(v) -> str:
    if isinstance(v, dict):  # the search settings: the ones that shape a result
        return ",".join(f"{k}={v[k]}" for k in ("iters", "lr", "lam", "optimizer", "weighted") if k in v)
    return str(v)


def _made_outputs(summary_file: str | Path) -> bool:
    """The summary file there records a run that wrote outputs."""
    try:
        return bool(json.loads(Path(summary_file).read_text()).get("done"))
    except (OSError, ValueError, AttributeError):
        return False


def _carry_forward(summary: Summary, path: Path) -> None:
    """A run that made no output but replaces the summary (it had failures to record) keeps, in earlier_settings, the
    settings of the outputs that summary described: else they are lost (a summary's own settings count only when it
    made outputs), and a rerun with another --mask would fill the failed images with it without a warning."""
    try:
        prev = json.loads(path.read_text())
        runs = ([prev["settings"]] if prev.get("done") else []) + list(prev.get("earlier_settings") or [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # none, or not ours
    have = [_fingerprint(st) for st in summary.earlier_settings]
    for st in runs:
        if isinstance(st, dict) and _fingerprint(st) not in have:
            have.append(_fingerprint(st))
            summary.earlier_settings.append(st)


def finish_summary(summary: Summary, out_dir: Path, opts: CompleteOptions, t0: float,
                   write: bool = True) -> Summary:
    """Time it and write it atomically (one summary per shard). write=False (a single-image job whose
    OUTPUT is an image path): no file is written beside that image; summary_path stays ""."""
    summary.seconds = time.perf_counter() - t0
    summary.images_per_s = summary.done / summary.seconds if summary.seconds > 0 else 0.0
    if not write:
        return summary
    summary.summary_path = str(out_dir / summary_name(opts.shard))
    if not summary.done and not summary.failed and _made_outputs(summary.summary_path):
        # a rerun that did nothing keeps the record of the run that made the outputs: its figures, and its settings,
        # which a later rerun's changed-settings warning compares against. With other settings too: resume_note has
        # warned, and the outputs are still the ones that record describes (earlier runs' summaries, in any shard,
        # stay as they were)
        return summary
    if not summary.done and summary.skipped:
        _carry_forward(summary, Path(summary.summary_path))
    images.write_atomic(summary.summary_path, json.dumps(summary.as_dict(), indent=2).encode())
    return summary
