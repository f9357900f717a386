"""helpers.llm on a tiny random Llama with SmolLM2's real tokenizer: the label scorer equals a hand computation,
generation equals transformers' greedy generate, the assistant-only mask is right and its loss equals trl's
SFTTrainer; the cache is rebuilt when it is corrupt."""

import shutil

import pytest
import torch
import transformers

from helpers import llm
from helpers.data import _sha256_file, smollm2_gguf
from helpers.env import artifact_dir
from helpers.hf import CourseLM
from helpers.retrieval import recall_at_k

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Where is my order NW-12345?"},
    {"role": "assistant", "content": "Order NW-12345 left our warehouse today."},
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def model(tokenizer, tiny_llama):
    return tiny_llama()


def test_chat_ids_render_the_template(tokenizer):
    ids = llm.chat_ids(tokenizer, CHAT[:2])
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="role"):
        llm.chat_ids(tokenizer, [{"text": "hi"}])


@pytest.mark.parametrize("prefix_len", [0, 7])
def test_label_logprobs_equal_a_full_forward(tokenizer, model, prefix_len):
    ids = llm.chat_ids(tokenizer, CHAT[:2])
    prefix, rest = ids[:prefix_len], ids[prefix_len:]
    prompts = [rest, rest[:-4], rest[:-9]]  # different lengths: padding must not change a score
    labels = llm.single_token_ids(tokenizer, ["positive", "negative", "Order"])
    ours = llm.label_logprobs(model, prompts, labels, prefix=prefix, batch_size=2)
    assert ours.shape == (3, 3)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            logits = model(torch.tensor([prefix + prompt])).logits[0, -1]
            expected = torch.log_softmax(logits.float(), dim=-1)[labels]
            torch.testing.assert_close(ours[row], expected, atol=1e-5, rtol=1e-5)


def test_single_token_ids_refuse_words_of_several_tokens(tokenizer):
    with pytest.raises(ValueError, match="one token"):
        llm.single_token_ids(tokenizer, ["positive", "antidisestablishmentarianism"])
    with pytest.raises(ValueError, match="share"):
        llm.single_token_ids(tokenizer, ["positive", "positive"])


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_generate_equals_transformers_greedy(tokenizer, model, prefix_len):
    ids = llm.chat_ids(tokenizer, CHAT[:2])
    prefix, rest = ids[:prefix_len], ids[prefix_len:]
    prompts = [rest, rest[:-6]]  # left padding between prefix and prompt for the shorter one
    ours = llm.generate(model, prompts, max_new_tokens=8, stop_ids=[tokenizer.eos_token_id], prefix=prefix)
    for prompt, new in zip(prompts, ours):
        full = torch.tensor([prefix + prompt])
        theirs = model.generate(full, attention_mask=torch.ones_like(full), max_new_tokens=8, do_sample=False, eos_token_id=[])
        expected = theirs[0, full.size(1) :].tolist()
        stop = expected.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in expected else len(expected)
        assert new == expected[:stop]


def test_generate_stops_at_a_stop_token(tokenizer, model):
    prompt = llm.chat_ids(tokenizer, CHAT[:2])
    free = llm.generate(model, [prompt], max_new_tokens=6, stop_ids=[tokenizer.eos_token_id])[0]
    assert len(free) == 6 and tokenizer.eos_token_id not in free
    cut = llm.generate(model, [prompt], max_new_tokens=6, stop_ids=[free[2]])[0]
    assert cut == free[: free.index(free[2])]


def test_sampling_is_seeded(tokenizer, model):
    prompt = llm.chat_ids(tokenizer, CHAT[:2])
    draw = lambda seed: llm.generate(model, [prompt], 10, [tokenizer.eos_token_id], temperature=1.0, seed=seed)
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_stream_yields_the_greedy_answer_piece_by_piece(tokenizer, model):
    prompt = llm.chat_ids(tokenizer, CHAT[:2])
    pieces = list(llm.stream(model, tokenizer, prompt, max_new_tokens=10, temperature=0))
    greedy = llm.generate(model, [prompt], 10, [tokenizer.eos_token_id])[0]
    assert len(pieces) > 1
    assert "".join(pieces) == tokenizer.decode(greedy, skip_special_tokens=True)


