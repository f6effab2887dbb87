"""Nothing lost: killed runs resume cleanly; bad files are reported and skipped; clear fatal errors."""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from synth import make_faces  # noqa: E402
from gcomp.cli.app import app  # noqa: E402

runner = CliRunner()


@pytest.mark.slow
def test_sigkill_half_way_then_rerun_completes_each_image_once(tiny_ckpt, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_faces(src, n=10)
    cmd = [sys.executable, "-m", "gcomp", "complete", str(src), str(out), "--model", str(tiny_ckpt),
           "--iters", "150", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert 3 <= len(first) < 10, "the kill should land half-way"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"face_{i:02d}.png" for i in range(10)] + ["gcomp-summary.json"])  # no temp files
    for name, mtime in first.items():
        assert (out / name).stat().st_mtime_ns == mtime  # finished images were not redone
    s = json.loads((out / "gcomp-summary.json").read_text())
    assert s["skipped"] == len(first) and s["done"] == 10 - len(first) and s["n_failed"] == 0
    for p in out.glob("*.png"):
        assert cv2.imread(str(p)) is not None


def test_a_folder_of_awkward_files(tiny_ckpt, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_faces(src, n=2)
    rng = np.random.default_rng(0)
    ok, jpg = cv2.imencode(".jpg", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    (src / "truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 3])
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("this is not a png")
    big = cv2.resize(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), (4000, 3000))
    cv2.imwrite(str(src / "big.jpg"), big)
    cv2.imwrite(str(src / "gray.png"), big[:300, :300, 0])
    cv2.imwrite(str(src / "rgba.png"), np.dstack([big[:50, :50], np.full((50, 50), 9, np.uint8)]))
    (src / "ñandú ✓").mkdir()
    cv2.imwrite(str(src / "face_00.png"), cv2.imread(str(src / "face_00.png")))
    (src / "ñandú ✓" / "café.png").write_bytes((src / "face_00.png").read_bytes())
    r = runner.invoke(app, ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--iters", "2", "--no-progress"])
    assert r.exit_code == 1
    errs = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert sorted(e.split(":")[1].strip().split("/")[-1] for e in errs) == ["empty.png", "text.png", "truncated.jpg"], errs
    assert "empty file" in r.stderr
    done = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.suffix != ".json")
    assert done == ["big.jpg", "face_00.png", "face_01.png", "gray.png", "rgba.png", "ñandú ✓/café.png"]
    assert cv2.imread(str(out / "big.jpg")).shape == (3000, 4000, 3)
    assert cv2.imread(str(out / "rgba.png"), cv2.IMREAD_UNCHANGED).shape == (50, 50, 4)


def test_unwritable_output_is_one_clear_error(tiny_ckpt, faces, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(app, ["complete", str(faces[0].parent), str(blocker / "out"), "--model", str(tiny_ckpt)])
    assert r.exit_code == 2 and r.stderr.startswith("error: output folder") and len(r.stderr.splitlines()) == 1
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        r = runner.invoke(app, ["complete", str(faces[0].parent), str(ro), "--model", str(tiny_ckpt)])
        assert r.exit_code == 2 and "not writable" in r.stderr


def test_shards_partition_the_input(tiny_ckpt, tmp_path):
    src = tmp_path / "in"
    make_faces(src, n=9)
    seen = []
    for k in range(3):
        r = runner.invoke(app, ["complete", str(src), str(tmp_path / "out"), "--model", str(tiny_ckpt),
                                "--iters", "1", "--shard", f"{k}/3", "--no-progress"])
        assert r.exit_code == 0, r.output
        s = json.loads((tmp_path / "out" / f"gcomp-summary.shard-{k}-of-3.json").read_text())
        seen.append(s["done"])
    assert sum(seen) == 9 and len(list((tmp_path / "out").glob("*.png"))) == 9
