"""`gcomp complete --ray`: the same bytes, summary and resume rule as the single-process run.

One local Ray instance for the module (starting one takes seconds; a pipeline run ~10-20 s on
2 busy cores), so the tests are few and small.
"""
import builtins
import json
import shutil

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'gcomp[ray]'")
pytest.importorskip("torch")  # the tiny model is built and exported with torch

from synth import make_faces  # noqa: E402
from gcomp.cli.app import app  # noqa: E402
from gcomp.engine.api import complete  # noqa: E402
from gcomp.engine.options import CompleteOptions  # noqa: E402
from gcomp.engine.ray_driver import complete_ray  # noqa: E402
from gcomp.engine.search import SearchParams  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()

# Batches of 2 over 9 files: 5 batches for 2 actors. A random mask: seeded per image name.
# 300 iterations (~0.4 s a batch here): with less, one actor usually finishes each batch before the next
# is decoded and Ray's pool (least busy actor first) gives it every batch.
ARGS = ["--iters", "300", "-b", "2", "--seed", "3", "--mask", "random:0.6", "--no-progress"]
OPTS = CompleteOptions(batch_size=2, seed=3, mask="random:0.6", search=SearchParams(iters=300))


@pytest.fixture(scope="module")
def cluster():
    # 4 logical CPUs on 2 real cores: two actors at 0.5 CPU each and the decode tasks all fit.
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("ray") / "in"
    make_faces(src, n=6)
    make_faces(src / "sub", n=2, seed=1)
    (src / "broken.png").write_bytes(b"this is not a png")
    return src


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_same_bytes_and_summary_as_single_process(cluster, exported, folder, tmp_path):
    ref = complete(folder, tmp_path / "ref", exported, options=OPTS, progress=False, log=lambda m: None)
    r = runner.invoke(app, ["complete", str(folder), str(tmp_path / "ray"), "--model", str(exported),
                            "--ray", "auto", "--workers", "2", *ARGS])
    assert r.exit_code == 1, r.output  # something failed: the corrupt file
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {folder / 'broken.png'}: not a readable image (corrupt or unsupported format)"]
    s = json.loads((tmp_path / "ray" / "gcomp-summary.json").read_text())
    assert s["done"] == ref.done == 8 and s["skipped"] == 0
    assert s["failed"] == ref.failed and s["failed"][0]["file"].endswith("broken.png")
    ref_s = json.loads((tmp_path / "ref" / "gcomp-summary.json").read_text())
    assert {k: v for k, v in s["settings"].items() if k != "output"} == \
        {k: v for k, v in ref_s["settings"].items() if k != "output"}
    # Which actor gets a batch is Ray's choice (the least busy ready one): when one actor opened its model before the
    # other and each decoded batch came after it had finished the last, it got all 5 (now and then on a busy machine).
    # What is ours: every image counted once, under the actors that completed it.
    per_worker = s["ray"]["images_per_worker"]
    assert s["ray"]["workers"] == 2 and 1 <= len(per_worker) <= 2 and sum(per_worker.values()) == 8, s["ray"]
    assert files(tmp_path / "ray") == files(tmp_path / "ref")
    for name in files(tmp_path / "ref"):
        if name.endswith(".png"):
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_rerun_after_a_partial_run_does_only_the_rest(cluster, exported, folder, tmp_path):
    half, out = tmp_path / "half", tmp_path / "out"
    for name in ("face_00.png", "face_01.png", "face_02.png", "sub/face_00.png"):
        (half / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, half / name)
    first = complete_ray(half, out, exported, workers=2, options=OPTS, progress=False)
    assert first.done == 4 and not first.failed
    mtimes = {n: (out / n).stat().st_mtime_ns for n in files(out) if n.endswith(".png")}
    (out / "sub" / ".gcomp-s0of1-killed.tmp").write_bytes(b"half a png")  # what a kill leaves behind
    r = runner.invoke(app, ["complete", str(folder), str(out), "--model", str(exported), "--ray", "auto", *ARGS])
    assert r.exit_code == 1, r.output
    s = json.loads((out / "gcomp-summary.json").read_text())
    assert (s["skipped"], s["done"], s["n_failed"]) == (4, 4, 1)
    assert files(out) == ["face_00.png", "face_01.png", "face_02.png", "face_03.png", "face_04.png", "face_05.png",
                          "gcomp-summary.json", "sub/face_00.png", "sub/face_01.png"]  # no temporary files
    for name, mtime in mtimes.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"


def test_without_ray_one_line_install_hint(exported, folder, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    r = runner.invoke(app, ["complete", str(folder), str(tmp_path / "out"), "--model", str(exported),
                            "--ray", "auto", "--no-progress"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == ["error: --ray needs Ray Data, which is not installed: pip install 'gcomp[ray]'"]


def test_the_ray_driver_names_linked_folders_it_does_not_follow(exported, tmp_path):
    """The listing is the single-process one (list_todo), note included: a loop link is named once on stderr.
    Every output exists already, so the driver returns before starting Ray."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_faces(src, n=1)
    (src / "loop").symlink_to(src, target_is_directory=True)
    assert runner.invoke(app, ["complete", str(src), str(out), "--model", str(exported), "--no-progress"]).exit_code == 0
    r = runner.invoke(app, ["complete", str(src), str(out), "--model", str(exported), "--ray", "auto", "--no-progress"])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "not followed" in line]
    assert len(notes) == 1 and f"{src / 'loop'} (a link to" in notes[0], r.stderr
