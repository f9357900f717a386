"""Top-N recommendation from ratings, evaluated by time (chapter 08, section 8).

The question a recommender answers: given what a user has rated so far, which ten movies will they rate next?
:func:`time_split` holds out each user's latest ratings, so that no model is scored on a past it was shown the future
of; :class:`Interactions` numbers users and movies, including the *cold-start* movies that only held-out ratings
mention. Four scorers, each a (users, items) array of scores:

- :func:`popularity_scores`: the most-rated movies, the same for everyone: the baseline to beat;
- :func:`svd_scores`: PureSVD, a low-rank reconstruction of who rated what (collaborative filtering: a movie needs
  ratings to be scored, so cold-start movies get nothing);
- :func:`text_profiles`: a user's mean MiniLM embedding of what they liked, matched against each movie's text
  (content-based: any movie with a title can be scored);
- :class:`TwoTower`: the text model fine-tuned on the training ratings (:func:`train_two_tower`), still from text only.

:func:`top_k` ranks the movies a user has not rated; :func:`recall_at_k`, :func:`ndcg_at_k` and :func:`evaluate` score
the rankings, over all movies or over the cold-start movies only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from helpers.batches import seeded_generator
from helpers.env import eval_mode

#: A training rating at or above this is "liked": profiles are built from liked movies (see :func:`text_profiles`).
LIKED = 4.0
_NO_GENRES = "(no genres listed)"


def _check_frame(frame, columns: tuple[str, ...], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame of ratings, got {type(frame).__name__}.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}: it needs {list(columns)}, as helpers.data.movielens() has.")


def time_split(ratings: pd.DataFrame, test_fraction: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)``: each user's last ``max(1, round(test_fraction * n))`` of their ``n`` ratings, in order of
    (timestamp, movieId), go to test, the rest to train; a user with one rating keeps it in train. Splitting each
    user by time (not at random) scores a model on what users rated *after* everything it was trained on, as a
    deployed recommender is. Rows keep their index, so ``train`` and ``test`` partition ``ratings``; ``round`` rounds
    halves up. Taught in chapter 08, section 8."""
    _check_frame(ratings, ("userId", "movieId", "timestamp"), "ratings")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1 (e.g. 0.2), got {test_fraction!r}.")
    users = ratings["userId"].to_numpy()
    order = np.lexsort((ratings["movieId"].to_numpy(), ratings["timestamp"].to_numpy(), users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    n_test = np.minimum(counts - 1, np.maximum(1, np.floor(test_fraction * counts + 0.5)).astype(int))
    position = np.arange(len(order)) - np.repeat(starts, counts)
    is_test = np.empty(len(order), dtype=bool)
    is_test[order] = position >= np.repeat(counts - n_test, counts)
    return ratings[~is_test], ratings[is_test]


def _by_user(users: np.ndarray, values: list[np.ndarray], n_users: int) -> list[list[np.ndarray]]:
    """``values`` grouped by user index, each user's entries in order of the first value (an item index)."""
    order = np.lexsort((values[0], users))
    cuts = np.cumsum(np.bincount(users, minlength=n_users))[:-1]
    return [np.split(v[order], cuts) for v in values]


@dataclass
class Interactions:
    """Users and movies numbered 0, 1, ... (``user_ids[u]``, ``item_ids[i]`` give back the MovieLens ids, both
    sorted), over every movie of train *or* test, so that a cold-start movie (rated only in test) has an index and can
    be scored from its text. Per user index ``u``: ``train_items[u]`` and ``train_ratings[u]`` (sorted by item index)
    and ``test_items[u]``; ``cold_items`` are the item indices with no training rating. Build it with
    :meth:`from_split`. Taught in chapter 08, section 8."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    train_items: list[np.ndarray]
    train_ratings: list[np.ndarray]
    test_items: list[np.ndarray]
    cold_items: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_split(cls, train: pd.DataFrame, test: pd.DataFrame) -> Interactions:
        """Index the ``train`` and ``test`` ratings of :func:`time_split`: every user needs a training rating (a
        user's profile is built from them) and each (user, movie) pair may occur once in all. Chapter 08, section 8."""
        for frame, name in ((train, "train"), (test, "test")):
            _check_frame(frame, ("userId", "movieId", "rating"), name)
        both = pd.concat([train[["userId", "movieId"]], test[["userId", "movieId"]]])
        if both.duplicated().any():
            raise ValueError("A (userId, movieId) pair occurs twice in train and test: keep one rating per pair, then split.")
        user_ids, item_ids = np.unique(both["userId"].to_numpy()), np.unique(both["movieId"].to_numpy())
        u_train = np.searchsorted(user_ids, train["userId"].to_numpy())
        i_train = np.searchsorted(item_ids, train["movieId"].to_numpy())
        no_train = np.setdiff1d(np.arange(len(user_ids)), u_train)
        if len(no_train):
            raise ValueError(
                f"{len(no_train)} users (e.g. userId {user_ids[no_train[0]]}) have test ratings but no training rating: "
                "split with time_split, which keeps at least one rating of every user in train."
            )
        train_items, train_ratings = _by_user(u_train, [i_train, train["rating"].to_numpy(np.float32)], len(user_ids))
        u_test = np.searchsorted(user_ids, test["userId"].to_numpy())
        (test_items,) = _by_user(u_test, [np.searchsorted(item_ids, test["movieId"].to_numpy())], len(user_ids))
        cold = np.setdiff1d(np.arange(len(item_ids)), i_train)
        return cls(user_ids, item_ids, train_items, train_ratings, test_items, cold)

    def train_matrix(self, binary: bool = False) -> sp.csr_matrix:
        """The training ratings as a sparse (users, items) float32 matrix: the ratings, or 1 for every rated movie
        with ``binary=True``; 0 where a user has not rated a movie. Chapter 08, section 8."""
        rows = np.repeat(np.arange(self.n_users), [len(items) for items in self.train_items])
        values = np.concatenate(self.train_ratings)
        values = np.ones_like(values) if binary else values
        return sp.csr_matrix((values, (rows, np.concatenate(self.train_items))), shape=(self.n_users, self.n_items))


def _movie_text(title, year, genres) -> str:
    text = title if isinstance(title, str) else "Untitled"  # 4 MovieLens movies have no title (nor year)
    if pd.notna(year) and not text.endswith(f"({int(year)})"):  # some MovieLens versions keep the year in the title
        text += f" ({int(year)})"
    kinds = [g for g in genres.split("|") if g != _NO_GENRES] if isinstance(genres, str) else []
    return f"{text} — {', '.join(kinds)}" if kinds else text


def item_text(frame: pd.DataFrame, inter: Interactions) -> list[str]:
    """One text per movie of ``inter``, in index order, for a sentence encoder: ``"Title (year) — Genre1, Genre2"``,
    without the year where it is unknown and without genres for ``"(no genres listed)"``. ``frame`` holds the movies'
    ``movieId, title, year, genres`` (the ratings frame will do). Taught in chapter 08, section 8."""
    _check_frame(frame, ("movieId", "title", "year", "genres"), "frame")
    movies = frame.drop_duplicates("movieId").set_index("movieId")
    missing = np.setdiff1d(inter.item_ids, movies.index.to_numpy())
    if len(missing):
        raise ValueError(f"frame lacks {len(missing)} movies of inter (e.g. movieId {missing[0]}): pass the full ratings frame.")
    movies = movies.loc[inter.item_ids]
    return [_movie_text(t, y, g) for t, y, g in zip(movies["title"], movies["year"], movies["genres"])]


def popularity_scores(inter: Interactions) -> np.ndarray:
    """The number of training ratings of each item, (n_items,) float32: everyone gets the most-rated movies they have
    not seen, and every cold-start movie scores 0. Taught in chapter 08, section 8."""
    return np.bincount(np.concatenate(inter.train_items), minlength=inter.n_items).astype(np.float32)


def svd_scores(inter: Interactions, n_components: int = 32, seed: int = 0) -> np.ndarray:
    """PureSVD (Cremonesi, Koren and Turrin, 2010): the rank-``n_components`` reconstruction ``U Σ Vᵀ`` of the
    (users, items) training rating matrix, 0 where a user has not rated a movie, by scikit-learn's ``TruncatedSVD``,
    as (n_users, n_items) float32 scores. As ``U Σ = X V``, a user's scores are their row ``x`` projected on the top
    item factors and back, ``x V Vᵀ``: a movie scores high when users who rated like this user rated it. We factorise
    the ratings, as the paper does, rather than the binary rated-or-not matrix: on a validation split (the last 20 %
    of each user's training ratings) they rank slightly better, and 32 components did best of 16 to 128. A cold-start
    movie has an empty column, so it scores 0 for everyone. Taught in chapter 08, section 8."""
    from sklearn.decomposition import TruncatedSVD

    if isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components < inter.n_items:
        raise ValueError(f"n_components must be an integer from 1 to n_items - 1 = {inter.n_items - 1}, got {n_components!r}.")
    matrix = inter.train_matrix()
    factors = TruncatedSVD(n_components, random_state=seed).fit(matrix).components_  # V^T: (k, n_items)
    return np.asarray((matrix @ factors.T) @ factors, dtype=np.float32)


def _embeddings(item_emb, inter: Interactions) -> np.ndarray:
    emb = item_emb.detach().cpu().numpy() if isinstance(item_emb, torch.Tensor) else np.asarray(item_emb)
    if emb.ndim != 2 or len(emb) != inter.n_items:
        raise ValueError(
            f"item_emb must be (n_items, d) = ({inter.n_items}, d), one row per item in index order, got {emb.shape}: "
            "embed item_text(frame, inter)."
        )
    return emb.astype(np.float32)


def _profile_weights(inter: Interactions) -> sp.csr_matrix:
    """(users, items) weights that sum to 1 per user: a user's liked movies weighted by rating, else all equally."""
    weights = []
    for ratings in inter.train_ratings:
        liked = ratings >= LIKED
        w = np.where(liked, ratings, 0) if liked.any() else np.ones_like(ratings)
        weights.append(w / w.sum())
    rows = np.repeat(np.arange(inter.n_users), [len(items) for items in inter.train_items])
    matrix = sp.csr_matrix((np.concatenate(weights), (rows, np.concatenate(inter.train_items))), (inter.n_users, inter.n_items))
    matrix.eliminate_zeros()
    return matrix


def text_profiles(inter: Interactions, item_emb) -> np.ndarray:
    """Each user's taste as one unit vector (n_users, d): the mean of the embeddings ``item_emb`` (n_items, d) of the
    movies they liked in train (rated >= :data:`LIKED`), weighted by rating, or of all their training movies, equally,
    if they liked none. ``text_profiles(inter, emb) @ emb.T`` then scores every movie, cold-start ones included, by
    its cosine to the profile. Taught in chapter 08, section 8."""
    profiles = _profile_weights(inter) @ _embeddings(item_emb, inter)
    return (profiles / np.linalg.norm(profiles, axis=1, keepdims=True)).astype(np.float32)


class TwoTower(nn.Module):
    """Two small towers over frozen MiniLM vectors, cosine of their outputs as the score: the user tower reads a
    user's text profile (:func:`text_profiles`), the item tower a movie's embedding. Each tower is ``x + B(GELU(A x))``
    then unit length, with ``B`` zero at the start, so that the untrained model scores exactly as text profiles do and
    training only bends that space (a residual, rather than a linear map started at the identity, lets the towers
    learn non-linear corrections and costs 2 * dim * hidden weights each). Neither tower has a per-user or per-movie
    parameter: a cold-start movie is scored from its text alone, a new user from their history.
    Taught in chapter 08, section 8."""

    def __init__(self, dim: int = 384, hidden: int = 256):
        super().__init__()
        self.user_tower = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.item_tower = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        for tower in (self.user_tower, self.item_tower):
            nn.init.zeros_(tower[2].weight)
            nn.init.zeros_(tower[2].bias)

    def forward(self, profiles: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, dim) profiles and (items, dim) item embeddings -> their unit output vectors. Chapter 08, section 8."""
        return F.normalize(profiles + self.user_tower(profiles), dim=-1), F.normalize(items + self.item_tower(items), dim=-1)


def train_two_tower(
    inter: Interactions,
    item_emb,
    *,
    hidden: int = 256,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 1e-3,
    temperature: float = 0.05,
    seed: int = 0,
    logq: float = 1.0,
    progress: bool = True,
) -> tuple[TwoTower, list[float]]:
    """Fine-tune a :class:`TwoTower` on the training ratings; returns it and the loss of every step.

    Each training (user, movie) pair is a positive: the user's profile must pick that movie out of the batch's other
    movies (in-batch sampled softmax, logits = cosines / ``temperature``), with the batch's movies that the user has
    rated in train masked out, as they are not negatives. The profile of a pair leaves that very movie out of the
    user's history (leave-one-out, weighted as in :func:`text_profiles`): with it in, the model would learn to find
    each movie by its own embedding. Users with a single training rating have no history left and give no pair.

    A batch draws its negatives in proportion to how often movies are rated, so the plain in-batch softmax
    (``logq=0``) learns to discount popular movies: good at ranking the cold-start movies among themselves, poor
    over the whole catalogue, where popular movies are what users rate next. ``logq=1`` subtracts each negative's
    log-frequency from its logit, the sampling-bias correction of Yi et al. (2019), which makes the loss estimate the
    full softmax over all movies; values in between trade one for the other. AdamW; batches in a seeded order, the
    weights seeded too, so the same ``seed`` gives the same model. Taught in chapter 08, section 8."""
    for name, value in (("hidden", hidden), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not temperature > 0 or not logq >= 0:
        raise ValueError(f"temperature must be > 0 (e.g. 0.05) and logq >= 0 (0 to 1), got {temperature!r} and {logq!r}.")
    emb = torch.from_numpy(_embeddings(item_emb, inter))
    users = np.repeat(np.arange(inter.n_users), [len(items) for items in inter.train_items])
    items = np.concatenate(inter.train_items)
    ratings = torch.from_numpy(np.concatenate(inter.train_ratings))
    # Per user: the weighted sum of the liked movies' embeddings, its number of liked movies, the sum over all movies.
    liked_weight = torch.where(ratings >= LIKED, ratings, 0.0)
    u, i = torch.from_numpy(users), torch.from_numpy(items)
    liked_sum = torch.zeros(inter.n_users, emb.shape[1]).index_add_(0, u, liked_weight[:, None] * emb[i])
    n_liked = torch.zeros(inter.n_users).index_add_(0, u, (liked_weight > 0).float())
    all_sum = torch.zeros(inter.n_users, emb.shape[1]).index_add_(0, u, emb[i])
    rated = torch.from_numpy(np.sort(users * inter.n_items + items))  # (user, item) keys, to find accidental hits
    pairs = torch.from_numpy(np.flatnonzero(np.bincount(users, minlength=inter.n_users)[users] > 1))
    if len(pairs) == 0:
        raise ValueError("No user has two training ratings, so no pair has a history to learn from.")

    # How often each movie is a positive, so how often a batch draws it as a negative (see logq in the docstring).
    log_q = torch.log(torch.bincount(i[pairs], minlength=inter.n_items).float().clamp(min=1) / len(pairs))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TwoTower(emb.shape[1], hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    losses = []
    with tqdm(total=epochs * steps_per_epoch, desc="two-tower", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            order = pairs[torch.randperm(len(pairs), generator=seeded_generator(seed, epoch))]
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                bu, bi, w = u[batch], i[batch], liked_weight[batch]
                # Leave-one-out profile: the user's liked sum without this movie, or all their other movies if it
                # was their only liked one (the text_profiles rule, applied to the history without the movie).
                liked_rest = liked_sum[bu] - w[:, None] * emb[bi]
                any_liked = (n_liked[bu] - (w > 0).float() > 0)[:, None]
                profiles = F.normalize(torch.where(any_liked, liked_rest, all_sum[bu] - emb[bi]), dim=-1)
                user_vec, item_vec = model(profiles, emb[bi])
                logits = user_vec @ item_vec.T / temperature
                logits = logits - logq * log_q[bi][None, :]
                keys = bu[:, None] * inter.n_items + bi[None, :]
                found = rated[torch.searchsorted(rated, keys).clamp(max=len(rated) - 1)] == keys
                logits = logits.masked_fill(found & ~torch.eye(len(batch), dtype=torch.bool), float("-inf"))
                loss = F.cross_entropy(logits, torch.arange(len(batch)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval(), losses


def two_tower_scores(model: TwoTower, inter: Interactions, item_emb) -> np.ndarray:
    """(n_users, n_items) float32 scores of a trained :class:`TwoTower`: each user's full training profile
    (:func:`text_profiles`) through the user tower, against every movie through the item tower, cold-start movies
    included. Taught in chapter 08, section 8."""
    emb = torch.from_numpy(_embeddings(item_emb, inter))
    with torch.no_grad(), eval_mode(model):
        user_vec, item_vec = model(torch.from_numpy(text_profiles(inter, emb)), emb)
    return (user_vec @ item_vec.T).numpy()


def top_k(scores, inter: Interactions, k: int = 10, candidates: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best-scored item indices per user, best first, (n_users, k): never a movie the user rated in train,
    and only ``candidates`` (item indices) when given. ``scores`` is (n_users, n_items), or (n_items,) for the same
    scores for everyone. Equal scores rank by item index (a stable sort), so the result is deterministic.
    Taught in chapter 08, section 8."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape not in ((inter.n_items,), (inter.n_users, inter.n_items)):
        raise ValueError(
            f"scores must be (n_users, n_items) = ({inter.n_users}, {inter.n_items}) or (n_items,), got {scores.shape}."
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: every item needs a score (use -inf for an item never to recommend).")
    allowed = np.zeros(inter.n_items, dtype=bool)
    allowed[np.arange(inter.n_items) if candidates is None else np.asarray(candidates, dtype=int)] = True
    masked = np.array(np.broadcast_to(np.where(allowed, scores, -np.inf), (inter.n_users, inter.n_items)))
    rows = np.repeat(np.arange(inter.n_users), [len(items) for items in inter.train_items])
    masked[rows, np.concatenate(inter.train_items)] = -np.inf
    fewest = min(allowed.sum() - allowed[items].sum() for items in inter.train_items)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= fewest:
        raise ValueError(f"k must be an integer from 1 to {fewest}, the fewest unrated candidates of a user, got {k!r}.")
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def _hits(ranked, relevant: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hits (users, k) in the top ``k`` and the number of relevant items, for the users with a relevant item."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[1] < k or len(ranked) != len(relevant):
        raise ValueError(
            f"ranked must be (n_users, >= k={k}) with one list of relevant items per user, got {ranked.shape} and "
            f"{len(relevant)} lists."
        )
    users = [u for u, rel in enumerate(relevant) if len(rel)]
    if not users:
        raise ValueError("No user has a relevant item, so there is nothing to score.")
    hits = np.array([np.isin(ranked[u, :k], relevant[u]) for u in users])
    return hits, np.array([len(np.unique(relevant[u])) for u in users])


def _user_recall(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / n_relevant


def _user_ndcg(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    discount = 1 / np.log2(np.arange(2, k + 2))
    return hits @ discount / np.cumsum(discount)[np.minimum(n_relevant, k) - 1]


def recall_at_k(ranked, relevant: list[np.ndarray], k: int = 10) -> float:
    """Recall@k: the share of a user's relevant items found in their top ``k`` (``ranked``, as :func:`top_k` gives),
    ``|top k ∩ relevant| / |relevant|``, averaged over the users with at least one relevant item. A user with more
    than ``k`` relevant items cannot reach 1. Taught in chapter 08, section 8."""
    return float(np.mean(_user_recall(*_hits(ranked, relevant, k))))


def ndcg_at_k(ranked, relevant: list[np.ndarray], k: int = 10) -> float:
    """NDCG@k with binary relevance, averaged over the users with at least one relevant item: a hit at rank r
    (1-based) gains ``1 / log2(r + 1)``, divided by the best possible, all of the first ``min(k, |relevant|)`` ranks
    hits. Unlike recall it rewards finding the relevant items early in the list (as scikit-learn's ``ndcg_score``).
    Taught in chapter 08, section 8."""
    return float(np.mean(_user_ndcg(*_hits(ranked, relevant, k), k)))


def user_metrics(scores, inter: Interactions, k: int = 10, cold_only: bool = False) -> dict[str, np.ndarray]:
    """``{"recall", "ndcg"}``: Recall@k and NDCG@k of ``scores`` (as :func:`top_k` takes them) for each user with a
    relevant movie, in user order. Every test movie of a user is relevant and every movie they did not rate in train
    is a candidate; with ``cold_only=True`` only the cold-start movies are candidates and relevant. The means are
    :func:`evaluate`'s; two recommenders' arrays are aligned user by user, for paired intervals
    (:func:`helpers.metrics.mean_with_interval` of their difference). Taught in chapter 08, section 8."""
    if cold_only:
        relevant = [np.intersect1d(items, inter.cold_items) for items in inter.test_items]
        ranked = top_k(scores, inter, k, candidates=inter.cold_items)
    else:
        relevant, ranked = inter.test_items, top_k(scores, inter, k)
    hits, n_relevant = _hits(ranked, relevant, k)
    return {"recall": _user_recall(hits, n_relevant), "ndcg": _user_ndcg(hits, n_relevant, k)}


def evaluate(scores, inter: Interactions, k: int = 10, cold_only: bool = False) -> dict:
    """``{"recall", "ndcg", "n_users"}``: the means of :func:`user_metrics` over the users with a relevant movie
    (``n_users`` of them). Taught in chapter 08, section 8."""
    per_user = user_metrics(scores, inter, k, cold_only)
    return {"recall": float(per_user["recall"].mean()), "ndcg": float(per_user["ndcg"].mean()), "n_users": len(per_user["ndcg"])}
