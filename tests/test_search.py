import numpy as np

from gcomp.engine.search import EarlyStop, SearchParams


def test_resolved_takes_the_models_defaults_only_where_not_given():
    tuned = '{"iters": 100, "lr": 0.0003, "lam": 0.1, "momentum": 0.9, "patience": 20}'
    seed = SearchParams.seed()
    assert (seed.iters, seed.lr, seed.momentum, seed.lam, seed.patience) == (1000, 0.01, 0.9, 0.1, 0)  # the seed's
    assert SearchParams().resolved(tuned) == SearchParams(iters=100, lr=3e-4, momentum=0.9, lam=0.1, patience=20)
    given = SearchParams(iters=7, lr=0.5, momentum=0.5, lam=2.0, patience=0)
    assert given.resolved(tuned) == given
    # the model's momentum and lam are applied too
    assert SearchParams().resolved('{"momentum": 0.5, "lam": 0.3}').momentum == 0.5
    assert SearchParams().resolved('{"momentum": 0.5, "lam": 0.3}').lam == 0.3
    # a momentum lr is no default for Adam
    assert SearchParams(optimizer="adam").resolved(tuned).lr == 0.03
    r = SearchParams().resolved(tuned)
    assert r.resolved() == r  # idempotent


def test_early_stop_freezes_each_image_on_its_own():
    s = EarlyStop(2, patience=3)
    losses = [(10, 10), (9, 10), (8, 10), (7, 10), (6, 10)]  # image 1 never improves after its first value
    active = [s.update(np.array(l)).copy() for l in losses]
    assert [a.tolist() for a in active] == [[True, True], [True, True], [True, True], [True, False], [True, False]]
    assert not s.done
    for _ in range(3):
        s.update(np.array([6, 10]))
    assert s.done
    off = EarlyStop(2, patience=0)
    for _ in range(10):
        assert off.update(np.array([1, 1])).all()
    assert not off.done
