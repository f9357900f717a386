"""helpers.classify: the GPT classification head equals transformers' GPT2ForSequenceClassification, on either
padding side; the data path, training and scoring loops do what they say."""

import pytest
import torch
import transformers

from helpers.batches import pad
from helpers.classify import (
    GPTClassifier,
    LabelledText,
    MiniLMClassifier,
    collate_labelled,
    encode_texts,
    last_token_index,
    predict_proba,
    to_hf_classifier,
    train_classifier,
)
from helpers.model import GPT, GPTConfig
from helpers.sentence_embeddings import mean_pool
from helpers.train import TrainConfig

CONFIG = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
PAD = 1  # a token id no test sequence contains, as the course tokenizer's pad_id


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**CONFIG))
    with torch.no_grad():  # non-zero biases and LayerNorm affine, so that a wrongly mapped one shows
        for name, p in gpt.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return GPTClassifier(gpt, num_labels=3).eval()


def sequences():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(2, CONFIG["vocab_size"], (n,), generator=g).tolist() for n in (5, 17, 11, 1)]


def test_last_token_index_on_either_side():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(right.flip(1)).tolist() == [4, 4, 4]


@pytest.mark.parametrize("side", ["right", "left"])
def test_head_equals_gpt2_for_sequence_classification(classifier, side):
    hf = to_hf_classifier(classifier, pad_token_id=PAD).eval()
    assert isinstance(hf, transformers.GPT2ForSequenceClassification)
    ids, mask = pad(sequences(), PAD, side=side)
    ours, _ = classifier(ids, attention_mask=mask)
    # transformers numbers positions 0, 1, ... from the first column; left-padded rows need them counted over tokens.
    positions = (mask.cumsum(1) - 1).clamp(min=0) if side == "left" else None
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert ours.shape == theirs.shape == (4, 3)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_padding_on_either_side_changes_nothing(classifier):
    seqs = sequences()
    alone = torch.cat([classifier(torch.tensor([s]))[0] for s in seqs])
    for side in ("right", "left"):
        ids, mask = pad(seqs, PAD, side=side)
        assert torch.allclose(classifier(ids, attention_mask=mask)[0], alone, atol=1e-5)


def test_loss_is_cross_entropy_and_labels_are_checked(classifier):
    ids, mask = pad(sequences(), PAD)
    labels = torch.tensor([0, 2, 1, 0])
    logits, loss = classifier(ids, attention_mask=mask, labels=labels)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        classifier(ids, attention_mask=mask, labels=torch.tensor([0, 3, 1, 0]))
    with pytest.raises(ValueError, match="num_labels must be an integer >= 2"):
        GPTClassifier(GPT(GPTConfig(**CONFIG)), num_labels=1)


class _Tok:
    pad_id = PAD

    def encode(self, text):
        return [2 + (ord(c) % 90) for c in text]


def test_encode_texts_cuts_and_ends_with_end_id():
    out = encode_texts(_Tok(), ["abcdefgh", "ab"], labels=[1, 0], max_len=5, end_id=0)
    assert [len(e.ids) for e in out] == [5, 3]
    assert all(e.ids[-1] == 0 for e in out) and out[0].ids[:4] == tuple(_Tok().encode("abcd"))
    assert [e.label for e in out] == [1, 0]
    with pytest.raises(ValueError, match="one label per text"):
        encode_texts(_Tok(), ["a", "b"], labels=[1])
    with pytest.raises(TypeError, match="list of strings"):
        encode_texts(_Tok(), "abc")


def test_predict_proba_keeps_order_and_equals_one_by_one(classifier):
    exs = [LabelledText(tuple(s), None) for s in sequences()]
    probs = predict_proba(classifier, exs, lambda b: collate_labelled(b, PAD), batch_size=3)
    one_by_one = torch.cat([torch.softmax(classifier(torch.tensor([e.ids]))[0], -1) for e in exs])
    assert probs.shape == (4, 3)
    assert torch.allclose(torch.from_numpy(probs).float(), one_by_one, atol=1e-5)


def test_training_learns_a_learnable_rule():
    # label 1 if token 5 occurs in the text: a rule a small GPT learns in a few dozen steps.
    g = torch.Generator().manual_seed(0)
    exs = []
    for i in range(192):
        ids = torch.randint(6, CONFIG["vocab_size"], (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
        if i % 2:
            ids[int(torch.randint(0, len(ids), (1,), generator=g))] = 5
        exs.append(LabelledText(tuple(ids) + (0,), i % 2))
    torch.manual_seed(0)
    model = GPTClassifier(GPT(GPTConfig(**CONFIG)))
    cfg = TrainConfig(max_steps=80, lr=3e-3, warmup_steps=5, eval_every=40, mixed_precision=False)
    trainer, seconds = train_classifier(model, exs[:160], exs[160:], cfg, lambda b: collate_labelled(b, PAD), progress=False)
    val = [r["val_loss"] for r in trainer.history if r["val_loss"] is not None]
    assert seconds > 0 and val[-1] < 0.5 * 0.693  # log 2: the loss of a model that cannot tell the classes apart
    accuracy = (predict_proba(model, exs[160:], lambda b: collate_labelled(b, PAD))[:, 1] > 0.5) == [e.label for e in exs[160:]]
    assert accuracy.mean() >= 0.9


def test_minilm_classifier_reads_a_bert_and_starts_undecided():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = MiniLMClassifier(transformers.BertModel(config)).eval()
    ids, mask = pad([[2, 3, 4], [5, 6]], 0)
    logits, loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert logits.shape == (2, 2) and torch.equal(logits, torch.zeros(2, 2))
    assert torch.isclose(loss, torch.log(torch.tensor(2.0)))
    # Started from a logistic regression, class 1's probability is the regression's sigmoid.
    coef, intercept = torch.randn(1, 16), torch.tensor([0.3])
    model.start_from_probe(coef.numpy(), intercept.numpy())
    hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    embedding = torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)
    expected = torch.sigmoid(embedding @ coef[0] + intercept)
    assert torch.allclose(torch.softmax(model(input_ids=ids, attention_mask=mask)[0], -1)[:, 1], expected, atol=1e-6)
    batch = collate_labelled([LabelledText((2, 3), 1)], 0, names=("input_ids", "attention_mask"))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
