"""DCGAN training: data sources, deterministic sampling, the loop, resume, the CLI, DDP (gloo, 2 processes).

Tiny models only (size 32, gf = df = 8, batch 8) on synthetic images made here (never CelebA).
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from typer.testing import CliRunner  # noqa: E402

from gcomp.train import checkpoint  # noqa: E402
from gcomp.train.data import DataError, EpochSampler, ImageSource, StepBatchSampler, decode_image  # noqa: E402
from gcomp.train.loop import TrainConfig, TrainError, train  # noqa: E402

# precision pinned: on a CPU with native bf16, auto would train in bf16 there and fp32 here (tested apart below)
TINY = dict(size=32, zdim=16, gf=8, df=8, batch_size=8, workers=0, progress=False, device="cpu", precision="fp32")


def _image(rng, h, w):
    """A smooth random picture (gradient + a filled ellipse), so JPEG keeps it recognisable."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(rng.integers(0, 100), rng.integers(150, 255), w, dtype=np.uint8)[None, :, None]
    color = tuple(int(c) for c in rng.integers(0, 255, 3))
    cv2.ellipse(img, (w // 2, h // 2), (w // 3, h // 3), 0, 0, 360, color, -1)
    return img


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder (with a subfolder, mixed formats, non-square sizes) and a plain tar of NNNNN.jpg."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for i in range(24):
        ext = (".png", ".jpg", ".bmp", ".webp")[i % 4]
        sub = folder / "sub" if i % 3 == 0 else folder
        assert cv2.imwrite(str(sub / f"img{i:03d}{ext}"), _image(rng, 40 + i % 5, 48))
    (folder / "notes.txt").write_text("not an image")
    tar_path = root / "shard-00.tar"
    with tarfile.open(tar_path, "w") as tf:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
        for i in range(20):
            ok, buf = cv2.imencode(".jpg", _image(rng, 64, 64))
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = len(buf)
            tf.addfile(info, io.BytesIO(buf.tobytes()))
    return folder, tar_path


def _losses(run: Path):
    lines = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["d_loss"], r["g_loss"], r["d_real"], r["d_fake"]) for r in lines]


# --- data -------------------------------------------------------------------------------------
def test_tar_and_folder_source(data_dir):
    folder, tar_path = data_dir
    before = sorted(os.listdir(tar_path.parent))
    ds = ImageSource([folder, tar_path], size=32)
    assert len(ds) == 24 + 20  # the .txt files are ignored
    for i in range(len(ds)):
        x = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32)
        assert -1.0 <= x.min().item() and x.max().item() <= 1.0
    assert sorted(os.listdir(tar_path.parent)) == before  # nothing extracted
    # a tar member reads back exactly as decoding its bytes from the archive
    with tarfile.open(tar_path) as tf:
        raw = tf.extractfile("00007.jpg").read()
    i = ds.names.index("00007.jpg")
    expected = decode_image(raw, 32)
    assert np.array_equal(ds[i].numpy(), expected)
    # RGB order and [-1, 1] scaling: a pure blue BGR image is blue in channel 2
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), (255, 0, 0), np.uint8))
    blue = decode_image(buf.tobytes(), 8)
    assert blue[2].min() == 1.0 and blue[0].max() == -1.0 and blue[1].max() == -1.0


