"""Nothing lost: killed runs resume cleanly; bad files are reported and skipped; clear fatal errors."""
import json
import os
import re
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


def _tree(folder):
    """{relative name: bytes} of every file under folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(out):
    return [p for p in out.glob("*.png")] if out.is_dir() else []


@pytest.mark.slow
def test_repeated_sigkill_and_resume_lose_nothing_and_match_an_uninterrupted_run(tiny_ckpt, tmp_path):
    """Killed (SIGKILL) at several points, each rerun resumes: in the end every image exists once, none is partial,
    no temporary file is left, and every output is byte-identical to an uninterrupted run's."""
    n = 8
    src = tmp_path / "in"
    make_faces(src, n=n)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same arithmetic in every run, and fair on a busy machine

    def cmd(out):
        return [sys.executable, "-m", "gcomp", "complete", str(src), str(out), "--model", str(tiny_ckpt),
                "--iters", "30", "--batch-size", "1", "--no-progress"]

    ref_out = tmp_path / "ref"
    r = subprocess.run(cmd(ref_out), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    ref = {k: v for k, v in _tree(ref_out).items() if k.endswith(".png")}
    assert len(ref) == n

    out = tmp_path / "out"
    kills = 0
    for target in (0, 2, 5):  # kill before the first output (start-up), then after 2 and after 5 outputs
        proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 300  # generous: the machine may be shared and slow
        while time.time() < deadline and proc.poll() is None and len(_outputs(out)) < target:
            time.sleep(0.02)
        if target == 0:
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for p in _outputs(out):  # whatever exists is complete: exactly the uninterrupted run's bytes
            assert p.read_bytes() == ref[p.name], f"{p.name} differs or is partial after a kill"
    assert kills >= 1, "no run was killed: the machine finished before every kill point"
    before = {p.name: p.stat().st_mtime_ns for p in _outputs(out)}
    r = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    files = _tree(out)
    assert sorted(files) == sorted(list(ref) + ["gcomp-summary.json"])  # nothing lost, nothing extra, no temp files
    assert {k: v for k, v in files.items() if k.endswith(".png")} == ref  # byte-identical, none duplicated
    for name, mtime in before.items():
        assert (out / name).stat().st_mtime_ns == mtime  # finished images were not redone
    s = json.loads((out / "gcomp-summary.json").read_text())
    assert s["skipped"] == len(before) and s["done"] == n - len(before) and s["n_failed"] == 0


@pytest.mark.slow
def test_ctrl_c_says_how_far_it_got_and_a_rerun_resumes(tiny_ckpt, tmp_path):
    """SIGINT (Ctrl-C) mid-job: exit 130 with one line saying how many images are done and left; what was written is
    whole, and the same command finishes the rest, skipping those."""
    n = 24
    src, out = tmp_path / "in", tmp_path / "out"
    make_faces(src, n=n)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    args = ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--batch-size", "4", "--no-progress"]
    # 6 batches of 100 iterations (~1 s each here): the first outputs appear long before the last batch could finish
    proc = subprocess.Popen([sys.executable, "-m", "gcomp", *args, "--iters", "100"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300  # generous: the machine may be shared and slow
    while time.time() < deadline and proc.poll() is None and not _outputs(out):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    m = re.fullmatch(r"interrupted: (\d+) done, (\d+) left; run the same command again to resume .*", lines[-1])
    assert m and len(lines) == 1, stderr
    done, left = int(m[1]), int(m[2])
    written = _outputs(out)
    assert done == len(written) >= 1 and left == n - done > 0, (stderr, written)
    assert all(cv2.imread(str(p)) is not None for p in written)  # whole files, no temporary one left
    assert not [p for p in out.iterdir() if p.name.startswith(".gcomp-")]
    summary = json.loads((out / "gcomp-summary.json").read_text())  # what the folder holds, said so
    assert summary["interrupted"] is True and summary["done"] == done
    r = runner.invoke(app, [*args, "--iters", "1"])  # the same job (fewer iterations, to be quick) resumes
    assert r.exit_code == 0 and f"done {left}, skipped {done}, failed 0" in r.stdout, r.output


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


# -- inputs are never written ------------------------------------------------------------------------------
def _refused(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_output_equal_to_or_inside_the_input_is_refused_and_the_input_stays_byte_identical(tiny_ckpt, tmp_path):
    src = tmp_path / "in"
    make_faces(src, n=3)
    link = tmp_path / "link"
    link.symlink_to(src, target_is_directory=True)
    before = _tree(src)
    face = src / "face_00.png"
    cases = [
        ([src, src, "--overwrite"], "OUTPUT is the INPUT folder"),
        ([src, src], "OUTPUT is the INPUT folder"),
        ([src, link, "--overwrite"], "OUTPUT is the INPUT folder"),  # the same folder through a symlink
        ([src, src / "out"], "inside the INPUT folder"),
        ([src, link / "sub" / "out"], "inside the INPUT folder"),
        ([src, tmp_path], "contains the INPUT folder"),
        ([face, face, "--overwrite"], "overwrite the input image"),
        ([face, src, "--overwrite"], "overwrite the input image"),  # a folder OUTPUT: OUTPUT/face_00.png
        ([face, link / "face_00.png", "--overwrite"], "overwrite the input image"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, ["complete", *map(str, args), "--model", str(tiny_ckpt), "--iters", "1", "--no-progress"])
        _refused(r, needle)
        assert _tree(src) == before, args  # byte-identical, nothing added (no summary, no output folder)
    assert not (src / "out").exists() and not (src / "sub").exists()


def test_every_option_is_checked_before_any_work(tmp_path):
    """Refusals come before any image is read or any file is created, with exit 2 and one line naming the culprit."""
    from gcomp.engine.api import DEFAULT_MODEL

    src = tmp_path / "in"
    make_faces(src, n=2, size=64)
    export = tmp_path / "export"
    export.mkdir()
    for f in DEFAULT_MODEL.glob("*.onnx"):
        (export / f.name).write_bytes(f.read_bytes())
    (tmp_path / "other.onnx").write_bytes((export / "encoder.onnx").read_bytes())
    text_mask, black_mask = tmp_path / "text.png", tmp_path / "black.png"
    text_mask.write_text("not an image")
    cv2.imwrite(str(black_mask), np.zeros((64, 64), np.uint8))  # black = keep everything
    out = tmp_path / "out"
    cases = [
        (["--device", "tpu"], ["--device 'tpu'", "cpu, cuda or cuda:N"]),
        (["--mask", "center:0.9"], ["center:0.9", "(0, 0.5)"]),
        (["--mask", "grid:1"], ["grid:1", "integer >= 2"]),
        (["--mask", "left:3"], ["left:3", "no parameter"]),
        (["--mask", str(text_mask)], ["not a readable image"]),
        (["--mask", str(black_mask)], ["black.png", "nothing to fill"]),
        (["--threads", "0"], ["--threads", "positive integer"]),
        (["--streams", "-1"], ["--streams", "positive integer"]),
        (["--lr", "nan"], ["--lr", "positive"]),
        (["--lr", "-1"], ["--lr", "positive"]),
        (["--momentum", "7"], ["--momentum", "[0, 1)"]),
        (["--lam", "-3"], ["--lam", ">= 0"]),
        (["--early-stop", "-4"], ["--early-stop", ">= 0"]),
        (["--restarts", "0"], ["--restarts", ">= 1"]),
        (["--io-threads", "0"], ["error: --io-threads must be >= 1, got 0"]),  # not `workers` (--workers is Ray's)
        (["--mask", "center:x"], ["center:x", "number"]),
        (["--mask", "full"], ["full", "nothing to fill"]),
        (["--mask", "random:0"], ["random:0", "nothing to fill"]),
        (["--model", str(export / "encoder.onnx")], ["encoder.onnx", "not a gcomp export's graph"]),
        (["--model", str(tmp_path / "other.onnx")], ["other.onnx", "not a gcomp export's graph"]),
        (["--model", str(tmp_path / "missing")], ["model not found", "missing"]),
        (["--shard", "3/2"], ["shard"]),
    ]
    for args, needles in cases:
        r = runner.invoke(app, ["complete", str(src), str(out), *args, "--iters", "1", "--no-progress"])
        _refused(r, *needles)
        assert not out.exists(), f"{args}: the output folder was created before the refusal"


def test_one_image_output_gets_no_summary_beside_it(tmp_path):
    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    dest = tmp_path / "done" / "face.png"
    r = runner.invoke(app, ["complete", str(src / "face_00.png"), str(dest), "--iters", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in dest.parent.iterdir()) == ["face.png"] and "summary:" not in r.stdout
    r = runner.invoke(app, ["complete", str(src / "face_00.png"), str(tmp_path / "folder"), "--iters", "1", "--no-progress"])
    assert r.exit_code == 0 and sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["face_00.png", "gcomp-summary.json"]


def test_missing_and_mismatched_masks_fail_only_their_images(tiny_ckpt, tmp_path):
    src, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    make_faces(src, n=3)
    masks.mkdir()
    hole = np.zeros((32, 32), np.uint8)
    hole[8:24, 8:24] = 255
    cv2.imwrite(str(masks / "face_00.png"), hole)
    cv2.imwrite(str(masks / "face_01.png"), cv2.resize(hole, (20, 20)))  # the wrong size
    # face_02: no mask at all
    r = runner.invoke(app, ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--mask", str(masks),
                            "--iters", "1", "--no-progress"])
    assert r.exit_code == 1, r.output
    errs = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errs) == 2, errs
    # the README's one form, `error: <input file as given>: <reason>`, as for an unreadable image
    assert f"error: {src / 'face_01.png'}: mask {masks / 'face_01.png'} is 20x20, the image 32x32" in errs[0], errs
    assert errs[1].startswith(f"error: {src / 'face_02.png'}: no mask in {masks} (looked for {masks / 'face_02'}.*"), errs
    assert sorted(p.name for p in out.glob("*.png")) == ["face_00.png"]


def _mount_or_skip(*args):
    if os.geteuid() != 0 or subprocess.run(["mount", *args], capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(args[:-1])}): needs root and mount permission")


def test_read_only_output_is_one_clear_error(tiny_ckpt, tmp_path):
    src, ro = tmp_path / "in", tmp_path / "ro"
    make_faces(src, n=2)
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    else:
        _mount_or_skip("--bind", "-o", "ro", str(ro), str(ro))
    try:
        for out in (ro, ro / "new"):
            r = runner.invoke(app, ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--iters", "1", "--no-progress"])
            _refused(r, "not writable", str(out))
        assert list(ro.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], capture_output=True)


def test_full_output_leaves_no_partial_file(tiny_ckpt, tmp_path):
    """A full disk (a 64 KiB tmpfs): images that fit are written whole, the others fail with a line naming them;
    no partial or temporary file is left."""
    src, full = tmp_path / "in", tmp_path / "full"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # ~50 KB each as PNG: the first fits, the rest do not
        cv2.imwrite(str(src / f"noise_{i}.png"), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    full.mkdir()
    _mount_or_skip("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full))
    try:
        r = runner.invoke(app, ["complete", str(src), str(full), "--model", str(tiny_ckpt), "--iters", "1",
                                "--face", "off", "--batch-size", "1", "--no-progress"])
        assert r.exit_code in (1, 2), r.output
        errs = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert errs and all("No space left on device" in e for e in errs), r.stderr
        assert all("noise_" in e or "gcomp-summary" in e for e in errs), errs
        written = sorted(full.iterdir())
        assert not [p for p in written if p.name.startswith(".gcomp-")], written  # no temporary file left
        for p in written:
            if p.suffix == ".png":
                assert cv2.imread(str(p)) is not None and cv2.imread(str(p)).shape == (128, 128, 3)  # whole
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)



def _faces_job(tiny_ckpt, tmp_path, n):
    """A folder of n synthetic faces, its output folder, and the `gcomp complete` arguments between them."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_faces(src, n=n)
    return src, out, ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--iters", "1", "--no-progress"]


def test_a_thin_strip_beside_faces_does_not_stop_the_job(tiny_ckpt, tmp_path):
    """A 5000x3 image once raised cv2.error inside the face finder and aborted the whole job."""
    src, out, args = _faces_job(tiny_ckpt, tmp_path, 2)
    cv2.imwrite(str(src / "strip.png"), np.full((3, 5000, 3), 120, np.uint8))
    r = runner.invoke(app, args)
    assert "Traceback" not in r.output and r.exit_code in (0, 1), r.output
    assert (out / "face_00.png").is_file() and (out / "face_01.png").is_file()
    assert json.loads((out / "gcomp-summary.json").read_text())["done"] >= 2


def test_an_empty_file_where_an_output_belongs_is_redone(tiny_ckpt, tmp_path):
    _, out, args = _faces_job(tiny_ckpt, tmp_path, 2)
    assert runner.invoke(app, args).exit_code == 0
    good = (out / "face_01.png").read_bytes()
    (out / "face_01.png").write_bytes(b"")  # outputs are atomic: an empty one is not ours
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "face_01.png").read_bytes() == good


def test_a_rerun_with_nothing_to_do_keeps_the_summary_and_the_next_change_still_warns(tiny_ckpt, tmp_path):
    _, out, args = _faces_job(tiny_ckpt, tmp_path, 3)
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "gcomp-summary.json").read_bytes()
    assert json.loads(first)["done"] == 3
    r = runner.invoke(app, args)  # nothing to do
    assert r.exit_code == 0 and "nothing to do" in r.stderr
    assert (out / "gcomp-summary.json").read_bytes() == first  # not overwritten by done 0, images_per_s 0
    (out / "face_02.png").unlink()
    r = runner.invoke(app, [*args, "--mask", "left"])
    assert r.exit_code == 0 and "warning:" in r.stderr and "mask" in r.stderr, r.stderr


def test_a_rerun_whose_only_work_fails_keeps_the_outputs_settings_so_a_change_still_warns(tiny_ckpt, tmp_path):
    """The summary of a rerun that completes nothing but has failures to record replaces the one that described the
    outputs: it once lost their settings, so the next rerun with --mask left filled the fixed image with that mask
    in silence (OUTPUT mixing masks)."""
    src, out, args = _faces_job(tiny_ckpt, tmp_path, 2)
    (src / "bad.png").write_text("not an image")
    assert runner.invoke(app, args).exit_code == 1
    r = runner.invoke(app, args)  # nothing new: the bad image fails again
    s = json.loads((out / "gcomp-summary.json").read_text())
    assert r.exit_code == 1 and s["done"] == 0 and s["n_failed"] == 1, r.output
    assert [e["mask"] for e in s["earlier_settings"]] == ["center"]  # the two outputs' settings, carried forward
    make_faces(tmp_path / "fixed", n=1)
    (src / "bad.png").write_bytes((tmp_path / "fixed" / "face_00.png").read_bytes())
    r = runner.invoke(app, [*args, "--mask", "left"])
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert r.exit_code == 0 and len(warnings) == 1 and "mask: center -> left" in warnings[0], r.stderr
    r = runner.invoke(app, [*args, "--overwrite"])  # all redone with one mask: nothing earlier is left to warn about
    assert r.exit_code == 0 and "warning:" not in r.stderr, r.stderr
    assert "earlier_settings" not in json.loads((out / "gcomp-summary.json").read_text())


def test_a_rerun_with_other_settings_and_nothing_to_do_warns_and_keeps_the_summary(tiny_ckpt, tmp_path):
    """The outputs are still those the first run made: its summary (figures, settings) stays, byte for byte, while
    the rerun warns that its settings differ; the outputs' own settings again: no warning."""
    _, out, args = _faces_job(tiny_ckpt, tmp_path, 2)
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "gcomp-summary.json").read_bytes()
    for extra in (["--mask", "left"], ["--seed", "3", "--blend", "none"]):
        r = runner.invoke(app, [*args, *extra])
        warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
        assert r.exit_code == 0 and len(warnings) == 1 and "kept as they are" in warnings[0], r.stderr
        assert (out / "gcomp-summary.json").read_bytes() == first, extra
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "warning:" not in r.stderr and "nothing to do" in r.stderr, r.stderr


def test_a_folder_to_an_image_file_name_is_refused_and_creates_nothing(tiny_ckpt, tmp_path):
    """`gcomp complete in/ out.png` once made a folder out.png/ full of outputs; one image to out.png still works."""
    import gcomp

    src, _, args = _faces_job(tiny_ckpt, tmp_path, 2)
    for name in ("out.png", "sub/out.JPG"):
        out = tmp_path / name
        r = runner.invoke(app, [*args[:2], str(out), *args[3:]])
        _refused(r, f"{out}: INPUT {src} is a folder, so OUTPUT must be a folder, not an image file name")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], name  # nothing created, no model loaded
        with gcomp.open_model(tiny_ckpt) as model, pytest.raises(ValueError, match="OUTPUT must be a folder"):
            model.complete_files(src, out, iters=1)  # the Python API refuses it too
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], name
    r = runner.invoke(app, [*args[:1], str(src / "face_00.png"), str(tmp_path / "out.png"), *args[3:]])
    assert r.exit_code == 0 and (tmp_path / "out.png").is_file(), r.output  # one image: that file
    (tmp_path / "folder.png").mkdir()  # an existing folder is a folder, whatever its name
    r = runner.invoke(app, [*args[:2], str(tmp_path / "folder.png"), *args[3:]])
    assert r.exit_code == 0 and (tmp_path / "folder.png" / "face_01.png").is_file(), r.output


def test_a_tiny_array_is_too_small_not_a_mask_problem():
    """model.complete on a 1x1 array once said "the mask leaves nothing to fill" (a mask kind drawn on one pixel
    keeps it): arrays get the minimum files get, in the same words."""
    import gcomp
    from gcomp.engine import images

    with gcomp.open_model(backend="onnxruntime") as model:
        for h, w in ((1, 1), (2, 2), (3, 200)):
            with pytest.raises(gcomp.ImageError) as e:
                model.complete(np.full((h, w, 3), 90, np.uint8), name="tiny.png", iters=1)
            assert str(e.value) == (f"tiny.png: {w}x{h} is too small to complete (the minimum is {images.MIN_SIDE}x"
                                    f"{images.MIN_SIDE} pixels)")
        with pytest.raises(gcomp.ImageError, match="^000001: 2x2 is too small"):  # names the image in a list
            model.complete_many([np.zeros((64, 64, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)], iters=1)
        side = images.MIN_SIDE
        assert model.complete(np.full((side, side, 3), 90, np.uint8), iters=1).shape == (side, side, 3)


@pytest.mark.parametrize("args, says", [
    (["complete", "in", "out", "--iters", "abc"], "Invalid value for '--iters'"),
    (["complete"], "Missing argument 'INPUT'"),
    (["complete", "in", "out", "--bogus"], "No such option: --bogus"),
])
def test_usage_errors_are_one_gcomp_line(args, says):
    """The console script's usage errors in gcomp's form, not Click's boxed multi-line `Error:`."""
    r = subprocess.run([sys.executable, "-m", "gcomp", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
    assert lines[0].endswith(f"(see gcomp {args[0]} --help)")


def test_progress_without_a_terminal_is_periodic_plain_lines(monkeypatch, capsys):
    """Without a TTY (CI logs, nohup, Ray), progress is a line every GCOMP_PROGRESS_EVERY seconds: count, rate, ETA."""
    from gcomp.engine import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    bar = progress.ProgressBar(True, 4, "completing")
    assert bar.plain and bar.p is None
    for _ in range(4):
        bar.advance()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("completing: 4/4 (100%), ") and "/s" in lines[-1], lines
    assert "ETA" in lines[0]
    progress.ProgressBar(False, 4).advance()  # disabled: silent
    assert capsys.readouterr().err == ""


def test_a_hole_too_large_for_the_exact_blend_is_announced_with_its_cost():
    from gcomp.engine.prepare import LARGE_HOLE_NOTE, large_hole_note

    known = np.ones((3000, 3000), np.float32)
    assert large_hole_note("a.png", known) is None
    known[:2100, :2100] = 0  # 4.4 megapixels of hole
    note = large_hole_note("a.png", known)
    assert 2100 * 2100 > LARGE_HOLE_NOTE and note.startswith("note: a.png: the hole is 4 megapixels")
    assert "0.7 GB" in note and "--blend none" in note
    # said where the job blends, not under --blend none (which needs none of that memory)
    from gcomp.engine.images import Image
    from gcomp.engine.jobs import Item
    from gcomp.engine.masks import MaskSpec
    from gcomp.engine.prepare import prepare_image

    rgb = np.zeros((4200, 4200, 3), np.uint8)  # a center hole of 2100x2100
    for blends, expect in [(True, 1), (False, 0)]:
        said: list[str] = []
        prepare_image(Item(None, "a.png", None), Image(rgb, rgb), MaskSpec.parse("center"), 8, 0, False, "off",
                      said.append, blends=blends)
        assert len([s for s in said if "megapixels" in s]) == expect, said
