"""The completion job end to end, through the Python API and the CLI."""
import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from gcomp.cli.app import app  # noqa: E402
from gcomp.engine import images  # noqa: E402
from gcomp.engine.backends.base import Backend, ModelInfo, SearchResult  # noqa: E402
from gcomp.engine.api import complete  # noqa: E402
from gcomp.engine.batch import complete_batch  # noqa: E402
from gcomp.engine.jobs import Item  # noqa: E402
from gcomp.engine.options import CompleteOptions, Settings  # noqa: E402
from gcomp.engine.prepare import Prepared  # noqa: E402
from gcomp.engine.masks import make_mask  # noqa: E402
from gcomp.engine.search import SearchParams  # noqa: E402

runner = CliRunner()


def _read(p):
    return cv2.imread(str(p), cv2.IMREAD_UNCHANGED)


def test_cli_completes_a_folder_with_a_corrupt_file(tiny_ckpt, faces, tmp_path):
    src = faces[0].parent
    (src / "sub").mkdir()
    images.write(src / "sub" / "deep.png", _read(faces[1]))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "notes.txt").write_text("ignored: not an image name")
    out = tmp_path / "out"
    r = runner.invoke(app, ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--mask", "center",
                            "--iters", "5", "--batch-size", "4", "--blend", "none", "--no-progress"])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    done = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert done == sorted([f.name for f in faces] + ["sub/deep.png"])
    known = make_mask("center", 32).astype(bool)
    for f in faces:
        a, b = _read(f), _read(out / f.name)
        assert np.array_equal(a[known], b[known])  # every pixel outside the hole unchanged
        assert not np.array_equal(a[~known], b[~known])  # the hole was filled
    summary = json.loads((out / "gcomp-summary.json").read_text())
    assert summary["done"] == 7 and summary["n_failed"] == 1 and "broken.png" in summary["failed"][0]["file"]
    # a rerun skips what is finished and only retries the broken file
    r2 = runner.invoke(app, ["complete", str(src), str(out), "--model", str(tiny_ckpt), "--iters", "5", "--no-progress"])
    assert r2.exit_code == 1 and "skipped 7" in r2.stdout


