"""helpers.recommend: a split by time that leaks nothing, the ranking metrics as scikit-learn defines them, and
scorers that never recommend what a user has already rated."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from helpers import recommend as rec
from helpers.data import movielens

pytestmark = pytest.mark.usefixtures("one_thread")


def frame(rows):
    """Ratings (userId, movieId, rating, timestamp) with the movie columns item_text reads."""
    ratings = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    ratings["title"] = "Movie " + ratings["movieId"].astype(str)
    ratings["year"] = 2000.0
    ratings["genres"] = "Drama"
    return ratings


# user 1 rates 10, 20, 30, 40 in time order; user 2 rates 20, 50, 60; user 3 rates only 10 (stays in train).
# The last rating of users 1 and 2 is held out: 40 and 60, so movie 60 is rated in test only (cold start).
SMALL = frame(
    [(1, 10, 5, 1), (1, 20, 3, 2), (1, 30, 4, 3), (1, 40, 2, 4), (2, 20, 2, 1), (2, 50, 3, 2), (2, 60, 4, 3), (3, 10, 1, 1)]
)


def small():
    train, test = rec.time_split(SMALL, 0.25)
    return train, test, rec.Interactions.from_split(train, test)


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_time_split_of_movielens_leaks_no_later_rating_into_training():
    ratings = movielens()
    assert len(ratings) == 100_004 and ratings["userId"].nunique() == 671 and ratings["movieId"].nunique() == 9066
    assert all(isinstance(g, str) for g in ratings["genres"])
    train, test = rec.time_split(ratings)
    assert not train.index.intersection(test.index).size and train.index.union(test.index).equals(ratings.index)
    by_user = pd.concat([train.groupby("userId")["timestamp"].max(), test.groupby("userId")["timestamp"].min()], axis=1)
    assert by_user.iloc[:, 0].notna().all()  # every user keeps a training rating
    assert (by_user.iloc[:, 0] <= by_user.iloc[:, 1]).all()  # no training rating comes after a test rating of its user
    assert abs(len(test) / len(ratings) - 0.2) < 0.005


def test_interactions_index_cold_start_items_and_give_the_training_matrix():
    train, test, inter = small()
    assert sorted(test["movieId"]) == [40, 60] and 3 in train["userId"].to_numpy()
    assert list(inter.item_ids) == [10, 20, 30, 40, 50, 60] and (inter.n_users, inter.n_items) == (3, 6)
    trained = set(np.concatenate(inter.train_items))
    assert list(inter.cold_items) == [i for i in range(inter.n_items) if i not in trained] == [3, 5]
    assert [list(t) for t in inter.test_items] == [[3], [5], []]
    matrix = inter.train_matrix().toarray()
    assert matrix[0].tolist() == [5, 3, 4, 0, 0, 0] and (inter.train_matrix(binary=True).toarray() == (matrix > 0)).all()
    assert rec.popularity_scores(inter).tolist() == [2, 2, 1, 0, 1, 0]
    assert rec.item_text(SMALL, inter)[0] == "Movie 10 (2000) — Drama"


def test_item_text_keeps_one_year_and_drops_missing_parts():
    assert rec._movie_text("Heat", 1995.0, "Action|Crime") == "Heat (1995) — Action, Crime"
    assert rec._movie_text("Heat (1995)", 1995.0, "(no genres listed)") == "Heat (1995)"
    assert rec._movie_text(np.nan, np.nan, "Comedy") == "Untitled — Comedy"


def test_top_k_never_returns_a_training_item_and_respects_candidates():
    _, _, inter = small()
    scores = np.arange(6, dtype=np.float32)[::-1].copy()  # item 0 best
    ranked = rec.top_k(scores, inter, k=3)
    assert ranked.tolist() == [[3, 4, 5], [0, 2, 3], [1, 2, 3]]
    assert rec.top_k(np.zeros(6), inter, k=2).tolist() == [[3, 4], [0, 2], [1, 2]]  # ties by item index
    assert rec.top_k(scores, inter, k=2, candidates=inter.cold_items).tolist() == [[3, 5], [3, 5], [3, 5]]
    with pytest.raises(ValueError, match="fewest unrated candidates"):
        rec.top_k(scores, inter, k=3, candidates=inter.cold_items)
    with pytest.raises(ValueError, match=r"scores must be \(n_users, n_items\)"):
        rec.top_k(np.zeros((2, 6)), inter)


@pytest.mark.parametrize("seed", range(4))
def test_ndcg_at_k_is_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 12, 30, 5
    y_true = np.zeros((n_users, n_items))
    for u in range(n_users):  # from 1 to 12 relevant items, fewer and more than k
        y_true[u, rng.choice(n_items, size=rng.integers(1, 13), replace=False)] = 1
    y_score = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(float)  # no ties
    ranked = np.argsort(-y_score, axis=1)
    relevant = [np.flatnonzero(row) for row in y_true]
    assert rec.ndcg_at_k(ranked, relevant, k) == pytest.approx(ndcg_score(y_true, y_score, k=k))


def test_recall_at_k_by_hand_skips_users_without_relevant_items():
    ranked = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    relevant = [np.array([1, 9]), np.array([3, 4, 5, 6]), np.array([], dtype=int)]
    assert rec.recall_at_k(ranked, relevant, k=2) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert rec.ndcg_at_k(ranked, relevant, k=1) == pytest.approx((0 + 1) / 2)
    with pytest.raises(ValueError, match="No user has a relevant item"):
        rec.recall_at_k(ranked, [np.array([], dtype=int)] * 3, k=2)


def test_user_metrics_are_per_user_and_average_to_evaluate():
    _, _, inter = small()
    scores = np.arange(6, dtype=np.float32)[::-1].copy()  # item 0 best
    per_user = rec.user_metrics(scores, inter, k=2)
    # user 0 (held out: item 3) gets [3, 4]: a hit at rank 1; user 1 (held out: 5) gets [0, 2]: none; user 2 has no test.
    assert per_user["recall"].tolist() == [1.0, 0.0] and per_user["ndcg"].tolist() == [1.0, 0.0]
    assert rec.evaluate(scores, inter, k=2) == {"recall": 0.5, "ndcg": 0.5, "n_users": 2}
    cold = rec.user_metrics(scores, inter, k=2, cold_only=True)
    assert cold["recall"].tolist() == [1.0, 1.0]  # both held-out items are cold, and only two cold items exist


def test_text_profiles_are_rating_weighted_means_of_liked_items_of_unit_length():
    _, _, inter = small()
    emb = unit_rows(6, 8)
    profiles = rec.text_profiles(inter, emb)
    assert np.allclose(np.linalg.norm(profiles, axis=1), 1)
    expected = [5 * emb[0] + 4 * emb[2], emb[1] + emb[4], emb[0]]  # user 2 liked nothing: all items, equally
    for profile, want in zip(profiles, expected):
        assert np.allclose(profile, want / np.linalg.norm(want), atol=1e-6)
    with pytest.raises(ValueError, match=r"item_emb must be \(n_items, d\)"):
        rec.text_profiles(inter, emb[:5])


def test_svd_with_full_rank_reproduces_the_rating_matrix():
    _, _, inter = small()
    assert np.allclose(rec.svd_scores(inter, n_components=3), inter.train_matrix().toarray(), atol=1e-4)
    matrix = inter.train_matrix().toarray()
    u, s, vt = np.linalg.svd(matrix)
    assert np.allclose(rec.svd_scores(inter, n_components=2), (u[:, :2] * s[:2]) @ vt[:2], atol=1e-4)


def test_two_tower_starts_as_text_profiles_learns_and_is_reproducible():
    rng = np.random.default_rng(0)
    # 40 users, 60 movies: each user rates 12 movies of their own "taste" (a third of the catalogue).
    rows = [(u, int(m), 4.5, t) for u in range(40) for t, m in enumerate(rng.choice(20, 12, replace=False) + 20 * (u % 3))]
    train, test = rec.time_split(frame(rows))
    inter = rec.Interactions.from_split(train, test)
    emb = unit_rows(inter.n_items, 16, seed=1)
    untrained, _ = rec.train_two_tower(inter, emb, hidden=16, epochs=1, lr=0.0, progress=False)
    assert np.allclose(rec.two_tower_scores(untrained, inter, emb), rec.text_profiles(inter, emb) @ emb.T, atol=1e-5)
    model, losses = rec.train_two_tower(inter, emb, hidden=16, epochs=20, batch_size=32, lr=1e-2, progress=False)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    again, _ = rec.train_two_tower(inter, emb, hidden=16, epochs=20, batch_size=32, lr=1e-2, progress=False)
    scores = rec.two_tower_scores(model, inter, emb)
    assert np.array_equal(scores, rec.two_tower_scores(again, inter, emb)) and scores.shape == (inter.n_users, inter.n_items)
    result = rec.evaluate(scores, inter, k=5)
    assert set(result) == {"recall", "ndcg", "n_users"} and result["n_users"] == 40
    assert result["recall"] > 2 * rec.evaluate(rec.text_profiles(inter, emb) @ emb.T, inter, k=5)["recall"]  # 0.49 vs 0.11
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        rec.train_two_tower(inter, emb, epochs=0, progress=False)


def test_bad_input_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        rec.time_split(SMALL, 1.0)
    with pytest.raises(ValueError, match=r"lacks the columns \['timestamp'\]"):
        rec.time_split(SMALL.drop(columns="timestamp"))
    with pytest.raises(TypeError, match="pandas DataFrame"):
        rec.time_split(SMALL.to_numpy())
    train, test = rec.time_split(SMALL, 0.25)
    with pytest.raises(ValueError, match="no training rating"):
        rec.Interactions.from_split(train[train["userId"] != 1], test)
    with pytest.raises(ValueError, match="occurs twice"):
        rec.Interactions.from_split(train, pd.concat([test, train.head(1)]))
