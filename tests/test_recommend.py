"""A model recommends its own settings (metadata `defaults`): the search's, the blend `auto` stands for, and
both per mask kind. Every way in (arrays, files, eval, a summary) resolves them the same way, once."""
import json
import shutil

import numpy as np
import pytest

import gcomp
from gcomp.engine.api import MODELS
from gcomp.engine.blend import AUTO
from gcomp.engine.options import recommended_for
from gcomp.export import metadata as md

BACKEND = {"backend": "onnxruntime"}  # bytes are compared: pinned (auto picks by CPU)
PER_KIND = {"iters": 0, "blend": "poisson:0.25", "masks": {"left": {"blend": "none"}, "random": {"iters": 2}}}


@pytest.fixture(scope="module")
def recommending(tmp_path_factory):
    """The bundled small model with a per-mask-kind recommendation written into its metadata."""
    out = tmp_path_factory.mktemp("recommending") / "model"
    shutil.copytree(MODELS / "small", out)  # the small model: fast
    for f in ("generator.onnx", "step.onnx", "encoder.onnx"):
        md.write_metadata(out / f, {"defaults": md.parse_recommend(PER_KIND)})
    return out


def test_parse_recommend_takes_a_blend_and_per_mask_kind_settings():
    rec = md.parse_recommend("iters=0,blend=poisson:0.5,center.blend=poisson:0.75,half.blend=poisson,random.iters=100")
    assert rec["blend"] == "poisson:0.5" and rec["iters"] == 0
    assert rec["masks"] == {"center": {"blend": "poisson:0.75"}, "left": {"blend": "poisson:1"}, "random": {"iters": 100}}
    assert md.parse_recommend(rec) == rec  # the stored form reads back as itself
    for bad, says in [("nose.blend=none", "not a mask kind"), ("blend=auto", "names no blend"),
                      ("center.iters=-1", "for the center mask iters"), ("blend=poisson:2", "weight A in"),
                      ("left.speed=1", "unknown setting 'left.speed'")]:
        with pytest.raises(ValueError, match=says):
            md.parse_recommend(bad)


def test_parse_recommend_merges_aliases_and_refuses_values_it_would_bend():
    both = {"iters": 5, "blend": "poisson:1"}
    assert md.parse_recommend("half.iters=5,left.blend=poisson:1")["masks"] == {"left": both}
    assert md.parse_recommend("left.blend=poisson:1,half.iters=5")["masks"] == {"left": both}
    assert md.parse_recommend({"masks": {"half": {"iters": 5}}, "left.blend": "poisson:1"})["masks"] == {"left": both}
    for bad, says in [({"masks": {"left": None}}, "masks.left must map settings"), ({"masks": {"left": "x"}}, "must map"),
                      ({"iters": 5.7}, "iters=5.7 is not a whole number"), ({"left.iters": 5.7}, "left.iters=5.7"),
                      ({"iters": True}, "not a whole number"), ("lr=nan", "not a finite number")]:
        with pytest.raises(ValueError, match=says):
            md.parse_recommend(bad)


def test_recommended_for_lays_a_kinds_values_over_the_model_wide_ones():
    assert recommended_for(PER_KIND, "half:0.3")["blend"] == "none"  # an alias, with a parameter
    assert recommended_for(PER_KIND, "random:0.5") == {"iters": 2, "blend": "poisson:0.25"}
    assert recommended_for(PER_KIND, "masks/") == recommended_for(PER_KIND, None) == {"iters": 0, "blend": "poisson:0.25"}
    assert recommended_for(None, "center") == {}


def test_auto_is_the_models_blend_for_the_mask_and_what_is_given_wins(recommending):
    with gcomp.open_model(recommending, **BACKEND) as model:
        assert model.options(mask="center").blend == "poisson:0.25"
        assert model.options(mask="half").blend == "none"
        assert model.options(mask="random").search.iters == 2 and model.options(mask="center").search.iters == 0
        assert model.options(mask="half", blend="poisson:0.5").blend == "poisson:0.5"
        assert model.options(mask="random", iters=0).search.iters == 0
    with gcomp.open_model("small", **BACKEND) as model:  # a model that recommends no blend: AUTO
        assert model.options(mask="half").blend == AUTO


def test_arrays_with_mixed_masks_get_each_kinds_settings_in_their_order(recommending):
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    with gcomp.open_model(recommending, **BACKEND) as model:
        mixed = model.complete_many(faces, ["half", "center", "half"])
        alone = [model.complete(faces[0], "half", blend="none"), model.complete(faces[1], "center", blend="poisson:0.25"),
                 model.complete(faces[2], "half", blend="none")]
        assert all(np.array_equal(a, b) for a, b in zip(mixed, alone))
        assert not np.array_equal(mixed[1], model.complete(faces[1], "center", blend="none"))


def test_files_and_eval_record_the_resolved_blend_and_what_was_asked(recommending, tmp_path):
    import cv2

    from gcomp.engine.evaluate import evaluate

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        cv2.imwrite(str(src / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with gcomp.open_model(recommending, **BACKEND) as model:
        model.complete_files(src, tmp_path / "out", mask="half")
        st = json.loads((tmp_path / "out" / "gcomp-summary.json").read_text())["settings"]
        assert (st["blend"], st["blend_asked"]) == ("none", "auto")
        results, _ = evaluate(model, src, ("center", "half"), limit=2, log=lambda m: None)
    assert [r.blend for r in results] == ["poisson:0.25", "none"]


def test_a_prepared_batch_gets_the_settings_of_the_mask_it_was_prepared_with(recommending):
    """complete_prepared resolves from each Prepared's mask kind, not from options.mask (which defaults to center);
    a batch of kinds the model recommends different settings for is refused, not run with one kind's."""
    rng = np.random.default_rng(2)
    face = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with gcomp.open_model(recommending, **BACKEND) as model:
        left = model.prepare(face, "half", name="a")
        assert left.kind == "left" and model.prepare(face, np.ones((64, 64), bool), name="a").kind is None
        got, _ = model.complete_prepared([left], gcomp.CompleteOptions())  # options.mask: center
        assert np.array_equal(got[0], model.complete(face, "half", name="a", blend="none"))
        with pytest.raises(ValueError, match=r"mixes mask kinds \(center, left\)"):
            model.complete_prepared([left, model.prepare(face, "center", name="b")])
