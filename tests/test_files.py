"""What gcomp leaves on disk and says: outputs with ordinary permissions, no OpenCV log lines, one line for an
input it cannot take (too small, too large, an OUTPUT name that is no image format), linked folders, --help."""
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from gcomp.cli.app import app
from gcomp.engine import images

runner = CliRunner()

POSIX = pytest.mark.skipif(not hasattr(os, "fchmod"), reason="file modes and the umask are POSIX")


class umask:
    """Sets the process's umask inside the block (this test runs no other thread meanwhile)."""

    def __init__(self, mask):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@POSIX
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_written_files_get_new_file_permissions(tmp_path, mask, expected):
    """Outputs get 0666 less the umask, as any program's (a temporary file made 0600, as mkstemp does, would keep
    that mode through the rename)."""
    with umask(mask):
        images.write_atomic(tmp_path / "a.json", b"{}")
        images.write(tmp_path / "sub" / "b.png", np.zeros((4, 4, 3), np.uint8), tag="s1of1-")
        images.write_atomic(tmp_path / "a.json", b"[]")  # replacing a file: the new file's mode too
    assert mode(tmp_path / "a.json") == expected
    assert mode(tmp_path / "sub" / "b.png") == expected
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_atomic_writes_from_many_threads_and_a_stale_temporary_name(tmp_path, monkeypatch):
    """Temporary names are this process's id and a serial number: threads writing into one folder never collide,
    and a name an earlier process of the same id left behind is passed over (not overwritten, not an error)."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(images, "_tmp_serial", itertools.count(7))
    stale = tmp_path / f"{images.TMP_PREFIX}t{os.getpid()}-7{images.TMP_SUFFIX}"
    stale.write_bytes(b"left by a killed run")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: images.write_atomic(tmp_path / "out" / f"{i:03d}.bin", bytes([i])),
                      range(200)))
    images.write_atomic(tmp_path / f"a{images.SUFFIXES[0]}", b"x", tag="t")
    assert stale.read_bytes() == b"left by a killed run"
    assert [p.read_bytes() for p in sorted((tmp_path / "out").iterdir())] == [bytes([i]) for i in range(200)]
    assert images.remove_stale_temps(tmp_path, "t") == 1 and not list(tmp_path.rglob("*.tmp"))


@POSIX
def test_completed_images_and_the_summary_are_0644_under_umask_022(tmp_path):
    """`gcomp complete` under `umask 022` (the bundled model, ONNX Runtime): outputs and gcomp-summary.json."""
    from synth import make_faces

    make_faces(tmp_path / "in", n=2, size=64)
    cmd = [sys.executable, "-m", "gcomp", "complete", str(tmp_path / "in"), str(tmp_path / "out"), "--backend",
           "onnxruntime", "--iters", "1", "--no-progress"]
    r = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *cmd], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert [p.name for p in written] == ["face_00.png", "face_01.png", "gcomp-summary.json"]
    assert [oct(mode(p)) for p in written] == [oct(0o644)] * 3


def truncated_png() -> bytes:
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes()[: len(buf) // 2]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}  # OpenCV's default level
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_truncated_png_gives_no_opencv_log_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(truncated_png())
    # the control: OpenCV alone does print a warning for this file (else the check below proves nothing)
    plain = run_python(f"""
        import cv2, numpy as np
        assert cv2.imdecode(np.fromfile({str(bad)!r}, np.uint8), cv2.IMREAD_UNCHANGED) is None
    """)
    assert plain.returncode == 0, plain.stderr
    assert "WARN" in plain.stderr and "PNG input buffer is incomplete" in plain.stderr, plain.stderr
    # through gcomp: the ImageError and nothing from OpenCV
    ours = run_python(f"""
        from gcomp.engine import images
        try:
            images.read({str(bad)!r})
        except images.ImageError as e:
            print(e)
        else:
            raise SystemExit("decoded a truncated PNG")
    """)
    assert ours.returncode == 0, ours.stderr
    assert "not a readable image" in ours.stdout
    assert ours.stderr == ""
    # only while gcomp decodes: the program's own cv2 calls still log, at the level it had
    after = run_python(f"""
        import cv2, numpy as np
        from gcomp.engine import images
        level = cv2.utils.logging.getLogLevel()
        try:
            images.read({str(bad)!r})
        except images.ImageError:
            pass
        assert cv2.utils.logging.getLogLevel() == level
        assert cv2.imdecode(np.fromfile({str(bad)!r}, np.uint8), cv2.IMREAD_UNCHANGED) is None
    """)
    assert after.returncode == 0, after.stderr
    assert after.stderr.count("PNG input buffer is incomplete") == 1, after.stderr


def test_the_cli_prints_one_line_for_a_corrupt_image(tmp_path):
    """`gcomp complete` on a folder with a truncated PNG and a text file named .png: one `error:` line each,
    nothing else on stderr (the bundled model, ONNX Runtime)."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "truncated.png").write_bytes(truncated_png())
    (src / "text.png").write_text("this is not a png")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "gcomp", "complete", str(src), str(tmp_path / "out"), "--backend",
                        "onnxruntime", "--iters", "1", "--no-progress"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), r.stderr
    assert sorted(line.split(":")[1].strip().rsplit("/", 1)[-1] for line in lines) == ["text.png", "truncated.png"]


