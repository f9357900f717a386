"""helpers.recipes.pretrain: the token streams, and a pretrained checkpoint that is trained when absent, loaded when it fits,
retrained when stale, corrupt or non-finite; generation with and without the KV cache agrees on the trained model."""

import shutil
from dataclasses import replace

import pytest
import torch

from helpers.checkpoint import current_version, read_config, save_model
from helpers.data import corpus_text
from helpers.env import artifact_dir
from helpers.recipes import pretrain
from helpers.tokenizers import course_tokenizer
from helpers.train import TrainConfig

TINY = TrainConfig(max_steps=12, lr=3e-3, min_lr=1e-4, warmup_steps=2, eval_every=6)  # a quick stand-in recipe


@pytest.fixture(scope="module")
def course_cache(tmp_path_factory):
    """A course cache of this module's own (its tokenizer is trained once, for all the tests)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_CACHE", str(tmp_path_factory.mktemp("course")))
        yield


@pytest.fixture
def cache(course_cache, monkeypatch):
    """No pretrained checkpoint yet, and a 12-step recipe; returns the folder the checkpoint goes to."""
    monkeypatch.setattr(pretrain, "train_config", lambda: TINY)
    folder = artifact_dir("pretrained")
    shutil.rmtree(folder)
    return artifact_dir("pretrained")


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_token_streams_join_verses_with_end_of_text(cache):
    tok = course_tokenizer()
    train_ids, val_ids = pretrain.token_streams(tok)
    assert train_ids.ndim == val_ids.ndim == 1 and train_ids.dtype == val_ids.dtype == torch.long
    val_verses = corpus_text("val").splitlines()
    assert int((val_ids == tok.eot_id).sum()) == len(val_verses) and val_ids[-1] == tok.eot_id
    first_end = int((val_ids == tok.eot_id).nonzero()[0])
    assert tok.decode(val_ids[:first_end].tolist()) == val_verses[0]
    assert int((train_ids == tok.eot_id).sum()) == len(corpus_text("train").splitlines()[::8])  # smoke: every 8th


def test_load_pretrained_trains_when_absent_then_loads_the_same_weights(cache, capsys):
    assert not (cache / "checkpoint.json").exists()
    model, tok = pretrain.load_pretrained("cpu")
    assert "none found" in capsys.readouterr().out
    saved = read_config(cache)
    assert saved["vocab_size"] == tok.vocab_size and saved["steps"] == TINY.max_steps
    assert saved["val_loss"] < 6.0  # below ln(512) = 6.24, the loss of knowing nothing

    again, _ = pretrain.load_pretrained("cpu")
    assert capsys.readouterr().out == ""  # loaded, not trained
    assert _same_weights(model, again) and not again.training
    assert again.lm_head.weight is again.transformer.wte.weight  # the tie survives the round trip


def only_line(out: str) -> str:
    assert out.count("\n") == 1, out
    return out


def test_a_stale_or_corrupt_checkpoint_is_retrained(cache, capsys, monkeypatch):
    first, _ = pretrain.load_pretrained("cpu")
    monkeypatch.setattr(pretrain, "train_config", lambda: replace(TINY, lr=1e-3))  # the recipe changed
    second, _ = pretrain.load_pretrained("cpu")
    assert "another recipe" in capsys.readouterr().out
    assert not _same_weights(first, second)

    weights = current_version(cache) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated file
    third, _ = pretrain.load_pretrained("cpu")
    line = only_line(capsys.readouterr().out)
    assert "unusable (model.safetensors in" in line and "fails its SHA-256 check" in line and "training it now" in line
    assert _same_weights(second, third)  # the same recipe retrained gives the same weights
    version = current_version(cache)
    assert sorted(p.name for p in cache.iterdir()) == ["checkpoint.json", version.name]  # no half-written folder left
    assert sorted(p.name for p in version.iterdir()) == ["config.json", "model.safetensors"]


def test_a_checkpoint_with_nan_weights_is_retrained(cache, capsys):
    model, tok = pretrain.load_pretrained("cpu")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.transformer.wte.weight.fill_(float("nan"))  # a diverged model, saved with valid checksums
    save_model(model, cache, config=read_config(cache))
    capsys.readouterr()
    again, _ = pretrain.load_pretrained("cpu")
    line = only_line(capsys.readouterr().out)
    assert "unusable (model.safetensors in" in line and "non-finite values (NaN or inf) in transformer.wte.weight" in line
    assert all(torch.equal(good[k], v) for k, v in again.state_dict().items())  # retrained, not loaded
    assert pretrain.complete(again, tok, "In the beginning", max_new_tokens=10)


def test_a_partly_trained_checkpoint_is_stale(cache, capsys):
    pretrain.pretrain(steps=TINY.max_steps - 2, device="cpu")
    pretrain.load_pretrained("cpu")
    assert "another recipe" in capsys.readouterr().out


def test_the_fingerprint_covers_tokenizer_model_recipe_and_steps(cache):
    tok, other = course_tokenizer(), course_tokenizer(vocab_size=300)
    mcfg = pretrain.model_config(tok.vocab_size)
    base = pretrain.fingerprint(tok, mcfg, TINY, 12)
    assert base == pretrain.fingerprint(course_tokenizer(), pretrain.model_config(tok.vocab_size), replace(TINY), 12)
    changed = [
        pretrain.fingerprint(other, mcfg, TINY, 12),
        pretrain.fingerprint(tok, replace(mcfg, n_embd=32), TINY, 12),
        pretrain.fingerprint(tok, mcfg, replace(TINY, seed=1), 12),
        pretrain.fingerprint(tok, mcfg, TINY, 11),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_kv_cache_generation_equals_recomputing_on_the_pretrained_model(cache):
    model, tok = pretrain.load_pretrained("cpu")
    prompt = torch.tensor([[tok.eot_id, *tok.encode("In the beginning")]])
    n_new = 30
    greedy = [model.generate(prompt, n_new, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1]) and greedy[0].shape == (1, prompt.size(1) + n_new)
    sampled = [
        model.generate(prompt, n_new, top_k=20, use_cache=c, generator=torch.Generator().manual_seed(1)) for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1]) and not torch.equal(sampled[0], greedy[0])
    text = pretrain.complete(model, tok, "In the beginning", max_new_tokens=10)
    assert text == pretrain.complete(model, tok, "In the beginning", max_new_tokens=10, use_cache=False)
    assert isinstance(text, str) and text


def test_bad_arguments_fail_clearly(cache):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        pretrain.build_trainer(steps=0)
    with pytest.raises(TypeError, match="Expected a CourseTokenizer"):
        pretrain.encode_verses("not a tokenizer", "In the beginning")