def test_a_prompt_longer_than_the_context_is_refused(tokenizer, tiny_llama):
    short = tiny_llama(16)
    prompt = llm.chat_ids(tokenizer, CHAT[:2])
    for call in (
        lambda: llm.generate(short, [prompt], 4, [tokenizer.eos_token_id]),
        lambda: llm.label_logprobs(short, [prompt], [1, 2]),
        lambda: next(llm.stream(short, tokenizer, prompt)),
    ):
        with pytest.raises(ValueError, match="context of 16"):
            call()


def test_the_assistant_only_mask(tokenizer):
    example = llm.sft_example(tokenizer, CHAT)
    assert len(example.ids) == len(example.labels)
    n_prompt = len(llm.chat_ids(tokenizer, CHAT[:2]))
    assert example.labels[:n_prompt] == [llm.IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.ids[n_prompt:]
    assert tokenizer.decode(example.labels[n_prompt:]) == CHAT[2]["content"] + "<|im_end|>\n"
    with pytest.raises(ValueError, match="assistant"):
        llm.sft_example(tokenizer, CHAT[:2])

    other = llm.sft_example(tokenizer, [*CHAT[:2], {"role": "assistant", "content": "Yes."}])
    batch = llm.collate_sft([example, other], tokenizer.pad_token_id)
    T = len(example.ids) - 1
    assert batch["idx"].shape == batch["targets"].shape == batch["attention_mask"].shape == (2, T)
    assert batch["idx"][0].tolist() == example.ids[:-1] and batch["targets"][0].tolist() == example.labels[1:]
    assert (batch["targets"][1, len(other.ids) - 1 :] == llm.IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum() == len(other.ids) - 1


def test_the_sft_loss_equals_trl(tokenizer, tiny_llama, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    model = tiny_llama()
    chats = [
        CHAT,
        [{"role": "user", "content": "Can I return a lamp?"}, {"role": "assistant", "content": "Yes, within 30 days."}],
        [*CHAT[:2], {"role": "assistant", "content": "It arrives tomorrow; we are sorry for the wait."}],
    ]
    data = datasets.Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in chats])
    args = trl.SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=len(chats), report_to=[], use_cpu=True, bf16=False, fp16=False
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()  # no dropout in this config: train mode only selects the library's own loss in CourseLM
    with torch.no_grad():
        theirs = trainer.compute_loss(model, batch)
        ours = CourseLM(model, pad_id=tokenizer.pad_token_id)(
            **llm.collate_sft([llm.sft_example(tokenizer, c) for c in chats], tokenizer.pad_token_id)
        )[1]
    # The mean over the batch's answer tokens does not depend on the order trl's loader shuffles the chats into.
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_corrupt_cache_is_rebuilt(tokenizer, tiny_llama, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(llm, "load_smollm2_tokenizer", lambda: tokenizer)
    conversions = []

    def convert(*args, **kwargs):  # stands in for the 30-s dequantisation
        conversions.append(1)
        return tiny_llama()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", convert)
    first, _ = llm.load_smollm2("cpu")
    second, _ = llm.load_smollm2("cpu")
    assert (first.load_report.source, second.load_report.source, len(conversions)) == ("gguf", "cache", 1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))

    weights = next((artifact_dir("smollm2") / "weights").glob("v-*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    third, _ = llm.load_smollm2("cpu")
    assert third.load_report.source == "gguf" and "not usable" in third.load_report.note and len(conversions) == 2
    assert "rebuilt" in capsys.readouterr().out


def test_a_tampered_tokenizer_cache_is_not_used(tokenizer, tmp_path):
    llm.load_smollm2_tokenizer()
    gguf = smollm2_gguf()
    sha = _sha256_file(gguf)
    copy = tmp_path / "tokenizer"
    shutil.copytree(artifact_dir("smollm2") / "tokenizer", copy)
    assert llm._cached_tokenizer(copy, gguf, sha) is not None
    assert llm._cached_tokenizer(copy, gguf, "another gguf") is None
    (copy / "tokenizer.json").write_text("{}")
    assert llm._cached_tokenizer(copy, gguf, sha) is None


def test_recall_at_k():
    ranked = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
    assert recall_at_k(ranked, ["a", "a", "a"], 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, ["a", "a", "a"], 2) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, ["a", "a", "z"], 5) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recall_at_k(ranked, ["a"], 1)
