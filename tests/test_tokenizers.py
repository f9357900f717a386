"""Tokenizers: byte-level round trips on hostile text, <unk> handling, parity with tiktoken and with a naive BPE
trainer, determinism, save/load, and the cached course tokenizer."""

from collections import Counter

import numpy as np
import pytest
import regex
import torch

from helpers import data
from helpers.tokenizers import (
    GPT2_EOT,
    GPT2_EOT_ID,
    GPT2_PATTERN,
    SPECIAL_TOKENS,
    BPETokenizer,
    CharTokenizer,
    CourseTokenizer,
    byte_level_token_bytes,
    course_tokenizer,
    gpt2_encoding,
    gpt2_ranks,
    merge_pair,
    tokens_per_char,
    train_library_bpe,
)

HOSTILE = [
    "",
    "🤖🎉 👩‍👩‍👧‍👦 family",
    "中文日本語한국어 mixed with English",
    "e\u0301 a\u0308 n\u0303 (combining marks) vs é ä ñ",
    "\x00\x01\x1b[31m red \x7f\t\r\n",
    " " * 64 + "\n\n\n\t\t   x   ",
    "<|endoftext|> as plain text",
    "I'm sure they'll've 12345 3.14159 $$$ ---",
    "def f(x):\n    return x ** 2  # ok\n",
]


@pytest.fixture(scope="module")
def sample_text():
    return "\n".join(data.corpus_text("train").splitlines()[::40])


@pytest.fixture(scope="module")
def bpe(sample_text):
    return BPETokenizer.train(sample_text, 400, special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module")
def gpt2_pair():
    return BPETokenizer.from_tiktoken_ranks(gpt2_ranks(), {GPT2_EOT: GPT2_EOT_ID}), gpt2_encoding()


def naive_train(text, n_merges):
    """The textbook trainer: recount every pair of every word before each merge."""
    words = Counter(regex.findall(GPT2_PATTERN, text))
    seqs = {w: list(w.encode("utf-8")) for w in words}
    merges = {}
    for new_id in range(256, 256 + n_merges):
        counts = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = new_id
        seqs = {w: merge_pair(seq, best, new_id) for w, seq in seqs.items()}
    return merges


@pytest.mark.parametrize("text", HOSTILE)
def test_bpe_round_trips_hostile_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_compresses_and_handles_specials(bpe, sample_text):
    assert bpe.vocab_size == 400 and len(bpe.merges) == 399 - 256
    assert tokens_per_char(bpe.encode, sample_text.splitlines()[:50]) < 0.6
    eot = bpe.special_tokens["<|endoftext|>"]
    assert bpe.encode("a<|endoftext|>b", allowed_special="all") == [*bpe.encode("a"), eot, *bpe.encode("b")]
    assert eot not in bpe.encode("a<|endoftext|>b")  # by default a special token's text is only text
    with pytest.raises(ValueError, match="Unknown special"):
        bpe.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(TypeError):
        bpe.encode(b"bytes")
    with pytest.raises(ValueError, match="outside"):
        bpe.decode([bpe.vocab_size])
    assert bpe.decode([0xC3]) == "\ufffd"  # half of a two-byte character ("é" is C3 A9) is shown, not dropped
    assert bpe.decode(bpe.encode("a\ud800b")) == "a\ufffdb"  # a lone surrogate is marked, not dropped


def test_incremental_training_equals_naive_and_is_deterministic(sample_text):
    text = sample_text[:30_000]
    fast = BPETokenizer.train(text, 256 + 60)
    assert fast.merges == naive_train(text, 60)
    assert BPETokenizer.train(text, 256 + 60).merges == fast.merges
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(text, 100)


def test_save_load_round_trip(bpe, tmp_path):
    path = bpe.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges and loaded.special_tokens == bpe.special_tokens
    assert loaded.encode(HOSTILE[2]) == bpe.encode(HOSTILE[2])
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match="not a readable"):
        BPETokenizer.load(path)


def test_char_tokenizer_unk():
    tok = CharTokenizer.from_text("abc cab")
    assert tok.vocab_size == 5 and tok.unk_id == 0
    assert tok.encode("cab ") == [4, 2, 3, 1]  # <unk>, " ", "a", "b", "c"
    assert tok.encode("a🤖z") == [2, tok.unk_id, tok.unk_id]
    assert tok.decode(tok.encode("a🤖")) == "a<unk>"
    assert tok.decode(tok.encode("")) == ""
    with pytest.raises(ValueError):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([99])


@pytest.fixture(scope="module")
def every_tokenizer(bpe):
    course = CourseTokenizer(train_library_bpe(["abc cab"], 300, special_tokens=SPECIAL_TOKENS))
    return [CharTokenizer.from_text("abc cab"), bpe, course]


