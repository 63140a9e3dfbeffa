"""groups.py: a group for every row without labels, k chosen by the silhouette, distances, exemplars."""

import numpy as np
import pytest

from cvae_features.errors import ConfigError
from cvae_features.groups import group_rows, silhouette_by_k
from cvae_features.probes import DataTooSmall, FeaturePrep


def _blobs(sizes, d=6, spread=0.3, seed=0):
    """Well-separated blobs of the given sizes (centres on scaled axes, so none sits at the data's mean)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(len(sizes), d) * 10 + 1
    y = np.repeat(np.arange(len(sizes)), sizes)
    return centres[y] + rng.normal(scale=spread, size=(y.size, d)), y


def _same_partition(a, b) -> bool:
    """Equal up to relabelling: the pairs (a, b) form a one-to-one map."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(a)) == len(set(b))


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
@pytest.mark.parametrize("true_k", [2, 4])
def test_chosen_k_and_partition_recover_clear_blobs(method, true_k):
    X, y = _blobs([30, 25, 20, 15][:true_k])
    result = group_rows(X, method=method, k_range=(2, 8))
    assert result.chosen_by == "silhouette" and result.k == true_k
    assert _same_partition(result.frame["cluster"], y)
    values = result.criterion["values"]
    assert sorted(values) == list(range(2, 9)) and max(values, key=values.get) == true_k
    assert result.criterion["rows"] == y.size
    # group 0 is the largest
    assert result.sizes == sorted(result.sizes, reverse=True) == sorted(np.bincount(y).tolist(), reverse=True)


def test_given_k_is_used_and_criterion_not_computed():
    X, y = _blobs([20, 20, 20])
    result = group_rows(X, k=3, method="kmeans")
    assert result.k == 3 and result.chosen_by == "given" and result.criterion is None
    assert _same_partition(result.frame["cluster"], y)
    assert result.to_dict()["criterion"] is None


