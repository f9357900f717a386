"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster on one thread than on cores other jobs are busy with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's real tokenizer (cached after the first conversion, which takes about 10 s)."""
    from helpers.llm import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(smollm2_tokenizer):
    """A function ``positions -> model``: a tiny random Llama (seeded) over SmolLM2's vocabulary, in eval mode, that
    stands in for the 135 M-parameter model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(positions: int = 256):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(smollm2_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=positions,
            tie_word_embeddings=True,
            eos_token_id=smollm2_tokenizer.eos_token_id,
            pad_token_id=smollm2_tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(config).eval()

    return make
