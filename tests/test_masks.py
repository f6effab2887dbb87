import cv2
import numpy as np
import pytest

from gcomp.engine.masks import KINDS, MaskError, MaskSpec, context_weights, make_mask, to_model_size


def test_center_is_the_middle_half():
    m = make_mask("center", 64)
    assert m[16:48, 16:48].sum() == 0 and m.sum() == 64 * 64 - 32 * 32
    assert make_mask("center", 64, 0.125)[8:56, 8:56].sum() == 0


def test_halves():
    for kind, sl in {"left": np.s_[:, :32], "right": np.s_[:, 32:], "top": np.s_[:32], "bottom": np.s_[32:]}.items():
        m = make_mask(kind, 64)
        assert m[sl].sum() == 0 and m.sum() == 64 * 32, kind


def test_random_fraction_and_seeding():
    rng = np.random.default_rng(1)
    m = make_mask("random", 64, rng=rng)
    assert abs((1 - m).mean() - 0.8) < 0.03
    assert abs((1 - make_mask("random", 64, 0.3)).mean() - 0.3) < 0.03


def test_grid_lowres_full_pattern():
    g = make_mask("grid", 32)
    assert g[::4].all() and g[:, ::4].all() and g[1:4, 1:4].sum() == 0
    lo = make_mask("lowres", 32)
    assert lo.sum() == 64 and lo[::4, ::4].all()
    assert make_mask("full", 32).all()
    p = make_mask("pattern", 64, rng=np.random.default_rng(0))
    assert abs((1 - p).mean() - 0.25) < 0.02
    n, _ = cv2.connectedComponents((1 - p).astype(np.uint8))
    assert n - 1 < 40  # blobs, not salt-and-pepper


def test_strokes_are_a_few_thick_connected_lines_seeded_per_image():
    s = make_mask("strokes", 64, rng=np.random.default_rng(0))
    hole = (1 - s).astype(np.uint8)
    assert 0.1 < hole.mean() < 0.45  # 4 strokes: a quarter of the face, give or take
    n, _ = cv2.connectedComponents(hole)
    assert n - 1 <= 4  # at most one piece per stroke (strokes may cross)
    assert np.array_equal(s, make_mask("strokes", 64, rng=np.random.default_rng(0)))
    assert (1 - make_mask("strokes", 64, 12, np.random.default_rng(0))).mean() > hole.mean()
    with pytest.raises(MaskError, match="integer from 1 to 1000"):
        MaskSpec.parse("strokes:0.5")


def test_every_kind_is_binary_float():
    for k in KINDS:
        m = make_mask(k, 32)
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}


def test_bad_kind_and_param():
    with pytest.raises(MaskError):
        make_mask("circle", 32)
    with pytest.raises(MaskError):
        MaskSpec.parse("center:abc")
    with pytest.raises(MaskError):
        MaskSpec.parse("no/such/mask.png")
    for kind in ("center", "random", "grid", "lowres", "pattern", "strokes"):  # gcomp's words, not int(nan)'s
        for p in ("nan", "inf", "-inf"):
            with pytest.raises(MaskError, match=f"mask '{kind}:{p}'"):
                MaskSpec.parse(f"{kind}:{p}")


def test_weighted_weights_by_hand():
    known = np.ones((9, 9), np.float32)
    known[4, 4] = 0
    w = context_weights(known, weighted=True)
    assert w[4, 4] == 0
    assert w[4, 5] == pytest.approx(1 / 49)  # one hole in a full 7x7 window
    assert w[0, 0] == pytest.approx(0.0)  # hole outside its window
    assert w[1, 1] == pytest.approx(1 / 25)  # window cut by the border: rows and cols 0..4 inside
    np.testing.assert_array_equal(context_weights(known, weighted=False), known)


def test_mask_files_folder_and_single(tmp_path):
    folder = tmp_path / "masks"
    (folder / "sub").mkdir(parents=True)
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255  # white = fill
    m[0, 0] = 128  # just above the threshold: fill
    m[0, 1] = 127  # at the threshold: keep
    cv2.imwrite(str(folder / "sub" / "a.png"), m)
    spec = MaskSpec.parse(str(folder))
    k = spec.known("sub/a.jpg", (20, 30), 32, 0)
    assert k[5:10, 5:10].sum() == 0 and k[0, 0] == 0 and k[0, 1] == 1 and k.sum() == 600 - 26
    with pytest.raises(MaskError, match="no mask"):
        spec.known("sub/b.jpg", (20, 30), 32, 0)
    with pytest.raises(MaskError, match="30x20"):
        spec.known("sub/a.jpg", (40, 60), 32, 0)
    single = MaskSpec.parse(str(folder / "sub" / "a.png"))
    assert single.known("x.png", (40, 60), 32, 0)[10:20, 10:20].sum() == 0  # one mask scaled to all


def test_kind_mask_scales_with_the_image_and_is_seeded_per_name():
    spec = MaskSpec.parse("random")
    a = spec.known("a.png", (32, 32), 32, seed=0)
    assert np.array_equal(a, spec.known("a.png", (32, 32), 32, seed=0))
    assert not np.array_equal(a, spec.known("b.png", (32, 32), 32, seed=0))
    big = MaskSpec.parse("center").known("a.png", (128, 96), 32, 0)
    assert big.shape == (128, 96) and big[32:96, 24:72].sum() == 0
    small = to_model_size(big, 32)
    assert small[8:24, 8:24].sum() == 0 and small.sum() == 32 * 32 - 16 * 16
