"""The public API (gcomp.open_model): the README's example runs as written, and every way in
(the lower-level batch functions, arrays, files, `gcomp complete`, `gcomp eval`, the Ray driver)
gives the same bytes for the same settings."""
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import gcomp
from gcomp.engine import images

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The python block of the README's *Python API* section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_completes_an_array_in_five_lines_without_torch(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 5, code
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "astronaut.jpg").write_bytes((ROOT / "examples" / "astronaut.jpg").read_bytes())
    guard = ("import sys\n"
             "class NoTorch:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] == 'torch': raise RuntimeError('torch imported')\n"
             "sys.meta_path.insert(0, NoTorch())\n")
    r = subprocess.run([sys.executable, "-c", guard + code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    src, out = cv2.imread(str(tmp_path / "examples" / "astronaut.jpg")), cv2.imread(str(tmp_path / "completed.jpg"))
    assert out is not None and out.shape == src.shape


def test_arrays_and_mask_arrays():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 64, 3), np.uint8)
    hole = np.zeros((64, 64), bool)
    hole[20:40, 10:30] = True  # white = fill
    with gcomp.open_model() as model:
        assert model.settings().iters == model.recommended["iters"] == 0  # the bundled model's, applied at open
        out = model.complete(rgb, hole, iters=3)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.array_equal(out[~hole], rgb[~hole]) and not np.array_equal(out[hole], rgb[hole])
        # the same name and settings: the same result; a list of images in one call too
        again = model.complete_many([rgb, rgb[::-1].copy()], [hole, "center"], names=["image", "b"], iters=3)
        assert np.array_equal(again[0], out)
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            model.complete(rgb.astype(np.float32))
        with pytest.raises(ValueError, match="same size"):
            model.complete(rgb, hole[:10])
        with pytest.raises(gcomp.BackendError, match="does not apply"):
            gcomp.open_model(threads=1, fast=True)


def test_the_bundled_models_open_by_name_and_a_path_of_that_name_wins(tmp_path, monkeypatch):
    from gcomp.engine.api import DEFAULT_MODEL, MODELS, model_path

    assert model_path(None) == model_path("default") == DEFAULT_MODEL
    with gcomp.open_model("small", backend="onnxruntime") as small, gcomp.open_model(backend="onnxruntime") as default:
        gf = [json.loads(m.info.meta["model_config"])["gf"] for m in (small, default)]
        assert small.source == MODELS / "small" and gf == [32, 64]  # the seed's size is the default
        assert small.encoder() is not None and default.encoder() is not None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()
    assert model_path("small") == Path("small")  # the user's folder, not the bundled model


def test_misuse_is_one_clear_error_naming_what_is_wrong():
    """Wrong arguments get gcomp's errors (ValueError / MaskError, BackendError for a closed model) that say what
    was given and what is expected, not Python's or OpenCV's words from deep inside."""
    rgb = np.zeros((64, 64, 3), np.uint8)
    with gcomp.open_model() as model:
        with pytest.raises(gcomp.MaskError, match="the mask must be a kind .* got None"):
            model.complete(rgb, mask=None)
        with pytest.raises(gcomp.MaskError, match="got None"):
            model.complete_many([rgb], None)
        with pytest.raises(ValueError, match=r"empty image \(0x0\)"):
            model.complete(np.zeros((0, 0, 3), np.uint8))
        for bad, hint in [(np.zeros((64, 64, 3), np.uint16), "a // 257"), (np.zeros((64, 64, 3), np.float32), "a * 255"),
                          (np.zeros((64, 64), np.uint8), "grayscale"), (np.zeros((64, 64, 4), np.uint8), "RGBA"),
                          (None, "got None")]:
            with pytest.raises(ValueError, match=f"expected an HxWx3 uint8 RGB array.*{re.escape(hint)}"):
                model.complete(bad)
        with pytest.raises(ValueError, match="complete_many takes a list"):
            model.complete_many(rgb)  # one image, not a list of them
        with pytest.raises(ValueError, match="setting lr must be a number, got 'abc'"):
            model.complete(rgb, lr="abc")
        with pytest.raises(ValueError, match="setting iters must be an integer, got 1.5"):
            model.complete(rgb, iters=1.5)
        with pytest.raises(ValueError, match="setting batch_size must be an integer"):
            model.complete_files("in", "out", batch_size="8")
        with pytest.raises(gcomp.MaskError, match=r"^mask 'blob' \(--mask\) is neither a kind"):
            model.complete(rgb, "blob")  # reads right from the API and from `gcomp complete --mask`
        assert model.complete_many([rgb], shard=[0, 1])[0].shape == rgb.shape  # a list shard: the tuple it means
        enc = model.encoder()
    for call in (lambda: model.complete(rgb), lambda: model.complete_files("in", "out"), lambda: model.encoder()):
        with pytest.raises(gcomp.BackendError, match="is closed.*open it again"):
            call()
    with pytest.raises(gcomp.BackendError, match="encoder was closed"):
        enc(np.zeros((1, 3, 64, 64), np.float32), np.ones((1, 1, 64, 64), np.float32))