def test_decode_takes_tensors_arrays_and_one_row(every_tokenizer):
    for tok in every_tokenizer:
        ids = tok.encode("cab a")
        text = tok.decode(ids)
        assert text == "cab a"
        assert tok.decode(torch.tensor(ids)) == text
        assert tok.decode(torch.tensor([ids])) == text  # (1, T), what GPT.generate returns for one prompt
        assert tok.decode(np.array(ids, dtype=np.int32)) == text
        assert tok.decode(np.array([ids])) == text
        assert tok.decode([np.int64(i) for i in ids]) == text
        assert tok.decode(list(torch.tensor(ids))) == text  # 0-d tensors
        with pytest.raises(ValueError, match=r"batch of 2 rows; decode each row: \[tok.decode\(row\) for row in out\]"):
            tok.decode(torch.tensor([ids, ids]))
        with pytest.raises(ValueError, match="batch of 2 rows"):
            tok.decode(np.array([ids, ids]))
        with pytest.raises(TypeError, match=rf"Token ids must be integers, got {ids[0]}.0 \(float\) at position 0"):
            tok.decode(torch.tensor(ids, dtype=torch.float32))
        with pytest.raises(TypeError, match="must be integers"):
            tok.decode([1, 2.5])
        with pytest.raises(TypeError, match="must be integers"):
            tok.decode(torch.tensor([True]))
        with pytest.raises(TypeError, match=r"single Tensor; for one id write decode\(\[i\]\)"):
            tok.decode(torch.tensor(ids[0]))


def test_our_bpe_with_gpt2_ranks_matches_tiktoken(gpt2_pair):
    ours, enc = gpt2_pair
    assert ours.vocab_size == enc.n_vocab == 50257
    texts = HOSTILE + [en + " " + fr for en, fr in data.translation_pairs("val")[:100]]
    for text in texts:
        assert ours.encode(text) == enc.encode_ordinary(text), text
        assert ours.decode(ours.encode(text)) == text
    text = "Hello<|endoftext|>world"
    assert ours.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert GPT2_EOT_ID in ours.encode(text, allowed_special="all")


def test_library_bpe_learns_our_vocabulary(sample_text):
    ours = BPETokenizer.train(sample_text, 300)
    lib = train_library_bpe(sample_text.splitlines(), 300)
    lib_tokens = {byte_level_token_bytes(t) for t in lib.get_vocab()}
    assert lib.get_vocab_size() == 300
    assert {ours.vocab[i] for i in range(ours.vocab_size)} == lib_tokens
    text = HOSTILE[1]
    assert lib.decode(lib.encode(text).ids) == text
    with pytest.raises(ValueError, match="not a byte-level token"):
        byte_level_token_bytes("two words")  # a plain space is never in a byte-level token


def test_tokens_per_char():
    assert tokens_per_char(list, ["abc", "de"]) == 1.0
    assert tokens_per_char(str.split, ["a b", "c d"]) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        tokens_per_char(list, [""])


@pytest.fixture
def tmp_cache(monkeypatch, tmp_path):
    data.verses("en"), data.verses("fr")  # load the corpus from the real cache before pointing the cache elsewhere
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    return tmp_path


def test_course_tokenizer_specials_round_trip_and_hf(tmp_cache):
    tok = course_tokenizer(300)
    ids = (tok.eot_id, tok.pad_id, tok.sep_id, tok.mask_id)
    assert len(set(ids)) == 4 and tok.vocab_size == 300
    verse = data.translation_pairs("val")[0][1]
    assert tok.decode(tok.encode(verse)) == verse
    assert tok.encode_batch([verse, "Dieu"]) == [tok.encode(verse), tok.encode("Dieu")]
    assert tok.decode([tok.eot_id, *tok.encode("Dieu")]) == "Dieu"
    assert tok.decode([tok.eot_id], skip_special=False) == SPECIAL_TOKENS[0]
    hf = tok.to_hf()
    assert (hf.eos_token_id, hf.pad_token_id, hf.sep_token_id, hf.mask_token_id) == ids
    assert hf(verse)["input_ids"] == tok.encode(verse)
    loaded = CourseTokenizer.load(tok.save(tmp_cache / "copy.json"))
    assert loaded.encode(verse) == tok.encode(verse)


def test_course_tokenizer_rebuilds_a_corrupt_cache(tmp_cache):
    first = course_tokenizer(300)
    (path,) = tmp_cache.rglob("course-bpe-300.json")
    path.write_text('{"broken": ')
    with pytest.warns(UserWarning, match="Rebuilding"):
        rebuilt = course_tokenizer(300)
    assert rebuilt.encode(HOSTILE[3]) == first.encode(HOSTILE[3])
    CourseTokenizer.load(path)  # the rebuilt file is whole again
    path.write_text(train_library_bpe(["abc"], 300, special_tokens=SPECIAL_TOKENS).to_str())  # a smaller tokenizer...
    with pytest.warns(UserWarning, match="does not match"):
        assert course_tokenizer(300).vocab_size == 300  # ...is not trusted either