def test_distances_are_to_the_centres_computed_by_hand_and_exemplars_are_the_closest():
    X, y = _blobs([12, 9, 7], seed=3)
    keys = [f"img/{i:03d}.png" for i in range(len(y))]
    result = group_rows(X, keys, k=3, preprocessing="l2", n_exemplars=3)
    f = result.frame
    assert list(f["key"]) == keys
    Xp = FeaturePrep("l2").fit_transform(X)
    for c in range(3):
        members = f["cluster"].to_numpy() == c
        centre = Xp[members].mean(axis=0)  # a converged k-means centre is the mean of its members
        by_hand = np.linalg.norm(Xp[members] - centre, axis=1)
        np.testing.assert_allclose(f["distance"].to_numpy()[members], by_hand, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(result.centres[c], centre, atol=1e-9)
        closest = set(np.asarray(keys)[members][np.argsort(by_hand)[:3]])
        assert set(f.loc[members & f["exemplar"].to_numpy(), "key"]) == closest
        assert result.exemplars()[c] == sorted(closest, key=lambda k: by_hand[np.flatnonzero(
            np.asarray(keys)[members] == k)[0]])
    assert int(f["exemplar"].sum()) == 9


def test_gmm_distances_use_the_component_means():
    X, _ = _blobs([15, 15], seed=1)
    result = group_rows(X, k=2, method="gmm", preprocessing="none")
    centres = result.centres[result.frame["cluster"].to_numpy()]
    np.testing.assert_allclose(result.frame["distance"], np.linalg.norm(X - centres, axis=1))


def test_the_silhouette_is_computed_on_a_seeded_sample_of_large_data():
    X, y = _blobs([150, 150, 100])
    a = group_rows(X, selection_rows=120, k_range=(2, 5), seed=4)
    b = group_rows(X, selection_rows=120, k_range=(2, 5), seed=4)
    assert a.criterion["rows"] == 120 and a.criterion == b.criterion and a.k == 3
    assert _same_partition(a.frame["cluster"], y)  # the final fit uses every row


def test_silhouette_by_k_matches_scikit_learn():
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    X, _ = _blobs([10, 10, 10])
    values = silhouette_by_k(X, [2, 3], "kmeans", seed=0)
    for k in (2, 3):
        pred = KMeans(k, n_init=10, random_state=0).fit_predict(X)
        assert values[k] == pytest.approx(silhouette_score(X, pred))


@pytest.mark.parametrize("k, message", [
    (1, "k: expected an integer >= 2"), (0, "k: expected an integer >= 2"), (2.5, "k: expected an integer >= 2"),
    (11, "k: 11 groups need at least 22 rows (2 per group), the store holds 20"),
])
def test_bad_k(k, message):
    X, _ = _blobs([10, 10])
    with pytest.raises(ConfigError) as err:
        group_rows(X, k=k)
    assert str(err.value).startswith(message)


def test_too_few_rows_to_choose_k_and_rows_all_alike():
    with pytest.raises(DataTooSmall, match="3 rows are too few to choose the number of groups: at least 4"):
        group_rows(np.random.default_rng(0).normal(size=(3, 2)))
    with pytest.raises(DataTooSmall, match="no k in 2..5 splits the rows"):
        group_rows(np.ones((10, 3)), k_range=(2, 5))
    with pytest.raises(ConfigError, match="keys: expected 4 keys"):
        group_rows(np.zeros((4, 2)), ["a"], k=2)
    with pytest.raises(ConfigError, match="k_range: expected 2 <= smallest <= largest"):
        group_rows(np.zeros((10, 2)), k_range=(1, 3))


# ----------------------------------------------------------------- the pieces around group_rows, checked by value

def test_k_and_k_range_checks_at_their_boundaries():
    from cvae_features.groups import _check_k, _check_k_range

    assert _check_k(3, 6) == 3 and type(_check_k(np.int64(3), 6)) is int  # 2 rows per group exactly is enough
    for bad in (True, 1, 2.0, "3", None):
        with pytest.raises(ConfigError, match="k: expected an integer >= 2"):
            _check_k(bad, 100)
    with pytest.raises(DataTooSmall) as err:
        _check_k(3, 5)
    assert str(err.value) == "k: 3 groups need at least 6 rows (2 per group), the store holds 5"

    assert _check_k_range((2, 2), 4) == [2] and _check_k_range(("2", np.int64(4)), 100) == [2, 3, 4]
    assert _check_k_range((2, 12), 9) == [2, 3, 4]  # the largest k is cut to n // 2
    assert _check_k_range((3, 12), 6) == [3]
    assert _check_k_range((2.0, np.float32(4)), 100) == [2, 3, 4]  # whole numbers as floats are fine
    for bad in ("ab", None, (2,), (2, 3, 4), ("two", 3), (2.7, 5), (2, 4.5), (True, 3), (2, np.bool_(True)),
                (2, float("inf")), (float("nan"), 3)):
        with pytest.raises(ConfigError) as err:
            _check_k_range(bad, 100)
        assert str(err.value) == f"k_range: expected two integers (smallest, largest k), got {bad!r}"
    for bad in ((1, 3), (0, 3), (4, 3)):
        with pytest.raises(ConfigError, match=r"k_range: expected 2 <= smallest <= largest"):
            _check_k_range(bad, 100)
    with pytest.raises(DataTooSmall) as err:
        _check_k_range((3, 5), 5)
    assert str(err.value) == ("5 rows are too few to choose the number of groups: at least 6 are needed "
                              "(2 per group for k=3)")


class _FixedLabels:
    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def predict(self, Xp):
        return self.labels


def test_silhouette_by_k_passes_its_options_and_is_none_for_one_group_or_one_row_per_group(monkeypatch):
    from sklearn.metrics import silhouette_score

    import cvae_features.groups as groups

    X = np.random.default_rng(0).normal(size=(6, 2))
    labels = {2: [0, 0, 0, 1, 1, 1], 3: [0, 0, 1, 1, 2, 2], 4: [1, 1, 1, 1, 1, 1], 6: [0, 1, 2, 3, 4, 5],
              5: [0, 1, 2, 3, 4, 4]}
    calls = []

    def fake_fit(Xp, k, method, *, n_init, seed):
        calls.append((Xp, k, method, n_init, seed))
        return _FixedLabels(labels[k])

    monkeypatch.setattr(groups, "fit_clusters", fake_fit)
    values = groups.silhouette_by_k(X, [np.int64(2), 3, 4, 6, 5], "gmm", n_init=3, seed=7)
    assert list(values) == [2, 3, 4, 6, 5] and all(type(k) is int for k in values)
    assert values[4] is None and values[6] is None  # one group; as many groups as rows
    for k in (2, 3, 5):
        assert values[k] == pytest.approx(silhouette_score(X, labels[k])) and type(values[k]) is float
    assert [c[1:] for c in calls] == [(2, "gmm", 3, 7), (3, "gmm", 3, 7), (4, "gmm", 3, 7), (6, "gmm", 3, 7),
                                      (5, "gmm", 3, 7)]
    assert all(c[0] is X for c in calls)
    calls.clear()
    groups.silhouette_by_k(X, [2])
    assert [c[1:] for c in calls] == [(2, "kmeans", 10, 0)]


def _hand_result(**kw):
    import pandas as pd

    from cvae_features.groups import GroupsResult

    frame = pd.DataFrame({"key": ["a", "b", "c", "d", "e", "f", "g"], "cluster": [1, 0, 1, 0, 0, 1, 0],
                          "distance": [0.5, 0.25, 0.125, 0.25, 0.75, 0.0625, 0.125],
                          "exemplar": [True, True, True, True, False, False, True]})
    base = dict(frame=frame, k=2, chosen_by="given", criterion=None, method="kmeans", preprocessing="l2",
                sizes=[4, 3], n_rows=7, n_exemplars=3, seed=5)
    base.update(kw)
    return GroupsResult(**base)


def test_exemplars_closest_first_ties_in_row_order_and_the_json_record():
    result = _hand_result()
    # group 0: d and b tie at 0.25 (row order: b first), g closer; group 1: c closer than a; f is no exemplar
    assert result.exemplars() == {0: ["g", "b", "d"], 1: ["c", "a"]}
    assert all(type(c) is int for c in result.exemplars())
    assert result.to_dict() == {
        "store": None, "n_rows": 7, "k": 2, "chosen_by": "given", "criterion": None, "method": "kmeans",
        "preprocessing": "l2", "sizes": [4, 3], "n_exemplars": 3, "seed": 5,
        "exemplars": {"0": ["g", "b", "d"], "1": ["c", "a"]}}
    crit = {"name": "silhouette", "values": {2: 0.5}, "rows": 7, "k_range": [2, 2]}
    from pathlib import Path

    from cvae_features.sheets import SheetsResult

    written = SheetsResult(Path("out"), Path("out/index.html"), {"group_00": Path("out/x.png")}, [], {})
    d = _hand_result(store="s.h5", criterion=crit, chosen_by="silhouette", sheets=written).to_dict()
    assert d["store"] == "s.h5" and d["criterion"] == crit and d["chosen_by"] == "silhouette"
    assert d["sheets"] == {"out_dir": "out", "index": "out/index.html", "files": {"group_00": "out/x.png"},
                           "skipped": [], "missing": {}}


def test_group_sheets_exemplars_then_a_seeded_sample_in_rows_of_eight_and_no_sheet_for_an_empty_group():
    import pandas as pd

    from cvae_features.groups import group_sheets

    n0 = 1200  # group 0: 1,200 members, 2 exemplars; group 1: none; group 2: 3 members, all exemplars
    keys = [f"k{i}" for i in range(n0)] + ["x", "y", "z"]
    distance = np.concatenate([np.linspace(1.0, 2.0, n0), [0.3, 0.1, 0.2]])
    exemplar = np.zeros(n0 + 3, dtype=bool)
    exemplar[[7, 3]] = True
    exemplar[n0:] = True
    frame = pd.DataFrame({"key": keys, "cluster": [0] * n0 + [2] * 3, "distance": distance, "exemplar": exemplar})
    result = _hand_result(frame=frame, k=3, sizes=[n0, 0, 3], n_rows=n0 + 3)
    sheets = group_sheets(result, per_sheet=20, seed=9)
    assert [s.name for s in sheets] == ["group_00", "group_02"]
    assert [s.heading for s in sheets] == ["Group 0: 1,200 image(s)", "Group 2: 3 image(s)"]
    rest = np.array([k for i, k in enumerate(keys[:n0]) if i not in (3, 7)])
    rng = np.random.default_rng(9)
    sample = list(rest[np.sort(rng.choice(rest.size, 18, replace=False))])
    s0 = sheets[0]
    assert s0.rows == [("closest", ["k3", "k7"]), ("sample", sample[:8]), ("sample", sample[8:16]),
                       ("sample", sample[16:])]
    assert s0.caption == ("First row: the 2 member(s) closest to the group's centre (closest first); "
                          "then 18 member(s) drawn at random (seed 9).")
    assert s0.listed == [("k3", f"distance {distance[3]:.4f}"), ("k7", f"distance {distance[7]:.4f}")]
    s2 = sheets[1]
    assert s2.rows == [("closest", ["y", "z", "x"])]
    assert s2.listed == [("y", "distance 0.1000"), ("z", "distance 0.2000"), ("x", "distance 0.3000")]
    assert "then 0 member(s) drawn" in s2.caption
    # more exemplars than cells: no sample; fewer other members than cells left: all of them
    assert group_sheets(result, per_sheet=1, seed=9)[0].rows == [("closest", ["k3", "k7"])]
    small = _hand_result()
    s = group_sheets(small, per_sheet=24)
    assert s[0].rows == [("closest", ["g", "b", "d"]), ("sample", ["e"])]
    assert s[1].rows == [("closest", ["c", "a"]), ("sample", ["f"])]
    # the default: 24 cells, seed 0
    big = group_sheets(result)[0]
    sample = list(rest[np.sort(np.random.default_rng(0).choice(rest.size, 22, replace=False))])
    assert big.rows[1:] == [("sample", sample[i:i + 8]) for i in (0, 8, 16)]
    assert big.caption.endswith("then 22 member(s) drawn at random (seed 0).")


def test_group_sheets_keep_exemplars_of_equal_distance_in_row_order():
    import pandas as pd

    from cvae_features.groups import group_sheets

    d = [0.5, 0.25, 0.5, 0.25, 0.0, 0.5, 0.25, 0.5]  # ties that an unstable sort of 8 values reorders
    frame = pd.DataFrame({"key": [f"e{i}" for i in range(8)], "cluster": 0, "distance": d, "exemplar": True})
    result = _hand_result(frame=frame, k=1, sizes=[8], n_rows=8, n_exemplars=8)
    order = ["e4", "e1", "e3", "e6", "e0", "e2", "e5", "e7"]
    sheet = group_sheets(result)[0]
    assert sheet.rows == [("closest", order)] and [key for key, _ in sheet.listed] == order
    assert result.exemplars() == {0: order}


# ----------------------------------------------------------------- group_rows written out (mutation group 'entry')

def test_group_rows_is_its_choice_of_k_fit_relabelling_and_exemplars_written_out(monkeypatch):
    import cvae_features.groups as groups
    from cvae_features.probes.cluster import fit_clusters

    X, _ = _blobs([14, 10, 8], spread=3.0, seed=5)
    keys = [f"r{i}" for i in range(32)]
    seen = []

    def fake_silhouettes(Xp, k_values, method, *, n_init, seed):
        seen.append((Xp, list(k_values), method, n_init, seed))
        return {2: 0.25, 3: 0.5, 4: 0.5, 5: None}  # a tie: the smaller k wins; None is never chosen

    fits = []

    def spied_fit(Xp, k, method, **kwargs):
        fits.append((k, method, kwargs))
        return fit_clusters(Xp, k, method, **kwargs)

    monkeypatch.setattr(groups, "silhouette_by_k", fake_silhouettes)
    monkeypatch.setattr(groups, "fit_clusters", spied_fit)
    res = group_rows(X, keys, method="gmm", k_range=(2, 5), preprocessing="standardize", n_exemplars=2,
                     selection_rows=20, n_init=2, seed=3)
    assert fits == [(3, "gmm", {"n_init": 2, "seed": 3})]
    Xp = FeaturePrep("standardize").fit_transform(X)
    sample = np.sort(np.random.default_rng(3).choice(32, 20, replace=False))
    (got_X, got_k, got_method, got_n_init, got_seed), = seen
    np.testing.assert_array_equal(got_X, Xp[sample])
    assert (got_k, got_method, got_n_init, got_seed) == ([2, 3, 4, 5], "gmm", 2, 3)
    assert res.criterion == {"name": "silhouette", "values": {2: 0.25, 3: 0.5, 4: 0.5, 5: None}, "rows": 20,
                             "k_range": [2, 5]}
    assert (res.k, res.chosen_by, res.method, res.preprocessing) == (3, "silhouette", "gmm", "standardize")
    assert (res.n_rows, res.n_exemplars, res.seed) == (32, 2, 3)
    est = fit_clusters(Xp, 3, "gmm", n_init=2, seed=3)
    pred = est.predict(Xp)
    order = np.argsort(-np.bincount(pred, minlength=3), kind="stable")
    relabel = np.empty(3, dtype=np.int64)
    relabel[order] = np.arange(3)
    labels, centres = relabel[pred], est.means_[order]
    np.testing.assert_array_equal(res.centres, centres)
    distance = np.linalg.norm(Xp - centres[labels], axis=1)
    assert list(res.frame.columns) == ["key", "cluster", "distance", "exemplar"]
    assert list(res.frame["key"]) == keys
    np.testing.assert_array_equal(res.frame["cluster"], labels)
    np.testing.assert_array_equal(res.frame["distance"], distance)
    exemplar = np.zeros(32, dtype=bool)
    for c in range(3):
        members = np.flatnonzero(labels == c)
        exemplar[members[np.argsort(distance[members])[:2]]] = True
    np.testing.assert_array_equal(res.frame["exemplar"], exemplar)
    assert res.sizes == np.bincount(labels, minlength=3).tolist() and res.sizes == sorted(res.sizes, reverse=True)
    assert len(set(res.sizes)) == 3  # sizes that differ: the relabelling is seen
    # few rows: the silhouette on all of them
    seen.clear()
    res = group_rows(X[:20], k_range=(2, 3), selection_rows=20)
    np.testing.assert_array_equal(seen[0][0], FeaturePrep("l2").fit_transform(X[:20]))
    assert res.criterion["rows"] == 20 and list(res.frame["key"]) == [str(i) for i in range(20)]
    assert (seen[0][2], seen[0][3], seen[0][4]) == ("kmeans", 10, 0)
    assert fits[-1] == (3, "kmeans", {"n_init": 10, "seed": 0})
    # no k splits the rows: each k is named
    monkeypatch.setattr(groups, "silhouette_by_k", lambda Xp, ks, method, **kw: dict.fromkeys(ks))
    with pytest.raises(DataTooSmall) as err:
        group_rows(X, k_range=(3, 6))
    assert str(err.value).startswith("no k in 3..6 splits the rows into two or more distinct groups")


def test_group_rows_names_its_settings_in_errors():
    X, _ = _blobs([10, 10])
    for kwargs, start in (({"method": "dbscan"}, "method: "), ({"preprocessing": "whiten"}, "preprocessing: "),
                          ({"n_exemplars": 0}, "n_exemplars: expected an integer >= 1, got 0"),
                          ({"n_exemplars": True}, "n_exemplars: expected an integer >= 1, got True"),
                          ({"n_exemplars": 2.0}, "n_exemplars: expected an integer >= 1, got 2.0")):
        with pytest.raises(ConfigError) as err:
            group_rows(X, k=2, **kwargs)
        assert str(err.value).startswith(start), str(err.value)
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ConfigError) as err:
        group_rows(X_nan, k=2)
    assert str(err.value).startswith("X: ")
    res = group_rows(X, k=2, n_exemplars=np.int64(1))
    assert res.n_exemplars == 1 and type(res.n_exemplars) is int and int(res.frame["exemplar"].sum()) == 2


