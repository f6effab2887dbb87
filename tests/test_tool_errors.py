"""export, train, bench and eval as a user runs them, where a black-box run (2026-12-04) found tracebacks or silent
harm: output paths that cannot be written, values that are not finite, a training run that diverges, a broken
model's NaN fills, an unrolled export's recommendation, TensorRT missing, a few API and option messages."""
import numpy as np
import pytest
from typer.testing import CliRunner

from gcomp.cli.app import app
from gcomp.engine import images
from gcomp.engine.backends import Backend, BackendError
from gcomp.engine.backends.base import ModelInfo, SearchResult
from gcomp.engine.batch import generate_batch
from gcomp.engine.jobs import Item
from gcomp.engine.masks import make_mask
from gcomp.engine.options import CompleteOptions, Settings
from gcomp.engine.prepare import Prepared
from gcomp.engine.search import SearchParams

runner = CliRunner()


def _errors(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def test_export_to_a_path_it_cannot_make_is_one_line_before_the_export(tiny_ckpt, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["export", str(tiny_ckpt), "--out", str(tmp_path / "afile"), "--no-validate"])
    assert r.exit_code == 2 and _errors(r) == [
        f"error: --out: output folder {tmp_path / 'afile'} is not writable: Not a directory"], r.output
    r = runner.invoke(app, ["export", str(tiny_ckpt), "--out", str(tmp_path / "afile" / "sub"), "--no-validate"])
    assert r.exit_code == 2 and len(_errors(r)) == 1 and "Traceback" not in r.output, r.output


def test_train_refuses_a_run_folder_under_a_file_and_values_that_are_not_finite(tmp_path):
    pytest.importorskip("torch")
    from synth import make_faces

    make_faces(tmp_path / "data", n=4, size=32)
    (tmp_path / "afile").write_text("x")
    base = ["train", str(tmp_path / "data"), "--size", "32", "--gf", "8", "--df", "8", "-b", "2", "--workers", "0"]
    for extra, line in (
            (["--out", str(tmp_path / "afile" / "run"), "--steps", "1"],
             f"error: --out {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file, so the run folder cannot be "
             "made there"),
            (["--out", str(tmp_path / "r"), "--epochs", "inf"], "error: --epochs must be a positive number, got inf"),
            (["--out", str(tmp_path / "r"), "--steps", "1", "--lr", "inf"],
             "error: need lr > 0 and 0 <= beta1 < 1, got lr=inf beta1=0.5")):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2 and _errors(r) == [line], r.output
    assert not (tmp_path / "r").exists()


def test_a_training_run_that_diverges_stops_and_says_so(tmp_path):
    pytest.importorskip("torch")
    from synth import make_faces

    from gcomp.train.loop import TrainConfig, TrainError, train

    make_faces(tmp_path / "data", n=4, size=32)
    cfg = TrainConfig(data=[str(tmp_path / "data")], out=str(tmp_path / "run"), size=32, gf=8, df=8, batch_size=2,
                      steps=4, lr=1e30, workers=0, save_every=1, progress=False)
    with pytest.raises(TrainError, match=r"training diverged at step \d: .* \(a lower --lr may help\); "
                                         r"nothing was saved"):
        train(cfg)  # it used to save NaN weights and exit 0; `gcomp complete` then wrote black holes


class _NaNBackend(Backend):
    name = "nan"

    def __init__(self, z_nan=False):
        super().__init__()
        self.info, self.z_nan = ModelInfo(size=8, zdim=2), z_nan

    def search(self, z0, y, w, hp, callback=None):
        return SearchResult(z=np.full_like(z0, np.nan) if self.z_nan else z0, loss=np.ones(len(z0), np.float32),
                            history=[1.0] * hp.iters)

    def generate(self, z):
        return np.full((len(z), 3, 8, 8), np.nan, np.float32)


def test_a_broken_model_fails_the_job_instead_of_writing_black_holes():
    rgb = np.zeros((8, 8, 3), np.uint8)
    known = make_mask("center", 8)
    batch = [Prepared(Item(None, "a.png", None), images.Image(rgb, rgb), known, images.to_model_input(rgb, 8),
                      known[None], known[None])]
    opts = Settings.resolve(CompleteOptions(search=SearchParams(iters=2)))
    with pytest.raises(BackendError, match="the generator returned NaN or infinite values: the model is broken"):
        generate_batch(_NaNBackend(), batch, opts)
    with pytest.raises(BackendError, match=r"the search diverged \(NaN latents after 2 steps, lr 0.01\): lower --lr"):
        generate_batch(_NaNBackend(z_nan=True), batch, opts)


def test_a_restart_that_diverged_does_not_sink_the_others():
    class OneBad(_NaNBackend):
        def search(self, z0, y, w, hp, callback=None):
            z = z0.copy()
            z[1::2] = np.nan  # every image's second restart
            return SearchResult(z=z, loss=np.tile([1.0, np.nan], len(z0) // 2).astype(np.float32), history=[1.0])

        def generate(self, z):
            return np.zeros((len(z), 3, 8, 8), np.float32)

    rgb = np.zeros((8, 8, 3), np.uint8)
    known = make_mask("center", 8)
    batch = [Prepared(Item(None, "a.png", None), images.Image(rgb, rgb), known, images.to_model_input(rgb, 8),
                      known[None], known[None])]
    x, stats = generate_batch(OneBad(), batch, Settings.resolve(CompleteOptions(restarts=2,
                                                                                search=SearchParams(iters=1))))
    assert stats["best_restart"] == [0] and stats["loss"] == [1.0]


def test_an_unrolled_export_recommends_iterations_it_can_run():
    from gcomp.export.onnx_export import fit_to_unroll

    defaults = {"iters": 100, "lr": 3e-4, "masks": {"left": {"iters": 50}, "center": {"blend": "poisson"}}}
    notes = fit_to_unroll(defaults, 3)
    assert defaults["iters"] == 102 and defaults["masks"]["left"]["iters"] == 51 and len(notes) == 2
    assert notes[0] == "the recommended iters 100 is 102 in this export: a multiple of --unroll 3"
    assert fit_to_unroll({"iters": 100}, 10) == [] and fit_to_unroll({"iters": 0}, 3) == []


def test_bench_and_eval_check_their_json_path_first(tmp_path):
    pytest.importorskip("torch")
    r = runner.invoke(app, ["bench", "--iters", "1", "-b", "1", "--json", str(tmp_path)])
    assert r.exit_code == 2 and _errors(r) == [f"error: --json {tmp_path} is a folder: name a file"], r.output
    r = runner.invoke(app, ["eval", str(tmp_path), "--json", str(tmp_path)])
    assert r.exit_code == 2 and _errors(r) == [f"error: --json {tmp_path} is a folder: name a file"], r.output
    r = runner.invoke(app, ["bench", "--iters", "1", "-b", "1,,2"])
    assert r.exit_code == 2 and _errors(r) == [
        "error: --batch-size takes comma-separated whole numbers (e.g. 1,16,64), got '1,,2'"]


def test_bench_without_tensorrt_says_so_before_exporting():
    pytest.importorskip("torch")
    try:
        from gcomp.engine.backends.tensorrt_plan import import_tensorrt

        import_tensorrt()
        pytest.skip("TensorRT is installed here")
    except Exception:
        pass
    r = runner.invoke(app, ["bench", "--iters", "1", "-b", "1", "--backend", "tensorrt"])
    assert r.exit_code == 2 and len(_errors(r)) == 1, r.output
    assert _errors(r)[0].startswith("error: --backend tensorrt needs TensorRT's Python API"), r.output
    assert "export" not in r.output  # it exported the graphs first, then failed with a traceback


def test_api_messages_name_what_was_wrong():
    import gcomp

    with gcomp.open_model("small") as m:
        with pytest.raises(TypeError, match="name must be a string"):
            m.complete(np.zeros((64, 64, 3), np.uint8), name=5)
        for bad in ("bogus", "center:0.9", "random:0"):
            with pytest.raises(ValueError, match="--mask"):
                m.options(mask=bad)

def test_a_bad_shard_names_the_option(capsys):
    from gcomp.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(["complete", "in", "out", "--shard", "abc"])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines() == [
        "error: Invalid value for --shard: expected K/N, e.g. 0/4, got 'abc' (see gcomp complete --help)"]
