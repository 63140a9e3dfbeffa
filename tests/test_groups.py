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
