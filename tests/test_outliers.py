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


# ----------------------------------------------------------------- the pieces around find_outliers, checked by value

def test_check_int_refuses_bools_floats_and_values_below_the_minimum():
    from cvae_features.outliers import _check_int

    assert _check_int("k", 1) == 1 and type(_check_int("k", np.int64(4))) is int
    assert _check_int("n", 0, minimum=0) == 0 and _check_int("n", 3, minimum=3) == 3
    for bad in (True, 0, 2.0, "3", None):
        with pytest.raises(ConfigError) as err:
            _check_int("top", bad)
        assert str(err.value) == f"top: expected an integer >= 1, got {bad!r}"
    with pytest.raises(ConfigError) as err:
        _check_int("n", 2, minimum=3)
    assert str(err.value) == "n: expected an integer >= 3, got 2"


def _hand_result(n_top=3, **kw):
    import pandas as pd

    from cvae_features.outliers import OutliersResult

    n = max(n_top, 4) + 2
    keys = [f"r{i}" for i in range(n)]
    rank = np.arange(n, 0, -1)  # the last row is the most unusual
    frame = pd.DataFrame({"key": keys, "knn": np.linspace(0.5, 2.0, n), "mahalanobis": 1.0 / 3 + np.arange(n),
                          "mean_rank": rank.astype(float), "rank": rank, "is_outlier": rank <= 2})
    top = [keys[n - 1 - i] for i in range(n_top)]
    base = dict(frame=frame, scores=["knn", "mahalanobis"], rate=0.25, n_flagged=2, threshold_mean_rank=2.0, k=3,
                preprocessing="none", n_rows=n, top=top, neighbours={key: ["r0", "r1"] for key in top[1:]})
    base.update(kw)
    return OutliersResult(**base)


def test_outliers_json_record_lists_the_top_rows_with_their_scores_and_neighbours():
    result = _hand_result()
    f = result.frame
    d = result.to_dict()
    assert d == {
        "store": None, "n_rows": 6, "scores": ["knn", "mahalanobis"],
        "combined": "mean of per-score ranks (1 = highest score)", "rate": 0.25, "n_flagged": 2,
        "threshold_mean_rank": 2.0, "k": 3, "preprocessing": "none",
        "top": [{"key": key, "rank": r, "is_outlier": r <= 2,
                 "scores": {"knn": float(f.loc[i, "knn"]), "mahalanobis": float(f.loc[i, "mahalanobis"])},
                 "nearest_normal": [] if r == 1 else ["r0", "r1"]}
                for key, r, i in (("r5", 1, 5), ("r4", 2, 4), ("r3", 3, 3))]}
    assert [type(t["rank"]) for t in d["top"]] == [int] * 3 and [type(t["is_outlier"]) for t in d["top"]] == [bool] * 3
    from pathlib import Path

    from cvae_features.sheets import SheetsResult

    written = SheetsResult(Path("out"), Path("out/index.html"), {"outliers_01": Path("out/x.png")}, [], {})
    d = _hand_result(store="s.h5", sheets=written).to_dict()
    assert d["store"] == "s.h5" and d["sheets"] == {"out_dir": "out", "index": "out/index.html",
                                                    "files": {"outliers_01": "out/x.png"}, "skipped": [], "missing": {}}


def test_outlier_sheets_pages_of_25_rows_each_the_image_then_its_nearest_normal_ones():
    from cvae_features.outliers import outlier_sheets

    result = _hand_result(n_top=27)
    f = result.frame.set_index("key")
    sheets = outlier_sheets(result)
    assert [s.name for s in sheets] == ["outliers_01", "outliers_02"]
    assert [s.heading for s in sheets] == ["Ranks 1 to 25", "Ranks 26 to 27"]
    assert [len(s.rows) for s in sheets] == [25, 2]
    assert sheets[0].rows[:2] == [("#1", ["r28"]), ("#2", ["r27", "r0", "r1"])]
    assert sheets[1].rows == [("#26", ["r3", "r0", "r1"]), ("#27", ["r2", "r0", "r1"])]
    assert sheets[0].listed[:3] == [
        ("r28", f"rank 1 (outlier); knn {f.at['r28', 'knn']:.4g}, mahalanobis {f.at['r28', 'mahalanobis']:.4g}"),
        ("r27", f"rank 2 (outlier); knn {f.at['r27', 'knn']:.4g}, mahalanobis {f.at['r27', 'mahalanobis']:.4g}"),
        ("r26", "rank 3; knn 1.893, mahalanobis 26.33")]
    assert sheets[1].caption == sheets[0].caption == (
        "Each row: the image (first column), then its nearest normal images in μ, nearest first.")
    assert [s.name for s in outlier_sheets(_hand_result(n_top=25))] == ["outliers_01"]
    assert outlier_sheets(_hand_result(n_top=25))[0].heading == "Ranks 1 to 25"