def test_bad_model_and_mask_are_one_line_errors(tiny_ckpt, faces, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(tiny_ckpt.read_bytes()[:3000])  # torch's message for this was several sentences long
    for args, needle in [(["--model", str(bad)], "not a readable checkpoint"),
                         (["--model", str(trunc)], "trunc.pt: not a readable checkpoint (not a PyTorch zip file: "
                                                   "truncated, or another format)"),
                         (["--model", str(tiny_ckpt), "--mask", "blob"], "neither a kind"),
                         (["--model", str(tmp_path / "none.pt")], "model not found"),
                         # the bundled model is an export: say so and name the backends that run it
                         (["--backend", "torch"], "is an ONNX export, not a training checkpoint"),
                         (["--backend", "torch"], "onnxruntime or openvino")]:
        r = runner.invoke(app, ["complete", str(faces[0]), str(tmp_path / "o"), *args])
        assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_an_empty_shard_says_so_rather_than_no_images(tiny_ckpt, faces, tmp_path):
    from gcomp.engine.jobs import in_shard

    src = tmp_path / "one"
    src.mkdir()
    faces[0].rename(src / faces[0].name)
    empty = next(k for k in range(2) if not in_shard(faces[0].name, (k, 2)))
    r = runner.invoke(app, ["complete", str(src), str(tmp_path / "o"), "--model", str(tiny_ckpt), "--shard",
                            f"{empty}/2", "--iters", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"note: shard {empty}/2 holds none of the 1 image under {src}" in r.stderr and "no images" not in r.stderr
    r = runner.invoke(app, ["complete", str(tmp_path / "o"), str(tmp_path / "o3"), "--model", str(tiny_ckpt),
                            "--iters", "1", "--no-progress"])  # a folder with no image at all (only a summary)
    assert r.exit_code == 0 and f"note: no images under {tmp_path / 'o'} (.png" in r.stderr, r.output


def test_formats_sizes_and_modes_are_kept(tiny_ckpt, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8), (7, 7), 3)
    images.write(src / "big.png", big)
    images.write(src / "photo.jpg", big)
    images.write(src / "gray.png", big[:, :, 0])
    rgba = np.dstack([big, np.full(big.shape[:2], 200, np.uint8)])
    images.write(src / "rgba.png", rgba)
    images.write(src / "deep.png", big.astype(np.uint16) * 257)
    s = complete(src, tmp_path / "out", tiny_ckpt,
                 options=CompleteOptions(search=SearchParams(iters=3), mask="center"), progress=False)
    assert s.done == 5 and not s.failed
    out = {p.name: _read(p) for p in (tmp_path / "out").iterdir() if p.suffix != ".json"}
    assert out["big.png"].shape == (90, 70, 3)
    assert out["gray.png"].shape == (90, 70)
    assert out["rgba.png"].shape == (90, 70, 4) and (out["rgba.png"][:, :, 3] == 200).all()
    assert out["deep.png"].dtype == np.uint16
    assert out["photo.jpg"].shape == (90, 70, 3)
    known = cv2.resize(make_mask("center", 32), (70, 90), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert np.array_equal(out["big.png"][known], big[known])
    assert np.array_equal(out["deep.png"][known], (big.astype(np.uint16) * 257)[known])
    assert not np.array_equal(out["big.png"][~known], big[~known])


class _FakeBackend(Backend):
    """Losses chosen by the test: restart selection must pick the lowest per image."""

    name = "fake"

    def __init__(self, losses):
        super().__init__()
        self.losses = np.asarray(losses, np.float32)
        self.info = ModelInfo(size=8, zdim=2)

    def search(self, z0, y, w, hp, callback=None):
        return SearchResult(z=z0, loss=self.losses.copy())

    def generate(self, z):
        return np.tile(z[:, :1, None, None], (1, 3, 8, 8))


def test_restart_selection_keeps_the_lowest_final_loss():
    items = []
    for i in range(2):
        rgb = np.zeros((8, 8, 3), np.uint8)
        known = make_mask("center", 8)
        items.append(Prepared(Item(None, f"im{i}.png", None), images.Image(rgb, rgb), known,
                              images.to_model_input(rgb, 8), known[None], known[None]))
    be = _FakeBackend([5.0, 1.0, 3.0, 7.0, 2.0, 9.0])  # image 0: restart 1; image 1: restart 1
    opts = Settings.resolve(CompleteOptions(restarts=3, search=SearchParams(iters=1)))
    outs, stats = complete_batch(be, items, opts)
    assert stats["best_restart"] == [1, 1] and stats["loss"] == [1.0, 2.0]


def test_no_graph_computes_a_loss_that_decides_nothing():
    """0 iterations and one start: the encoder's (here the start's) latent goes straight to the generator; the
    step graph (a forward and backward pass of G and D) is not called for a loss nothing uses."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    known = make_mask("center", 8)
    item = Prepared(Item(None, "im.png", None), images.Image(rgb, rgb), known, images.to_model_input(rgb, 8),
                    known[None], known[None])
    be = _FakeBackend([1.0])
    be.search = None  # any call fails
    outs, stats = complete_batch(be, [item], Settings.resolve(CompleteOptions(search=SearchParams(iters=0))))
    assert np.isnan(stats["loss"][0]) and stats["best_restart"] == [0] and stats["seconds"] == 0.0
    be2 = _FakeBackend([1.0])
    outs2, _ = complete_batch(be2, [item], Settings.resolve(CompleteOptions(search=SearchParams(iters=0), blend="none")))
    outs3, stats3 = complete_batch(_FakeBackend([4.0]), [item],
                                   Settings.resolve(CompleteOptions(search=SearchParams(iters=1), blend="none")))
    assert np.array_equal(outs2[0], outs3[0]) and stats3["loss"] == [4.0]  # the same latent, searched or not


def test_save_progress_writes_snapshots(tiny_ckpt, faces, tmp_path):
    out = tmp_path / "out"
    s = complete(faces[0].parent, out, tiny_ckpt, progress=False,
                 options=CompleteOptions(search=SearchParams(iters=100), save_progress=True, batch_size=8))
    snaps = sorted(p.name for p in (out / "_gcomp_progress" / "batch_00000").iterdir())
    assert snaps == ["iter_00050.png", "iter_00100.png"] and s.done == len(faces)
    # an early stop before the next snapshot: its last state is written too (it was not: no snapshot at all)
    out2 = tmp_path / "out2"
    complete(faces[0].parent, out2, tiny_ckpt, progress=False,
             options=CompleteOptions(search=SearchParams(iters=100, lr=1e-30, patience=3), save_progress=True,
                                     batch_size=8))
    snaps = sorted(p.name for p in (out2 / "_gcomp_progress" / "batch_00000").iterdir())
    assert len(snaps) == 1 and int(snaps[0][5:10]) < 50, snaps


def test_poisson_blend_keeps_known_pixels(tiny_ckpt, faces, tmp_path):
    s = complete(faces[0].parent, tmp_path / "out", tiny_ckpt, progress=False,
                 options=CompleteOptions(search=SearchParams(iters=2), blend="poisson"))
    assert s.done == len(faces)
    known = make_mask("center", 32).astype(bool)
    for f in faces:
        assert np.array_equal(_read(f)[known], _read(tmp_path / "out" / f.name)[known])


def test_poisson_blend_of_the_image_itself_is_the_identity():
    from gcomp.engine.blend import blend

    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (9, 9), 4)
    for kind in ("center", "left", "random"):
        known = make_mask(kind, 40, rng=rng)
        out = blend(rgb, rgb.copy(), known, "poisson")
        assert np.abs(out.astype(int) - rgb).max() <= 3, kind


def test_poisson_weight_mixes_the_blend_with_the_harmonic_fill():
    """poisson:A solves the system with A x G's gradients: by linearity A x poisson + (1 - A) x the harmonic
    fill (within the rounding of each to uint8); A = 0 ignores G; `auto` is the measured A. Both solvers
    (exact sparse, and seamlessClone above EXACT_MAX hole pixels) obey it."""
    import gcomp.engine.blend as B

    rng = np.random.default_rng(1)
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (9, 9), 4)
    g = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (5, 5), 2)
    known = make_mask("center", 40)
    for exact_max in (B.EXACT_MAX, 10):  # 10: force the seamlessClone path
        old, B.EXACT_MAX = B.EXACT_MAX, exact_max
        try:
            full, half, zero = (B.blend(rgb, g, known, h).astype(float) for h in ("poisson", "poisson:0.5", "poisson:0"))
            other = B.blend(rgb, 255 - g, known, "poisson:0").astype(float)
            assert B.blend(rgb, g, known, "auto").tolist() == B.blend(rgb, g, known, B.AUTO).tolist()
        finally:
            B.EXACT_MAX = old
        hole = known == 0
        assert np.abs(half - (0.5 * full + 0.5 * zero))[hole].max() <= 1.5, exact_max
        assert np.abs(other - zero)[hole].max() <= 1, exact_max  # weight 0: G does not matter
        assert np.abs(full - zero)[hole].max() > 20  # while weight 1 follows G
    assert B.parse_blend("auto") == ("poisson", 0.5) and B.parse_blend("poisson") == ("poisson", 1.0)
    for bad in ("poisson:2", "poisson:-0.1", "poisson:x", "poisson:nan", "poisson:", "none:0.5", "none:", "seamless"):
        with pytest.raises(ValueError, match="blend"):
            B.parse_blend(bad)
    with pytest.raises(ValueError, match=r"poisson:A takes a weight A in \[0, 1\], got 'poisson:2'"):
        CompleteOptions(blend="poisson:2")


def test_face_crop_on_a_real_photo(tiny_ckpt, tmp_path):
    """scikit-image's astronaut (public domain): the hole is the center of the face crop, at full resolution."""
    from skimage import data

    from gcomp.engine.faces import find_face

    rgb = data.astronaut()
    x, y, side = find_face(rgb)
    assert 150 < x < 220 and 50 < y < 110 and 70 < side < 110  # her face, not the flag or the helmet
    src = tmp_path / "in"
    images.write_rgb(src / "astronaut.png", rgb)
    images.write_rgb(src / "noise.png", cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (80, 80, 3), np.uint8), (9, 9), 3))
    r = runner.invoke(app, ["complete", str(src), str(tmp_path / "out"), "--model", str(tiny_ckpt), "--iters", "3",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "noise.png: no face found" in r.stderr
    out = cv2.cvtColor(_read(tmp_path / "out" / "astronaut.png"), cv2.COLOR_BGR2RGB)
    hole = np.zeros(rgb.shape[:2], bool)
    hole[y:y + side, x:x + side] = cv2.resize(make_mask("center", 32), (side, side), interpolation=cv2.INTER_NEAREST) == 0
    assert np.array_equal(out[~hole], rgb[~hole]) and not np.array_equal(out[hole], rgb[hole])
    r = runner.invoke(app, ["complete", str(src / "astronaut.png"), str(tmp_path / "off.png"), "--model", str(tiny_ckpt),
                            "--iters", "1", "--face", "off", "--no-progress"])
    off = cv2.cvtColor(_read(tmp_path / "off.png"), cv2.COLOR_BGR2RGB)
    assert not np.array_equal(off[200:300, 200:300], rgb[200:300, 200:300])  # the whole image's center instead


def test_a_false_face_in_texture_does_not_take_the_crop():
    """OpenCV's default cascade fires on texture (large photos are detected at 1600 px, full of it): here a larger
    false face than the astronaut's real one, which the old "largest box" rule cropped, putting the hole on the
    texture. Every candidate is now confirmed by a second cascade on its crop."""
    from skimage import data

    from gcomp.engine import faces

    g = cv2.resize(np.random.default_rng(0).integers(0, 255, (100, 100), dtype=np.uint8), (640, 640),
                   interpolation=cv2.INTER_CUBIC)
    rgb = np.dstack([g, g, g])
    rgb[40:240, 40:240] = cv2.resize(data.astronaut(), (200, 200), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    boxes = faces._cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    largest = max(boxes, key=lambda b: b[2] * b[3])
    assert len(boxes) >= 2 and largest[0] > 300, boxes  # the control: the largest candidate is on the texture
    assert not faces._confirmed(gray, largest)
    x, y, side = faces.find_face(rgb)
    assert 80 < x < 140 and 40 < y < 100 and 20 < side < 50, (x, y, side)  # the astronaut's face


def test_face_auto_leaves_aligned_faces_alone(tiny_ckpt, tmp_path):
    """Aligned face crops at twice the model's size (the astronaut's face, cropped around the face with a little
    margin, 64x64 for the 32-px model): --face auto must not crop them, so the hole is where the mask kind says in
    every image, although OpenCV does find a face in them."""
    from skimage import data

    from gcomp.engine.faces import crop_helps, find_face
    from gcomp.engine.jobs import Item
    from gcomp.engine.masks import MaskSpec
    from gcomp.engine.prepare import prepare

    rgb = data.astronaut()
    x, y, side = find_face(rgb)
    src = tmp_path / "in"
    found = 0
    for i, (pad, flip, gain) in enumerate([(p, f, g) for p in (0.1, 0.2, 0.3) for f in (False, True) for g in (0.8, 1.1)]):
        m = int(side * pad)
        crop = rgb[y - m:y + side + m, x - m:x + side + m]
        crop = np.clip(cv2.resize(crop[:, ::-1] if flip else crop, (64, 64), interpolation=cv2.INTER_AREA) * gain, 0, 255)
        images.write_rgb(src / f"aligned_{i:02d}.png", crop.astype(np.uint8))
        box = find_face(crop.astype(np.uint8))
        found += box is not None
        assert box is None or not crop_helps(box, 64, 64)
    assert found >= 6, "the detector should find the face in most of these crops (else this test shows nothing)"
    spec = MaskSpec.parse("center")
    for f in sorted(src.iterdir()):
        p = prepare(Item(f, f.name, tmp_path / f.name), spec, 32, 0, False, face="auto")
        assert p.box is None, f.name
        assert np.array_equal(p.known, spec.known(f.name, (64, 64), 32, 0)), f.name  # the mask kind's region
    r = runner.invoke(app, ["complete", str(src), str(tmp_path / "out"), "--model", str(tiny_ckpt), "--iters", "1",
                            "--mask", "center", "--no-progress"])
    assert r.exit_code == 0, r.output
    known = cv2.resize(make_mask("center", 32), (64, 64), interpolation=cv2.INTER_NEAREST).astype(bool)
    for f in sorted(src.iterdir()):
        a, b = _read(f), _read(tmp_path / "out" / f.name)
        assert np.array_equal(a[known], b[known]) and not np.array_equal(a[~known], b[~known]), f.name


def test_rerun_with_other_settings_warns_and_the_summary_keeps_the_outputs_settings(exported, faces, tmp_path,
                                                                                     monkeypatch):
    """The resume rule keeps existing outputs; when an earlier run recorded in OUTPUT (any shard) made them with
    other settings, the rerun says so in one warning line naming what changed; a rerun that writes something keeps
    those settings in its summary (earlier_settings), one that writes nothing leaves the summary as it was, so the
    folder's summaries still describe its files. Spellings of the same
    settings (a relative or absolute model path, `auto` or the blend it means) are not changes."""
    monkeypatch.chdir(exported.parent)
    out = tmp_path / "out"
    base = ["complete", str(faces[0].parent), str(out), "--iters", "1", "--no-progress"]
    rel = base + ["--model", exported.name]

    def run(*extra, args=None):
        r = runner.invoke(app, (args or base + ["--model", str(exported)]) + list(extra))
        assert r.exit_code == 0, r.output
        return r.stderr, [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]

    run()
    before = {f.name: f.read_bytes() for f in out.glob("*.png")}
    first = (out / "gcomp-summary.json").read_bytes()
    _, warn = run("--mask", "left")
    assert len(warn) == 1 and "mask: center -> left" in warn[0] and f"the {len(faces)} outputs" in warn[0], warn
    assert {f.name: f.read_bytes() for f in out.glob("*.png")} == before  # kept as they were
    # nothing was done: the summary is still the record of the run that made the outputs (its figures, its settings)
    assert (out / "gcomp-summary.json").read_bytes() == first
    s = json.loads(first)
    assert s["done"] == len(faces) and s["settings"]["mask"] == "center" and s["settings"]["blend"] == "poisson:0.5"
    err, warn = run("--blend", "poisson:0.5", args=rel)  # the outputs' settings, spelled otherwise
    assert warn == [] and f"note: all {len(faces)} outputs exist" in err
    assert "earlier_settings" not in json.loads((out / "gcomp-summary.json").read_text())
    # another shard's summary counts too: a shard run with other settings, then the whole folder
    from gcomp.engine.jobs import in_shard

    (faces[0].parent / "extra.png").write_bytes(faces[0].read_bytes())
    k = 0 if in_shard("extra.png", (0, 2)) else 1
    run("--shard", f"{k}/2", "--seed", "5")  # writes extra.png with seed 5, records it in its shard's summary
    err, warn = run()
    assert warn and "seed: 5 -> 0" in warn[0], err  # the shard's one output was made with seed 5
    single = runner.invoke(app, ["complete", str(faces[0]), str(out / faces[0].name), "--model", str(exported),
                                 "--no-progress"])
    assert single.exit_code == 0 and "note: the output exists: kept as it is" in single.stderr
    # other settings with something to do: that run's summary keeps the settings the other outputs were made with
    (out / faces[1].name).unlink()
    _, warn = run("--mask", "left")
    s = json.loads((out / "gcomp-summary.json").read_text())
    assert warn and s["done"] == 1 and s["settings"]["mask"] == "left", warn
    assert "center" in [e["mask"] for e in s["earlier_settings"]]


def test_blend_many_gives_each_images_own_blend():
    """Images sharing a hole are solved together (one multi-right-hand-side solve): the same bytes as one by one,
    whatever the mix of holes, sizes and blends in the batch."""
    from gcomp.engine import blend as B

    rng = np.random.default_rng(0)
    shapes = [(32, 32), (32, 32), (40, 24), (32, 32), (32, 32)]
    rgbs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in shapes]
    fills = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in shapes]
    knowns = [make_mask("center", 32), make_mask("center", 32), np.ones((40, 24), np.float32),
              make_mask("left", 32), make_mask("center", 32)]
    knowns[2][10:20, 5:15] = 0
    for how in ("poisson:0.75", "poisson", "none"):
        many = B.blend_many(rgbs, fills, knowns, how)
        assert all(np.array_equal(m, B.blend(r, f, k, how)) for m, r, f, k in zip(many, rgbs, fills, knowns)), how


def test_blend_stacked_gives_each_image_its_own_blend():
    """The stacked batch (one size): groups in a run or scattered, a mask shared as one array or as equal copies,
    no hole, no context, a hole of its own: the same bytes as blend() one by one."""
    from gcomp.engine import blend as B

    rng = np.random.default_rng(2)
    n = 9
    rgb = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    fill = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    center, own = make_mask("center", 32), make_mask("random", 32, 0.3, rng)
    knowns = [center, center, make_mask("left", 32), center.copy(), np.ones((32, 32), np.float32), center,
              np.zeros((32, 32), np.float32), own, make_mask("left", 32)]
    for how in ("poisson:0.75", "poisson", "none"):
        out = B.blend_stacked(rgb, fill, knowns, how)
        assert out.shape == fill.shape and not np.shares_memory(out, fill) or how == "none"
        assert all(np.array_equal(o, B.blend(r, f, k, how)) for o, r, f, k in zip(out, rgb, fill, knowns)), how


@pytest.mark.parametrize("arrays", [False, True], ids=["files", "arrays"])
@pytest.mark.parametrize("mask", ["center", "random", "half"])
def test_finish_batch_stacked_gives_the_bytes_of_one_by_one(monkeypatch, mask, arrays):
    """A batch of model-size faces is finished as one stacked array: the same outputs as image by image, for a
    mask shared by all (center, half) or drawn per image (random), files (BGR) and arrays (RGB)."""
    import gcomp.engine.batch as batch_mod
    from gcomp.engine.masks import MaskSpec
    from gcomp.engine.prepare import prepare_image

    rng = np.random.default_rng(3)
    opts = Settings.resolve(CompleteOptions(mask=mask, blend="poisson:0.5"))
    spec = MaskSpec.parse(mask)
    batch = []
    for i in range(6):
        bgr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        image = images.Image(original=bgr, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        batch.append(prepare_image(Item(None, f"f{i}.png", None), image, spec, 32, 0, True, rgb_out=arrays))
    x = rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    assert batch_mod._stackable(batch, x)
    stacked = batch_mod.finish_batch(batch, x, opts)
    monkeypatch.setattr(batch_mod, "_stackable", lambda *a: False)
    one_by_one = batch_mod.finish_batch(batch, x, opts)
    assert all(np.array_equal(a, b) for a, b in zip(stacked, one_by_one))
    import dataclasses  # a face crop, or an image of another size than the model's, goes one by one

    assert not batch_mod._stackable([dataclasses.replace(batch[0], box=(0, 0, 32))], x[:1])
    assert not batch_mod._stackable(batch, np.zeros((6, 3, 16, 16), np.float32))


@pytest.mark.parametrize("box", [(10, 30, 13, 39), (0, 40, 0, 26), (0, 40, 26, 52), (0, 20, 0, 52), (20, 40, 0, 52),
                                 (0, 15, 0, 20), (25, 40, 30, 52), (10, 30, 0, 52), (0, 40, 10, 30), (5, 6, 7, 8)],
                         ids=["inside", "left", "right", "top", "bottom", "corner", "other-corner", "rows", "columns",
                              "one-pixel"])
def test_a_rectangular_hole_is_solved_by_transforms_as_superlu_solves_it(monkeypatch, box):
    """A rectangle (inside the image, or on one, two or three of its borders: Dirichlet and Neumann ends) is solved
    in its eigenbasis, no factorisation: the values of SuperLU's solve of the same system to 1e-11 of their size,
    and the same blended bytes (a one-pixel hole's ties at half-levels included)."""
    from gcomp.engine import blend as B

    y0, y1, x0, x1 = box
    hole = np.zeros((40, 52), bool)
    hole[y0:y1, x0:x1] = True
    packed = np.packbits(hole).tobytes()
    B._system.cache_clear()
    fast = B._system(hole.shape, packed)
    assert fast.lu is None and fast.rect is not None
    monkeypatch.setattr(B, "_rect", lambda *a: None)  # the same system, factorised
    B._system.cache_clear()
    slow = B._system(hole.shape, packed)
    B._system.cache_clear()
    assert slow.lu is not None
    rng = np.random.default_rng(0)
    b = rng.integers(-600, 600, (len(fast.ys), 6)) * 0.5
    ref = slow.lu.solve(b)
    assert np.abs(fast.rect.solve(b) - ref).max() <= 1e-11 * np.abs(ref).max()
    g = rng.integers(0, 256, (len(fast.read), 6), dtype=np.uint8)
    k = rng.integers(0, 256, (len(fast.known), 6), dtype=np.uint8)
    assert np.array_equal(B._solve(fast, g, k, 0.5), B._solve(slow, g, k, 0.5))


def test_a_hole_of_another_shape_or_a_long_strip_is_factorised(monkeypatch):
    from gcomp.engine import blend as B

    hole = np.zeros((32, 32), bool)
    hole[5:20, 5:20] = True
    hole[19:30, 10:12] = True  # an L
    strip = np.zeros((32, 32), bool)
    strip[10:12, 2:30] = True  # a rectangle longer than RECT_MAX_SIDE (made 16 here): its eigenvectors are too big
    monkeypatch.setattr(B, "RECT_MAX_SIDE", 16)
    for h in (hole, strip):
        B._system.cache_clear()
        s = B._system(h.shape, np.packbits(h).tobytes())
        B._system.cache_clear()
        assert s.rect is None and s.lu is not None


def test_blends_in_several_threads_each_run_on_one_blas_thread_and_restore_the_original():
    """The one-BLAS-thread limit is process-wide: blends in 8 threads at once (the Python API from user threads)
    each run under it, and the BLAS thread count is what it was once they are done (overlapping limits left it at
    1 before)."""
    from concurrent.futures import ThreadPoolExecutor

    from gcomp.engine import blend as B

    def blas_threads():
        return [m["num_threads"] for m in B._blas_controller().info() if m["user_api"] == "blas"]

    before = blas_threads()
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    fill = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    inside = []

    def one(i):
        with B._one_blas_thread():
            inside.append(blas_threads())
            return B.blend(rgb, fill, make_mask("random", 48, 0.3, np.random.default_rng(i)), "poisson")

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(32)))
    assert all(all(n == 1 for n in seen) for seen in inside)
    assert blas_threads() == before
    assert all(np.array_equal(o, one(i)) for i, o in enumerate(outs))


def test_blend_many_solves_large_shared_holes_in_chunks_that_fit_its_budget(monkeypatch):
    """Memory does not grow with the batch: a budget of one image's solve splits the group, same bytes."""
    from gcomp.engine import blend as B

    rng = np.random.default_rng(1)
    rgbs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    fills = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    knowns = [make_mask("center", 32)] * 5
    sizes = []
    solve = B._solve  # one call per solve; g's columns: 3 per image
    monkeypatch.setattr(B, "_solve", lambda system, g, *a: sizes.append(g.shape[1] // 3) or solve(system, g, *a))
    monkeypatch.setattr(B, "GROUP_BYTES", 2 * 16 * 16 * 3 * B._SOLVE_BYTES_PER_VALUE)  # two images' worth
    many = B.blend_many(rgbs, fills, knowns, "poisson:0.75")
    assert sizes == [2, 2, 1]
    assert all(np.array_equal(m, B.blend(r, f, k, "poisson:0.75")) for m, r, f, k in zip(many, rgbs, fills, knowns))