def test_group_rows_breaks_ties_of_size_in_fitted_order_and_of_distance_in_row_order():
    from cvae_features.probes.cluster import fit_clusters

    centres = np.random.default_rng(0).normal(size=(20, 3)) * 100
    X = np.repeat(centres, [2, 3] * 10, axis=0)  # 20 groups of 2 or 3 copies: sizes tie across many groups
    res = group_rows(X, k=20, preprocessing="none")
    pred = fit_clusters(X, 20, "kmeans").predict(X)
    sizes = np.bincount(pred, minlength=20)
    order = sorted(range(20), key=lambda c: -sizes[c])  # the largest first, ties in the fitted order
    relabel = np.empty(20, dtype=np.int64)
    relabel[order] = np.arange(20)
    np.testing.assert_array_equal(res.frame["cluster"], relabel[pred])
    # a group of 40 rows that are copies of 3 points (the order found by a search: quicksort breaks the ties of
    # distance otherwise) and one of 20: the exemplars are the first copies of the nearest point, in row order
    pattern = [0, 2, 0, 0, 1, 1, 0, 2, 2, 2, 0, 2, 0, 1, 2, 0, 2, 0, 0, 2, 1, 1, 0, 0, 1, 1, 1, 2, 1, 1, 2, 2, 1, 0,
               2, 1, 2, 1, 1, 0]
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])[pattern]
    X = np.vstack([points, points[:20] + 50])
    res = group_rows(X, k=2, preprocessing="none", n_exemplars=5)
    f = res.frame
    for c in range(2):
        members = np.flatnonzero(f["cluster"].to_numpy() == c)
        distance = f["distance"].to_numpy()[members]
        closest = members[sorted(range(members.size), key=lambda i: distance[i])[:5]]
        np.testing.assert_array_equal(np.flatnonzero(f["exemplar"].to_numpy() & (f["cluster"].to_numpy() == c)),
                                      closest)
        assert len(set(distance[np.isin(members, closest)])) == 1  # five of the tied copies
