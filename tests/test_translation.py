"""helpers.recipes.translation: prompt format, loss masking, padding, batches and scoring for the decoder-only translator."""

import math

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from helpers.model import GPT, GPTConfig
from helpers.recipes.translation import (
    TranslationExample,
    collate,
    evaluate,
    format_example,
    length_buckets,
    prepare_pairs,
    translate,
)


class WordTokenizer:
    """A tiny stand-in for the course tokenizer: one id per word, ids 0-3 special as in the course tokenizer."""

    eot_id, pad_id, sep_id = 0, 1, 2
    words = ["<eot>", "<pad>", "<sep>", "<mask>", *"the light day night la lumière jour nuit and et was fut".split()]
    vocab_size = len(words)

    def encode(self, text):
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids if i > 3)


TOK = WordTokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def test_format_example_places_sep_target_and_eot():
    ids, start = format_example(TOK, "the light", "la lumière")
    assert ids == [4, 5, 2, 8, 9, 0]
    assert start == 3 and ids[start - 1] == TOK.sep_id
    prompt, start = format_example(TOK, "the light")
    assert prompt == [4, 5, 2] and start == len(prompt)
    with pytest.raises(TypeError, match="strings"):
        format_example(TOK, ["the"])


def test_prepare_pairs_counts_every_drop():
    pairs = [
        ("the light", "la lumière"),
        (" ", "la"),
        ("the", "la lumière et la nuit et la"),
        ("the day and the night", "le jour et la nuit".replace("le", "la")),
        ("the light", "la lumière"),
    ]
    data = prepare_pairs(pairs, TOK, max_len=8, max_ratio=2.5)
    assert data.counts == {"pairs": 5, "empty": 1, "misaligned": 1, "too_long": 1, "kept": 2}
    assert len(data.examples) == len(data.pairs) == 2
    assert data.examples[0] == TranslationExample([4, 5, 2, 8, 9, 0], 3)
    with pytest.raises(ValueError, match="max_len"):
        prepare_pairs(pairs, TOK, max_len=2)


def test_collate_shapes_shift_and_masking():
    a = TranslationExample(*format_example(TOK, "the light", "la lumière"))  # 6 ids
    b = TranslationExample(*format_example(TOK, "the day and the night", "la jour et la nuit"))  # 12 ids
    batch = collate([a, b], TOK.pad_id)
    assert set(batch) == {"idx", "targets", "attention_mask"}
    assert all(t.shape == (2, 11) for t in batch.values())
    assert batch["idx"][0].tolist() == [4, 5, 2, 8, 9] + [TOK.pad_id] * 6
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 6
    # Targets: -100 on the source (positions 0-1), then the target tokens and EOT, -100 on padding.
    assert batch["targets"][0].tolist() == [-100, -100, 8, 9, 0] + [-100] * 6
    assert batch["targets"][1].tolist() == [-100] * 5 + [8, 10, 13, 8, 11, 0]
    assert batch["attention_mask"][1].all()


def test_loss_is_cross_entropy_over_target_tokens_only(model):
    a = TranslationExample(*format_example(TOK, "the light", "la lumière"))
    b = TranslationExample(*format_example(TOK, "the day and the night", "la jour et la nuit"))
    batch = collate([a, b], TOK.pad_id)
    logits, loss = model(**batch)
    # By hand: -log p(next token) at each position whose next token is a target token or the final EOT.
    terms = []
    for row, ex in enumerate([a, b]):
        logp = F.log_softmax(logits[row], dim=-1)
        for t in range(ex.target_start - 1, len(ex.ids) - 1):
            terms.append(-logp[t, ex.ids[t + 1]])
    assert len(terms) == 3 + 6
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-6)
    # The mask matters: a loss over every next token (source and padding included) is another number.
    everything = F.cross_entropy(logits.reshape(-1, TOK.vocab_size), batch["idx"].roll(-1, 1).reshape(-1))
    assert not math.isclose(everything.item(), loss.item(), abs_tol=1e-4)


def test_padded_batch_gives_the_logits_of_single_items(model):
    exs = [
        TranslationExample(*format_example(TOK, s, t))
        for s, t in [("the light", "la lumière"), ("the day and the night", "la jour et la nuit"), ("night", "nuit")]
    ]
    batch = collate(exs, TOK.pad_id)
    logits, _ = model(batch["idx"], attention_mask=batch["attention_mask"])
    for row, ex in enumerate(exs):
        single = collate([ex], TOK.pad_id)
        alone, _ = model(single["idx"])
        n = len(ex.ids) - 1
        torch.testing.assert_close(logits[row, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_translate_greedy_and_beam_agree_at_width_one(model):
    sources = ["the light", "the day and the night", "night"]
    greedy = translate(model, TOK, sources, method="greedy", max_new_tokens=6, batch_size=2)
    beam1 = translate(model, TOK, sources, method="beam", beam_width=1, max_new_tokens=6, batch_size=2)
    assert greedy == beam1 and len(greedy) == 3
    with pytest.raises(ValueError, match="method"):
        translate(model, TOK, sources, method="sample")


def test_evaluate_scores_with_sacrebleu_and_signatures(model):
    pairs = [("the light", "la lumière"), ("the day and the night", "la jour et la nuit")]
    result = evaluate(model, TOK, pairs, max_new_tokens=6)
    assert set(result) == {"bleu", "chrf", "hyps"} and len(result["hyps"]) == 2
    refs = [t for _, t in pairs]
    assert result["bleu"].score == sacrebleu.corpus_bleu(result["hyps"], [refs]).score
    assert result["chrf"].score == sacrebleu.corpus_chrf(result["hyps"], [refs]).score
    assert result["bleu"].signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_length_buckets_group_similar_lengths_and_drop_nothing_twice():
    exs = [TranslationExample(list(range(4, 4 + n)), 2) for n in [3, 9, 4, 8, 5, 7, 6, 3, 9, 4]]
    batches = length_buckets(exs, batch_size=2, seed=0, window=5)
    assert len(batches) == 5 and all(len(b) == 2 for b in batches)
    assert sorted(id(e) for b in batches for e in b) == sorted(id(e) for e in exs)
    lengths = [len(e.ids) for b in batches for e in b]
    assert lengths == sorted(lengths)  # one window holds everything here, so the batches come out sorted
    assert length_buckets(exs, 2, seed=1, window=1) != length_buckets(exs, 2, seed=0, window=1)  # the seed shuffles
    with pytest.raises(ValueError, match="batch_size"):
        length_buckets(exs, batch_size=11)
