"""What gcomp leaves on disk and on stderr: outputs with ordinary permissions, and no OpenCV log lines."""
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from gcomp.engine import images

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
    """mkstemp makes 0600 files and the rename keeps the mode: outputs get 0666 less the umask instead."""
    with umask(mask):
        assert images.current_umask() == mask
        images.write_atomic(tmp_path / "a.json", b"{}")
        images.write(tmp_path / "sub" / "b.png", np.zeros((4, 4, 3), np.uint8), tag="s1of1-")
        images.write_atomic(tmp_path / "a.json", b"[]")  # replacing a file: the new file's mode too
    assert mode(tmp_path / "a.json") == expected
    assert mode(tmp_path / "sub" / "b.png") == expected
    assert not [p for p in tmp_path.rglob("*.tmp")]


@POSIX
def test_umask_is_read_without_changing_it(monkeypatch):
    with umask(0o027):
        assert images.current_umask() == 0o027
        # without /proc (not Linux): the umask read once at import
        monkeypatch.setattr(images, "_umask_from_proc", lambda: None)
        assert images.current_umask() == images._UMASK_AT_IMPORT
        assert os.umask(0o027) == 0o027  # still the caller's


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