# ----------------------------------------------------------------- find_outliers at its edges (mutation group 'entry')

def test_find_outliers_names_its_settings_in_errors_and_needs_k_plus_one_rows():
    X = np.random.default_rng(6).normal(size=(10, 2))
    for kwargs, start in (({"n_neighbours": 0}, "n_neighbours: expected an integer >= 1, got 0"),
                          ({"preprocessing": "whiten"}, "preprocessing: "),
                          ({"keys": ["a"]}, "keys: expected 10 keys (one per row of X), got 1")):
        with pytest.raises(ConfigError) as err:
            find_outliers(X, **kwargs)
        assert str(err.value).startswith(start), str(err.value)
    X_nan = X.copy()
    X_nan[2, 1] = np.inf
    with pytest.raises(ConfigError) as err:
        find_outliers(X_nan)
    assert str(err.value).startswith("X: ")
    result = find_outliers(X, k=9)  # 10 rows: each has exactly 9 others
    d = np.linalg.norm(X[:, None] - X[None], axis=2)
    np.testing.assert_allclose(result.frame["knn"], d.sum(axis=1) / 9)


def test_find_outliers_is_its_scores_ranks_and_neighbours_written_out():
    from sklearn.covariance import LedoitWolf
    from sklearn.neighbors import NearestNeighbors

    from cvae_features.probes import FeaturePrep

    rng = np.random.default_rng(8)
    base = rng.normal(size=(12, 2)) * [1.0, 4.0]
    X = np.vstack([base] * 4)  # every row four times: tied scores and mean ranks, tied neighbours
    extra = np.tile(rng.normal(size=12), 4)
    keys = [f"k{i}" for i in range(48)]
    result = find_outliers(X, keys, extra={"recon": extra}, k=5, rate=0.1, top=7, n_neighbours=6,
                           preprocessing="standardize")
    Z = FeaturePrep("standardize").fit_transform(X)
    knn = _loo_knn_by_hand(Z, 5)
    maha = LedoitWolf().fit(Z).mahalanobis(Z)
    f = result.frame
    np.testing.assert_allclose(f["knn"], knn, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(f["mahalanobis"], maha, rtol=1e-9)
    mean_rank = np.mean([rankdata(-f[name].to_numpy()) for name in ("knn", "mahalanobis", "recon")], axis=0)
    order = sorted(range(48), key=lambda i: mean_rank[i])  # ties in row order
    rank = np.empty(48, dtype=np.int64)
    rank[order] = np.arange(1, 49)
    assert list(f.columns) == ["key", "knn", "mahalanobis", "recon", "mean_rank", "rank", "is_outlier"]
    np.testing.assert_allclose(f["mean_rank"], mean_rank)
    assert f["rank"].dtype == np.int64 and len(set(mean_rank)) < 48  # ties, broken in row order
    np.testing.assert_array_equal(f["rank"], rank)
    assert result.n_flagged == 5 and list(f["is_outlier"]) == list(rank <= 5)
    assert result.threshold_mean_rank == mean_rank[order[4]]
    assert result.top == [keys[i] for i in order[:7]] and result.scores == ["knn", "mahalanobis", "recon"]
    pool = np.setdiff1d(np.flatnonzero(rank > 5), order[:7])
    near = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(Z[pool]).kneighbors(Z[order[:7]],
                                                                                      return_distance=False)
    assert result.neighbours == {keys[r]: [keys[pool[j]] for j in row] for r, row in zip(order[:7], near)}
    assert (result.k, result.preprocessing, result.rate, result.n_rows) == (5, "standardize", 0.1, 48)
    # every row among the top or flagged: no normal rows to list, and an empty record of them
    assert find_outliers(X[:12], top=12).neighbours == {}
