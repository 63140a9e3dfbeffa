"""outliers.py: every row scored against the others (leave-one-out), ranked, flagged at a rate."""

import math

import numpy as np
import pytest
from scipy.stats import rankdata

from cvae_features.errors import ConfigError
from cvae_features.outliers import find_outliers
from cvae_features.probes import DataTooSmall


def _loo_knn_by_hand(X, k):
    d = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)  # the row itself is never its own neighbour
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def test_knn_score_leaves_the_row_itself_out_but_keeps_its_copy():
    X = np.random.default_rng(0).normal(size=(40, 3))
    X[1] = X[0]  # an exact duplicate pair
    one = find_outliers(X, k=1).frame["knn"].to_numpy()
    # its copy is another row at distance 0 (a filter on "distance > 0" would lose it) ...
    assert one[0] == 0.0 and one[1] == 0.0
    # ... while every other row's nearest row is another one (counting the row itself would give 0 everywhere)
    assert (one[2:] > 0).all()
    np.testing.assert_allclose(one, _loo_knn_by_hand(X, 1), atol=1e-12)
    for k in (3, 7):
        np.testing.assert_allclose(find_outliers(X, k=k).frame["knn"], _loo_knn_by_hand(X, k), rtol=1e-9)


@pytest.mark.parametrize("score", ["knn", "mahalanobis", "recon_error", "combined"])
def test_a_planted_far_point_ranks_first_under_each_score(score):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4))
    X[37] += 15.0
    recon = rng.uniform(1.0, 2.0, size=120)
    recon[37] = 9.0
    result = find_outliers(X, [f"k{i}" for i in range(120)], extra={"recon_error": recon}, rate=0.01)
    f = result.frame
    assert result.scores == ["knn", "mahalanobis", "recon_error"]
    if score == "combined":
        assert f.loc[37, "rank"] == 1 and result.top[0] == "k37" and f.loc[37, "is_outlier"]
    else:
        assert int(np.argmax(f[score])) == 37


def test_mahalanobis_is_the_ledoit_wolf_distance_on_every_row():
    from sklearn.covariance import LedoitWolf

    X = np.random.default_rng(2).normal(size=(50, 3))
    result = find_outliers(X)
    np.testing.assert_allclose(result.frame["mahalanobis"], LedoitWolf().fit(X).mahalanobis(X))


def test_rank_is_the_order_of_the_mean_of_per_score_ranks():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3))
    extra = {"recon_error": rng.normal(size=60), "neg_elbo": rng.normal(size=60)}
    f = find_outliers(X, extra=extra).frame
    mean = np.mean([rankdata(-f[name]) for name in ("knn", "mahalanobis", "recon_error", "neg_elbo")], axis=0)
    np.testing.assert_allclose(f["mean_rank"], mean)
    assert sorted(f["rank"]) == list(range(1, 61))
    assert (np.diff(f.sort_values("rank")["mean_rank"].to_numpy()) >= 0).all()


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.333, 0.5])
def test_flagged_count_matches_the_rate(rate):
    X = np.random.default_rng(4).normal(size=(300, 4))
    result = find_outliers(X, rate=rate)
    f = result.frame
    expected = math.ceil(round(rate * 300, 9))
    assert result.n_flagged == int(f["is_outlier"].sum()) == expected
    assert set(f.index[f["is_outlier"]]) == set(f.index[f["rank"] <= expected])
    assert (f.loc[f["is_outlier"], "mean_rank"] <= result.threshold_mean_rank).all()
    assert (f.loc[~f["is_outlier"], "mean_rank"] >= result.threshold_mean_rank).all()


def test_nearest_normal_rows_are_the_nearest_unflagged_rows_outside_the_top():
    X = np.random.default_rng(5).normal(size=(80, 2))
    result = find_outliers(X, rate=0.05, top=6, n_neighbours=4)
    f = result.frame
    assert result.top == list(f.sort_values("rank")["key"][:6])
    normal = [i for i in range(80) if not f.loc[i, "is_outlier"] and f.loc[i, "key"] not in result.top]
    for key in result.top:
        i = int(key)
        by_hand = sorted(normal, key=lambda j: np.linalg.norm(X[j] - X[i]))[:4]
        assert result.neighbours[key] == [str(j) for j in by_hand]


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0}, "rate: expected a number in (0.0, 1.0), got 0.0"),
    ({"rate": 1}, "rate: expected a number in (0.0, 1.0), got 1.0"),
    ({"rate": -0.5}, "rate: expected a number in (0.0, 1.0), got -0.5"),
    ({"rate": "often"}, "rate: expected a number in (0.0, 1.0), got 'often'"),
    ({"k": 0}, "k: expected an integer >= 1"),
    ({"top": 0}, "top: expected an integer >= 1"),
    ({"k": 10}, "10 row(s) are too few for the k-NN score with k=10: each row needs 10 other rows, so at least "
                "11 rows are needed"),
    ({"extra": {"recon_error": np.zeros(3)}}, "extra['recon_error']: expected shape (10,)"),
    ({"extra": {"recon_error": np.full(10, np.nan)}}, "extra['recon_error']: expected finite scores"),
])
def test_bad_input(kwargs, message):
    X = np.random.default_rng(6).normal(size=(10, 2))
    with pytest.raises(ConfigError) as err:
        find_outliers(X, **kwargs)
    assert str(err.value).startswith(message)
    if "too few" in message:
        assert isinstance(err.value, DataTooSmall)