def test_tar_in_dataloader_workers(data_dir):
    """Each worker opens its own handle; results match the single-process read."""
    _, tar_path = data_dir
    ds = ImageSource([tar_path], size=32)
    first = ds[3]  # opens a handle in this process before the workers fork
    serial = torch.stack([ds[i] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    parallel = torch.cat(list(loader))
    assert torch.equal(serial, parallel) and torch.equal(first, serial[3])


def test_corrupt_image_is_skipped(tmp_path, capfd):
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), _image(rng, 32, 32))
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    ds = ImageSource([tmp_path], size=32)
    assert len(ds) == 3
    assert torch.equal(ds[1], ds[2])  # replaced by the next readable image
    assert "warning: skipping unreadable image" in capfd.readouterr().err
    ok, buf = cv2.imencode(".png", _image(rng, 32, 32))
    (tmp_path / "1.png").write_bytes(buf.tobytes()[: len(buf) // 2])  # truncated: OpenCV itself warns about it
    ds = ImageSource([tmp_path], size=32)
    ds[1]
    err = capfd.readouterr().err.splitlines()
    assert err and all(line.startswith("warning: skipping unreadable image") for line in err), err  # no [ WARN:..]


def test_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        ImageSource([tmp_path / "empty"])
    with pytest.raises(DataError, match="does not exist"):
        ImageSource([tmp_path / "nope"])
    gz = tmp_path / "x.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.add(tmp_path / "empty" / "a.txt", "a.jpg")
    with pytest.raises(DataError, match="plain"):
        ImageSource([gz])


def test_sampler_deterministic_and_disjoint():
    n, seed, world = 103, 5, 3
    per_rank = [EpochSampler(n, seed, r, world) for r in range(world)]
    for e in (0, 1):
        for s in per_rank:
            s.set_epoch(e)
        orders = [list(s) for s in per_rank]
        assert orders == [list(s) for s in per_rank]  # deterministic
        assert all(len(o) == n // world for o in orders)
        flat = sum(orders, [])
        assert len(set(flat)) == len(flat)  # disjoint across ranks
        perm = np.random.default_rng([seed, e]).permutation(n)
        assert orders[1] == perm[1::world][: n // world].tolist()
    per_rank[0].set_epoch(0)
    e0 = list(per_rank[0])
    per_rank[0].set_epoch(1)
    assert list(per_rank[0]) != e0
    # step batches: any [start, stop) window equals the same steps of a run from 0, across epochs
    full = list(StepBatchSampler(n, 8, seed, 1, world, start=0, stop=12))
    part = list(StepBatchSampler(n, 8, seed, 1, world, start=5, stop=12))
    assert part == full[5:] and all(len(b) == 8 for b in full)
    assert StepBatchSampler(n, 8, seed, 1, world).steps_per_epoch == (n // world) // 8  # last batch dropped
    with pytest.raises(DataError, match="fewer than one batch"):
        StepBatchSampler(10, 8, world_size=2)


# --- training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    folder, tar_path = data_dir
    out = tmp_path_factory.mktemp("runs") / "straight"
    path = train(TrainConfig(data=[folder, tar_path], out=out, steps=6, sample_every=3, save_every=4, **TINY))
    return out, path


def test_training_writes_run(straight_run):
    out, path = straight_run
    assert path == out / "checkpoint.pt" and path.is_file()
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    for r in log:
        assert set(r) >= {"step", "d_loss", "g_loss", "d_real", "d_fake", "images_per_s"}
        assert np.isfinite([r["d_loss"], r["g_loss"]]).all() and 0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1
        assert r["images_per_s"] > 0
    for step in (3, 6):
        grid = cv2.imread(str(out / "samples" / f"step_{step:06d}.png"))
        assert grid is not None and grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_config"]["gf"] == 8 and cfg["train_config"]["steps"] == 6 and cfg["images"] == 44


def test_checkpoint_contents(straight_run):
    out, path = straight_run
    mcfg, G, D = checkpoint.load_models(out)
    assert (mcfg.size, mcfg.zdim, mcfg.gf, mcfg.df) == (32, 16, 8, 8) and not G.training
    state = checkpoint.load_state(path)
    assert state["step"] == 6 and state["world_size"] == 1
    for key in ("opt_G", "opt_D"):
        st = state[key]["state"]
        assert len(st) > 0 and all(int(v["step"]) == (12 if key == "opt_G" else 6) for v in st.values())
    tc = state["train_config"]
    assert isinstance(tc["out"], str) and all(isinstance(p, str) for p in tc["data"])
    with torch.no_grad():
        x = G(torch.rand(2, 16) * 2 - 1)
        assert x.shape == (2, 3, 32, 32) and D(x).shape == (2,)


def test_resume_equals_uninterrupted(straight_run, data_dir, tmp_path):
    folder, tar_path = data_dir
    out = tmp_path / "resumed"
    base = dict(data=[folder, tar_path], out=out, sample_every=3, save_every=100, **TINY)
    train(TrainConfig(steps=3, **base))
    assert checkpoint.load_state(out)["step"] == 3
    train(TrainConfig(steps=6, resume=True, **base))
    straight = straight_run[0]
    assert _losses(out) == _losses(straight)  # exactly the same floats
    a, b = checkpoint.load_state(out), checkpoint.load_state(straight)
    assert b["step"] == 6 == a["step"]
    for k, v in b["G"].items():
        assert torch.equal(v, a["G"][k]), k
    for k, v in b["D"].items():
        assert torch.equal(v, a["D"][k]), k


def test_resume_errors(straight_run, data_dir):
    out, _ = straight_run
    folder, _ = data_dir
    small = {**TINY, "gf": 16}
    with pytest.raises(TrainError, match="different model.*gf: checkpoint 8 vs requested 16"):
        train(TrainConfig(data=[folder], out=out, steps=8, resume=True, **small))
    with pytest.raises(TrainError, match="--resume"):  # an existing run is never overwritten silently
        train(TrainConfig(data=[folder], out=out, steps=8, **TINY))
    with pytest.raises(TrainError, match="no checkpoint"):
        train(TrainConfig(data=[folder], out=out.parent / "fresh", steps=8, resume=True, **TINY))
    with pytest.raises(TrainError, match="exactly one"):
        train(TrainConfig(data=[folder], out=out, steps=2, epochs=1, **TINY))


def test_epochs_from_tar(data_dir, tmp_path):
    _, tar_path = data_dir  # 20 images, batch 8: ceil(1.5 * 20 / 8) = 4 steps
    out = tmp_path / "ep"
    train(TrainConfig(data=[tar_path], out=out, epochs=1.5, **TINY))
    assert [r[0] for r in _losses(out)] == [1, 2, 3, 4]
    assert sorted(os.listdir(tar_path.parent)) == ["folder", "shard-00.tar"]  # still not extracted


# --- CLI --------------------------------------------------------------------------------------
runner = CliRunner()


def _cli(*args):
    from gcomp.cli.app import app
    return runner.invoke(app, ["train", *map(str, args)])


def test_cli_train(data_dir, tmp_path):
    folder, _ = data_dir
    out = tmp_path / "cli"
    r = _cli(folder, "--out", out, "--size", 32, "--gf", 8, "--df", 8, "--zdim", 16, "-b", 8, "--steps", 2,
             "--workers", 0, "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == str(out / "checkpoint.pt")
    assert checkpoint.load_state(out)["step"] == 2


@pytest.mark.parametrize("case", ["empty", "missing", "both", "neither", "badsize"])
def test_cli_errors(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    args = {
        "empty": [empty, "--steps", 2],
        "missing": [tmp_path / "nope", "--steps", 2],
        "both": [empty, "--steps", 2, "--epochs", 1],
        "neither": [empty],
        "badsize": [empty, "--steps", 2, "--size", 48],
    }[case]
    r = _cli(*args, "--out", tmp_path / "run", "--workers", 0, "--device", "cpu")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_without_torch(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    r = _cli(tmp_path, "--out", tmp_path / "run", "--steps", 1)
    assert r.exit_code == 2
    assert "pip install 'gcomp[train]'" in r.stderr and "torch==2.13.0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_help_does_not_import_torch():
    code = ("import sys; import gcomp.cli.app, gcomp.cli.train_cmd, gcomp.train; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- DDP --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gloo_two_processes(data_dir, tmp_path):
    folder, tar_path = data_dir
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "gcomp", "train", str(folder), str(tar_path), "--out", str(out),
           "--size", "32", "--gf", "8", "--df", "8", "--zdim", "16", "-b", "4", "--steps", "2", "--workers", "0",
           "--device", "cpu", "--sample-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    state = checkpoint.load_state(out)
    assert state["step"] == 2 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["G"])
    assert [r[0] for r in _losses(out)] == [1, 2]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert (out / "samples" / "step_000002.png").is_file()
    assert p.stdout.strip().splitlines()[-1] == str(out / "checkpoint.pt")  # printed once, by rank 0


# --- precision: bf16 autocast (+ channels_last on CPU) where the CPU has native bf16 ----------------------
@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_follows_the_cpu(native, monkeypatch):
    from gcomp.train.loop import memory_format_for, resolve_precision

    monkeypatch.setenv("GCOMP_CPU_BF16", "1" if native else "0")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", cpu, amp=False) == "fp32"  # --no-amp
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert memory_format_for(cpu, "bf16") == torch.channels_last
    assert memory_format_for(cpu, "fp32") == torch.contiguous_format
    with pytest.raises(TrainError, match="--precision must be one of auto, fp32, bf16"):
        TrainConfig(data=["x"], out="r", steps=1, precision="fp16").validate()


def test_bf16_training_tracks_fp32_and_checkpoints_export_unchanged(data_dir, tmp_path):
    """Three steps of a tiny model from the same init: bf16 autocast's losses within 0.05 of fp32's (bf16 keeps
    8 bits of mantissa: ~0.4% per value; at DCGAN's init the BCE losses are ~0.7-1.4), all finite; the weights stay
    close; the checkpoint holds float32 tensors and exports and validates as an fp32-trained one does."""
    folder, _ = data_dir
    runs = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / prec
        train(TrainConfig(data=[folder], out=out, steps=3, sample_every=100, save_every=2,
                          **{**TINY, "precision": prec}))
        runs[prec] = out
        assert json.loads((out / "config.json").read_text())["precision"] == prec
    a, b = _losses(runs["fp32"]), _losses(runs["bf16"])
    assert len(a) == len(b) == 3
    for (sa, da, ga, *_), (sb, db, gb, *_) in zip(a, b):
        assert sa == sb and np.isfinite([db, gb]).all()
        assert abs(da - db) < 0.05 and abs(ga - gb) < 0.05, (da, db, ga, gb)
    sa, sb = checkpoint.load_state(runs["fp32"]), checkpoint.load_state(runs["bf16"])
    for k, v in sa["G"].items():
        w = sb["G"][k]
        assert w.dtype == v.dtype and w.shape == v.shape, k  # float32 as in fp32 (bf16 is autocast's, not storage)
        if v.is_floating_point() and v.numel() > 1 and "running" not in k:
            # 6 Adam updates of lr 2e-4 move a weight by at most ~1.2e-3 whatever the precision; bf16 noise is below
            assert (w - v).abs().max() < 2.5e-3, k
    from gcomp.export.onnx_export import export_model

    report = export_model(runs["bf16"] / "checkpoint.pt", tmp_path / "export")
    assert (tmp_path / "export" / "generator.onnx").is_file() and (tmp_path / "export" / "step.onnx").is_file()
    assert report is not None


def test_snapshots_kept_at_every_save(data_dir, tmp_path):
    folder, _ = data_dir
    out = tmp_path / "snaps"
    train(TrainConfig(data=[folder], out=out, steps=5, sample_every=100, save_every=2, **TINY))
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == ["step_000002.pt", "step_000004.pt", "step_000005.pt"]
    last, final = checkpoint.load_state(out / "snapshots" / snaps[-1]), checkpoint.load_state(out)
    assert last["step"] == final["step"] == 5 and "opt_G" not in last  # weights only: smaller, not resumable
    _, G, _ = checkpoint.load_models(out / "snapshots" / snaps[0])
    assert not G.training
    for k, v in final["G"].items():
        assert torch.equal(v, last["G"][k]), k
    train(TrainConfig(data=[folder], out=tmp_path / "none", steps=2, save_every=1, snapshots=False, **TINY))
    assert not (tmp_path / "none" / "snapshots").exists()
