"""helpers.recipes.mlm (BERT masking, masked batches, filling in blanks) and helpers.sentence_embeddings (MiniLM)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.model import GPT, GPTConfig
from helpers.recipes.mlm import Blank, MaskedWindows, fill_in_accuracy, fill_mask, mask_tokens, masked_eval_batches, word_blanks
from helpers.sentence_embeddings import MINILM_DIM, mean_pool, minilm_embed
from helpers.tokenizers import course_tokenizer

V, MASK, SPECIAL = 1000, 3, (0, 1, 2, 3)
TOKENS = torch.arange(4, 3004) % 97 + 4  # no special ids; a window is recognisable: each token is the last + 1 (mod 97)


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer()


def test_masking_follows_berts_proportions():
    ids = torch.randint(4, V, (200, 500), generator=torch.Generator().manual_seed(1))
    inputs, targets = mask_tokens(ids, MASK, V, generator=torch.Generator().manual_seed(0), special_ids=SPECIAL)
    selected = targets != -100
    n = int(selected.sum())
    assert abs(n / ids.numel() - 0.15) < 0.005
    as_mask = (inputs[selected] == MASK).float().mean().item()
    unchanged = (inputs[selected] == ids[selected]).float().mean().item()
    replaced = ((inputs[selected] != MASK) & (inputs[selected] != ids[selected])).float().mean().item()
    shares = (as_mask, unchanged, replaced)
    assert abs(as_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(replaced - 0.1) < 0.01, shares
    # Random replacements are spread over the vocabulary, not stuck on a few ids.
    assert inputs[selected & (inputs != MASK) & (inputs != ids)].unique().numel() > 500


def test_unselected_positions_are_left_alone_and_ignored():
    ids = torch.randint(4, V, (8, 64), generator=torch.Generator().manual_seed(2))
    inputs, targets = mask_tokens(ids, MASK, V, generator=torch.Generator().manual_seed(3), special_ids=SPECIAL)
    selected = targets != -100
    assert inputs.shape == targets.shape == ids.shape and inputs.dtype == targets.dtype == torch.long
    assert selected.any() and (~selected).any()
    assert torch.equal(targets[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])


def test_special_tokens_are_never_masked_nor_drawn():
    ids = torch.randint(4, V, (50, 100), generator=torch.Generator().manual_seed(4))
    ids[:, ::2] = torch.tensor([0, 1, 2])[torch.arange(50) % 3][:, None]  # every other token is eot, pad or sep
    inputs, targets = mask_tokens(ids, MASK, V, p=1.0, generator=torch.Generator().manual_seed(5), special_ids=(0, 1, 2))
    special = torch.isin(ids, torch.tensor([0, 1, 2]))
    assert (targets[special] == -100).all() and torch.equal(inputs[special], ids[special])
    assert (targets[~special] != -100).all()  # p=1 selects every ordinary token
    assert not torch.isin(inputs[~special], torch.tensor([0, 1, 2])).any()  # random replacements are ordinary tokens


def test_loss_covers_the_masked_positions_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=1, n_head=2, n_embd=16, causal=False))
    inputs, targets = MaskedWindows(TOKENS, 32, 4, MASK, V, seed=0, special_ids=SPECIAL)(0)
    logits, loss = model(inputs, targets)
    selected = targets != -100
    by_hand = -F.log_softmax(logits[selected], dim=-1)[torch.arange(int(selected.sum())), targets[selected]].mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)
    everywhere = F.cross_entropy(logits.flatten(0, 1), torch.where(selected, targets, inputs).flatten())
    assert not torch.allclose(loss, everywhere)


def test_masked_windows_depend_only_on_seed_and_step():
    a = MaskedWindows(TOKENS, 16, 4, MASK, V, seed=1, special_ids=SPECIAL)
    b = MaskedWindows(TOKENS, 16, 4, MASK, V, seed=1, special_ids=SPECIAL)
    for step in (5, 0, 5):
        assert all(torch.equal(u, v) for u, v in zip(a(step), b(step)))
    assert not torch.equal(a(0)[1], a(1)[1])
    assert not torch.equal(a(0)[1], MaskedWindows(TOKENS, 16, 4, MASK, V, seed=2, special_ids=SPECIAL)(0)[1])
    x, y = a(3)
    assert x.shape == y.shape == (4, 16)
    original = torch.where(y != -100, y, x)  # unmasking gives back a window of the stream
    assert ((original[:, 1:] - 4) == (original[:, :-1] - 4 + 1) % 97).all()


def test_masked_validation_set_is_fixed():
    a = masked_eval_batches(TOKENS, 16, 4, MASK, V, n_batches=3, special_ids=SPECIAL)
    b = masked_eval_batches(TOKENS, 16, 4, MASK, V, n_batches=3, special_ids=SPECIAL)
    assert len(a) == 3 and all(x.shape == (4, 16) for x, _ in a)
    assert all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))
    assert not torch.equal(a[0][1], a[1][1])


def test_bad_masking_input_says_what_to_do():
    ids = torch.randint(4, V, (2, 8))
    with pytest.raises(ValueError, match="mask_id"):
        mask_tokens(ids, V, V)
    with pytest.raises(ValueError, match="p "):
        mask_tokens(ids, MASK, V, p=0)
    with pytest.raises(TypeError, match="integer token ids"):
        mask_tokens(ids.float(), MASK, V)
    with pytest.raises(ValueError, match="lie in"):
        mask_tokens(ids, MASK, 100)


def _tiny(tok, causal):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16, causal=causal))


def test_fill_mask_reads_both_sides_only_in_an_encoder(tok):
    encoder, decoder = _tiny(tok, causal=False), _tiny(tok, causal=True)
    a, b = "God created the ___ and the earth.", "God created the ___ of the sea."
    enc_a, enc_b = fill_mask(encoder, tok, a, k=5), fill_mask(encoder, tok, b, k=5)
    assert len(enc_a) == 1 and len(enc_a[0]) == 5
    probs = [q for _, q in enc_a[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert enc_a != enc_b  # the encoder sees the text after the blank
    assert fill_mask(decoder, tok, a) == fill_mask(decoder, tok, b)  # the causal model does not
    # The causal model's guess is its next-token distribution after the left context.
    left = tok.encode("God created the")
    expected = decoder(torch.tensor([left]))[0][0, -1].softmax(-1).max().item()
    assert fill_mask(decoder, tok, a, k=1)[0][0][1] == pytest.approx(expected, rel=1e-5)
    assert len(fill_mask(encoder, tok, a, n_tokens=2)) == 2
    with pytest.raises(ValueError, match="n_tokens=1"):
        fill_mask(decoder, tok, a, n_tokens=2)
    with pytest.raises(ValueError, match="exactly one blank"):
        fill_mask(encoder, tok, "no blank here")


class _Peek(nn.Module):
    """A fake model whose logits at position t are one-hot on the token at t + shift (a cheat, to test the plumbing)."""

    def __init__(self, vocab_size, causal, shift):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=256, n_layer=1, n_head=1, n_embd=1, causal=causal)
        self.shift = shift
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None, attention_mask=None):
        return F.one_hot(idx.roll(-self.shift, dims=1), self.config.vocab_size).float(), None


def test_word_blanks_and_fill_in_accuracy(tok):
    texts = ["In the beginning God created the heavens and the earth.", "Au commencement, Dieu créa les cieux et la terre."]
    blanks = word_blanks(tok, texts, seed=0, prefix=[tok.eot_id])
    assert len(blanks) == 2 and all(isinstance(b, Blank) for b in blanks)
    for b in blanks:
        word = tok.decode([b.answer])
        assert b.ids[0] == tok.eot_id and b.pos >= 2 and word.startswith(" ") and word[1:].isalpha() and len(word) > 3
    assert blanks == word_blanks(tok, texts, seed=0, prefix=[tok.eot_id])
    lengths = sorted(len(b.ids) for b in blanks)
    assert len(word_blanks(tok, texts, prefix=[tok.eot_id], max_tokens=lengths[1])) == 2
    assert word_blanks(tok, texts, prefix=[tok.eot_id], max_tokens=lengths[0] - 1) == []  # both texts are too long
    # A causal "model" that reads the next token scores 1; an encoder that copies its input sees only the mask: 0.
    assert fill_in_accuracy(_Peek(tok.vocab_size, causal=True, shift=1), tok, blanks, k=3) == {"top1": 1.0, "top3": 1.0}
    assert fill_in_accuracy(_Peek(tok.vocab_size, causal=False, shift=0), tok, blanks, k=3)["top1"] == 0.0
    assert (
        fill_in_accuracy(_Peek(tok.vocab_size, causal=False, shift=0), tok, [Blank(b.ids, b.pos) for b in blanks], batch_size=1)[
            "top1"
        ]
        == 0.0
    )
    with pytest.raises(ValueError, match="No blanks"):
        fill_in_accuracy(_tiny(tok, causal=False), tok, [])


def test_minilm_embeddings_are_unit_vectors_that_group_meaning():
    texts = [
        "In the beginning God created the heavens and the earth.",
        "At the start of everything, God made the sky and the land.",
        "The stock market fell sharply on Monday.",
    ]
    emb = minilm_embed(texts, batch_size=2)
    assert emb.shape == (3, MINILM_DIM) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # a paraphrase is much closer than an unrelated sentence
    assert torch.allclose(minilm_embed(texts[2:]), emb[2:], atol=1e-5)  # padding in a batch changes nothing
    assert minilm_embed([]).shape == (0, MINILM_DIM)
    with pytest.raises(TypeError, match="list of strings"):
        minilm_embed("one text")


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from helpers.data import minilm_path

    texts = ["Blessed are the meek, for they shall inherit the earth.", "Heureux les débonnaires!"]
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(minilm_embed(texts, device="cpu"), reference.cpu(), atol=1e-5)


def test_mean_pool_skips_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="mask"):
        mean_pool(hidden, torch.ones(1, 2))