# -- the same bytes every way ------------------------------------------------------------------------
OPTS = dict(mask="random:0.6", seed=3, restarts=2, blend="poisson", batch_size=2)
ITERS = 20
# Byte comparisons pin the backend: on a CPU with native bf16, auto picks OpenVINO bf16, whose bytes differ.
BACKEND = "onnxruntime"
ARGS = ["--mask", "random:0.6", "--seed", "3", "--restarts", "2", "--blend", "poisson", "-b", "2",
        "--iters", str(ITERS), "--no-progress", "--backend", BACKEND]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from synth import make_faces

    src = tmp_path_factory.mktemp("same") / "in"
    make_faces(src, n=4)
    make_faces(src / "sub", n=1, size=48, seed=1)  # resized for the search, pasted back
    return src


def _golden(exported, folder) -> dict[str, bytes]:
    """The lower-level path, without the public API: a backend, the model's defaults resolved by hand,
    prepare + complete_batch over the listing in batches, each result encoded as a PNG."""
    from gcomp.engine.backends import open_backend
    from gcomp.engine.batch import complete_batch
    from gcomp.engine.encoder import load_encoder
    from gcomp.engine.jobs import list_todo
    from gcomp.engine.masks import MaskSpec
    from gcomp.engine.api import _defaults
    from gcomp.engine.options import CompleteOptions, Settings, recommended_for
    from gcomp.engine.prepare import prepare
    from gcomp.engine.search import SearchParams

    out = {}
    with open_backend(exported, BACKEND) as be:
        rec = recommended_for(_defaults(be.info.meta.get("defaults")), OPTS["mask"])
        opts = Settings.resolve(CompleteOptions(**OPTS, search=SearchParams(iters=ITERS)), rec)
        todo, _ = list_todo(folder, folder / "unused", opts)
        enc = load_encoder(exported, be.info, opts.init)
        for lo in range(0, len(todo), opts.batch_size):
            batch = [prepare(it, MaskSpec.parse(opts.mask), be.info.size, opts.seed, False, opts.face)
                     for it in todo[lo:lo + opts.batch_size]]
            for p, arr in zip(batch, complete_batch(be, batch, opts, encoder=enc)[0]):
                out[p.item.key] = images.encode(arr, ".png")
    return out


def _pngs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_bytes_from_batches_api_files_arrays_cli_and_eval(exported, folder, tmp_path):
    from gcomp.cli.app import app
    from gcomp.engine.evaluate import evaluate

    golden = _golden(exported, folder)
    assert len(golden) == 5
    r = CliRunner().invoke(app, ["complete", str(folder), str(tmp_path / "cli"), "--model", str(exported), *ARGS])
    assert r.exit_code == 0, r.output
    assert _pngs(tmp_path / "cli") == golden
    with gcomp.open_model(exported, backend=BACKEND) as model:
        model.complete_files(folder, tmp_path / "api", iters=ITERS, **OPTS)
        assert _pngs(tmp_path / "api") == golden
        keys = sorted(golden)
        rgbs = [images.read(folder / k).rgb for k in keys]
        arrays = model.complete_many(rgbs, OPTS["mask"], names=keys, iters=ITERS,
                                     **{k: v for k, v in OPTS.items() if k != "mask"})
        for k, a in zip(keys, arrays):
            assert np.array_equal(a, cv2.cvtColor(images.decode(golden[k]).original, cv2.COLOR_BGR2RGB)), k
        # gcomp eval completes through the same API (images at the model's size: the 32x32 ones)
        opts = gcomp.CompleteOptions(**{k: v for k, v in OPTS.items() if k != "mask"},
                                     search=gcomp.SearchParams(iters=ITERS))
        results, pictures = evaluate(model, folder, [OPTS["mask"]], opts, limit=4, log=lambda m: None)
    small = [k for k in keys if "/" not in k]
    assert len(pictures[OPTS["mask"]]) == len(small) == 4
    for k, (_, out, *_) in zip(small, pictures[OPTS["mask"]]):  # noisy holes, same output
        assert np.array_equal(out, arrays[keys.index(k)]), k


@pytest.mark.slow
def test_same_bytes_from_the_ray_driver(exported, folder, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'gcomp[ray]'")
    from gcomp.engine.ray_driver import complete_ray

    golden = _golden(exported, folder)
    s = complete_ray(folder, tmp_path / "ray", exported, address="local", workers=1, progress=False, backend=BACKEND,
                     log=lambda m: None,
                     options=gcomp.CompleteOptions(**OPTS, search=gcomp.SearchParams(iters=ITERS)))
    assert s.done == 5 and not s.failed
    assert _pngs(tmp_path / "ray") == golden