# -- what `gcomp complete` takes, and what it says when it does not (the bundled model, ONNX Runtime) --------------
def _complete(src, out, *extra):
    return runner.invoke(app, ["complete", str(src), str(out), "--backend", "onnxruntime", "--no-progress", *extra])


def _errors(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def test_one_image_to_a_name_that_is_no_image_format_is_refused_and_creates_nothing(tmp_path):
    """`gcomp complete face.png out.txt` once made a folder out.txt/ holding out.txt/face.png."""
    from synth import make_faces

    face = make_faces(tmp_path / "in", n=1, size=64)[0]
    for name in ("out.txt", "sub/result.gif"):
        r = _complete(face, tmp_path / name)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert lines[0].startswith(f"error: {tmp_path / name}: {os.path.splitext(name)[1]} is not an image format")
        assert ".png" in lines[0] and "folder" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing created
    r = _complete(face, tmp_path / "done.JPG")  # an image path: that file, in that format
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.JPG", "in"]
    assert (tmp_path / "done.JPG").read_bytes()[:2] == b"\xff\xd8"
    (tmp_path / "folder.png").mkdir()  # an existing folder is a folder, whatever its name
    assert _complete(face, tmp_path / "folder.png").exit_code == 0
    assert (tmp_path / "folder.png" / "face_00.png").is_file()


def test_linked_folders_are_followed_and_a_loop_is_named_once(tmp_path):
    from synth import make_faces

    src, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    make_faces(src / "a", n=1, size=64)
    make_faces(other, n=2, size=64)
    (src / "linked").symlink_to(other, target_is_directory=True)  # outside INPUT: its images are completed
    (src / "a" / "loop").symlink_to(src, target_is_directory=True)  # back to a folder above it
    out.mkdir()
    (src / "to-output").symlink_to(out, target_is_directory=True)  # into OUTPUT: its outputs are not inputs
    r = _complete(src, out)
    assert r.exit_code == 0, r.output
    done = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert done == ["a/face_00.png", "linked/face_00.png", "linked/face_01.png"], done
    notes = [line for line in r.stderr.splitlines() if "not followed" in line]
    assert len(notes) == 1 and notes[0].startswith("note: 2 linked folders not followed: "), r.stderr
    assert f"{src / 'a' / 'loop'} (a link to {os.path.realpath(src)}, a folder above it: a loop)" in notes[0]
    assert f"{src / 'to-output'} (the OUTPUT folder" in notes[0]


def test_a_tiny_image_is_too_small_in_one_line_and_the_rest_completes(tmp_path):
    from synth import make_faces

    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    for w, h in ((1, 1), (200, 3)):
        cv2.imwrite(str(src / f"tiny_{w}x{h}.png"), np.full((h, w, 3), 90, np.uint8))
    r = _complete(src, tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert sorted(_errors(r)) == sorted(
        f"error: {src / f'tiny_{w}x{h}.png'}: {w}x{h} is too small to complete (the minimum is "
        f"{images.MIN_SIDE}x{images.MIN_SIDE} pixels)" for w, h in ((1, 1), (200, 3))), r.stderr
    assert "nothing to fill" not in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["face_00.png"]


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """One line naming the file and the limit; a PNG or JPEG header claiming a huge size is refused from the header
    (a decompression bomb never takes the memory); the rest of the folder completes."""
    from synth import make_faces

    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    cv2.imwrite(str(src / "big.jpg"), np.full((100, 120, 3), 90, np.uint8))
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    (src / "bomb.png").write_bytes(header + b"\x00" * 64)  # no pixel data: decoding it would fail differently
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    r = _complete(src, tmp_path / "out")
    assert r.exit_code == 1, r.output
    errs = sorted(_errors(r))
    assert errs == [f"error: {src / 'big.jpg'}: 120x100 is 0.012 megapixels, over the limit of 0.01 "
                    "(GCOMP_MAX_IMAGE_PIXELS=N raises it, 0 lifts it; completing takes ~40 bytes per pixel)",
                    f"error: {src / 'bomb.png'}: 60000x60000 is 3,600 megapixels, over the limit of 0.01 "
                    "(GCOMP_MAX_IMAGE_PIXELS=N raises it, 0 lifts it; completing takes ~40 bytes per pixel)"], errs
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["face_00.png"]
    for value, limit in (("0", 0), ("5000", 5000), ("+300", 300), ("1_000", 1000), ("lots", 200_000_000),
                         ("-5", 200_000_000)):
        monkeypatch.setenv("GCOMP_MAX_IMAGE_PIXELS", value)
        assert images._max_pixels() == limit
        assert (images.max_pixels_warning() is None) == (images._max_pixels() != 200_000_000)
    assert images.max_pixels_warning().startswith("warning: GCOMP_MAX_IMAGE_PIXELS='-5' is not a pixel count")
    r = _complete(src, tmp_path / "out2")  # a job says the setting is ignored
    assert "warning: GCOMP_MAX_IMAGE_PIXELS='-5' is not a pixel count" in r.stderr


def test_blending_a_small_hole_in_a_large_image_costs_the_hole_s_region_not_the_image():
    """A 4000x4000 photo with a 200x200 hole: the blend once made float64 copies of the whole image (0.9 GB). Now it
    works on the hole's bounding box and the pixels around it: what it allocates is about one uint8 copy of the
    image (the fill it returns) and the hole mask, for the exact solve and for OpenCV's (large holes). Its
    allocations are counted by tracemalloc (numpy's and OpenCV's arrays; not OpenCV's internal buffers)."""
    from gcomp.engine import blend as B

    n = 4000
    rgb = np.full((n, n, 3), 120, np.uint8)
    fill = np.full((n, n, 3), 60, np.uint8)
    known = np.ones((n, n), np.float32)
    known[1000:1200, 2000:2200] = 0
    B.blend(rgb[:64, :64], fill[:64, :64], known[990:1054, 1990:2054], "poisson")  # imports scipy: not counted
    for exact_max in (B.EXACT_MAX, 1000):  # 1000: force the OpenCV path
        old, B.EXACT_MAX = B.EXACT_MAX, exact_max
        tracemalloc.start()
        try:
            out = B.blend(rgb, fill, known, "poisson:0.5")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            B.EXACT_MAX = old
        # the fill it returns, the hole mask, and 25 MB for the region's own work (40,000 unknowns: the sparse LU
        # and the right-hand side's two sparse maps, measured 22 MB)
        assert peak < fill.nbytes + known.size + 25e6, f"{exact_max}: {peak / 1e6:.0f} MB"
        assert np.abs(out[1000:1200, 2000:2200].astype(int) - 120).max() <= 3  # flat context: flat (OpenCV's: ~)
        assert np.array_equal(out[:900], fill[:900])  # far from the hole: untouched


def test_help_shows_each_default_once_plain_argument_names_and_one_progress_spelling():
    """--help: one mention of each default (the `[default: ...]` Typer adds, or none), Click's `INPUT OUTPUT` and
    `DATA...` in the usage line, `DATA <path>...` (not `<list[Path]>`), and --progress/--no-progress on every
    command that shows progress; train's old --quiet still works, unlisted."""
    import typer

    for cmd in ("complete", "train", "eval", "export", "train-encoder"):
        r = runner.invoke(app, [cmd, "--help"], terminal_width=1000)  # one line per option
        assert r.exit_code == 0, r.output
        usage = r.stdout.splitlines()[0]
        assert usage.startswith(f"Usage: gcomp {cmd} [OPTIONS]") and not re.search(r"[{}]", usage), usage
        assert "list[" not in r.stdout and "--quiet" not in r.stdout, r.stdout
        for line in r.stdout.splitlines():
            assert len(re.findall("default:", line, re.I)) <= 1, line
        if cmd in ("complete", "train"):
            assert "--progress / --no-progress" in r.stdout
    assert runner.invoke(app, ["complete", "--help"]).stdout.splitlines()[0].endswith("[OPTIONS] INPUT OUTPUT")
    train_help = runner.invoke(app, ["train", "--help"], terminal_width=1000).stdout
    assert train_help.splitlines()[0].endswith("[OPTIONS] DATA...") and "DATA <path>..." in train_help
    train = typer.main.get_command(app).commands["train"]
    for flags, shown in ((["--quiet"], False), (["--no-progress"], False), ([], True), (["--", "--quiet"], True)):
        ctx = train.make_context("train", ["data", "--out", "run", *flags])
        assert ctx.params["progress"] is shown, flags
