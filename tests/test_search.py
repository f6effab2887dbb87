from gcomp.engine.search import SearchParams


def test_resolved_takes_the_models_defaults_only_where_not_given():
    tuned = '{"iters": 100, "lr": 0.0003, "lam": 0.1, "momentum": 0.9}'
    assert SearchParams().resolved() == SearchParams(iters=1000, lr=0.01)  # the seed's
    assert SearchParams().resolved(tuned) == SearchParams(iters=100, lr=3e-4)
    assert SearchParams(iters=7, lr=0.5).resolved(tuned) == SearchParams(iters=7, lr=0.5)
    # a momentum lr is no default for Adam
    assert SearchParams(optimizer="adam").resolved(tuned) == SearchParams(optimizer="adam", iters=100, lr=0.03)
    assert SearchParams().resolved(tuned).resolved() == SearchParams(iters=100, lr=3e-4)  # idempotent
