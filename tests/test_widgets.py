"""helpers.widgets: the chat widget of chapter 09 sends what it should, shows what it should (escaped, token by token,
with the retrieved passages) and keeps its history straight, on a tiny random model with SmolLM2's tokenizer."""

import pytest

from helpers.widgets import ChatWidget

PASSAGES = ["Refunds take 5 to 10 working days.", "Returns are free within 30 days."]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"  # stream stops at the end of the turn
    return tok


@pytest.fixture(scope="module")
def model(tiny_llama, one_thread):
    return tiny_llama()


def _chat(model, tokenizer, **kwargs):
    chat = ChatWidget(model, tokenizer, **kwargs)
    chat.max_new_tokens.value = 16  # the slider's least: a random model never stops on its own
    return chat


def test_a_blank_message_is_ignored(model, tokenizer):
    chat = _chat(model, tokenizer)
    for text in ("", "   \n\t"):
        assert chat.send(text) == ""
    assert chat.history == [] and chat.conversation.value == ""


def test_a_message_gives_a_user_and_an_assistant_turn_shown_escaped(model, tokenizer):
    chat = _chat(model, tokenizer)
    chat.input.value = "<b>hi</b>"
    answer = chat.send("  <b>hi</b>  ")
    assert [t["role"] for t in chat.history] == ["user", "assistant"]
    assert chat.history[0]["content"] == "<b>hi</b>" and chat.history[1]["content"] == answer
    assert "&lt;b&gt;hi&lt;/b&gt;" in chat.conversation.value and "<b>hi</b>" not in chat.conversation.value
    assert chat.input.value == "" and not chat.send_button.disabled
    assert chat.messages()[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert chat.messages()[1:] == chat.history


def test_the_answer_is_shown_as_it_is_generated(model, tokenizer):
    chat = _chat(model, tokenizer)
    values, disabled = [], []
    chat.conversation.observe(lambda change: (values.append(change["new"]), disabled.append(chat.send_button.disabled)), "value")
    answer = chat.send("Hello there")
    assert answer
    growing = [v for v in values if "Hello there" in v]
    assert len(growing) > 2, "the reply should appear piece by piece"
    assert any(disabled) and not chat.send_button.disabled  # Send is off while the model writes


def test_the_button_and_the_enter_key_send_the_input(model, tokenizer):
    chat = _chat(model, tokenizer)
    chat.input.value = "first"
    chat.send_button.click()
    chat.input.value = "second"
    chat.input._handle_custom_msg({"event": "submit"}, [])  # what the browser sends on Enter
    assert [t["content"] for t in chat.history if t["role"] == "user"] == ["first", "second"]
    assert chat.input.value == ""


def test_retrieval_sends_the_passages_and_shows_the_users_words(model, tokenizer):
    asked = []
    chat = _chat(model, tokenizer, retrieve=lambda q: asked.append(q) or PASSAGES)
    assert chat.use_retrieval.value and chat.use_retrieval in chat.box.children[1].children
    chat.send("How long does a refund take?")
    assert asked == ["How long does a refund take?"]
    assert chat.history[0]["content"] == "How long does a refund take?"
    sent = chat.messages()[1]["content"]
    assert sent == "Policy:\n- " + "\n- ".join(PASSAGES) + "\n\nQuestion: How long does a refund take?"
    assert all(p in chat.conversation.value for p in PASSAGES)
    chat.use_retrieval.value = False
    chat.send("Thanks")
    assert len(asked) == 1 and chat.messages()[3]["content"] == "Thanks"
    assert chat.messages()[1]["content"] == sent  # earlier turns keep the context they were sent with


def test_no_retrieval_no_checkbox(model, tokenizer):
    assert _chat(model, tokenizer).use_retrieval is None


def test_a_chat_too_long_for_the_context_shows_why_and_changes_nothing(tokenizer, tiny_llama, one_thread):
    chat = _chat(tiny_llama(64), tokenizer)
    chat.send("Hi")
    before = chat.history
    assert chat.send("word " * 100) == ""
    assert chat.history == before
    assert "context" in chat.conversation.value and "color:#d32f2f" in chat.conversation.value
    assert not chat.send_button.disabled


def test_clear_empties_history_and_display(model, tokenizer):
    chat = _chat(model, tokenizer)
    chat.send("Hello")
    chat.clear_button.click()
    assert chat.history == [] and chat.conversation.value == "" and chat.messages()[1:] == []


def test_greedy_answers_are_the_same_in_two_widgets(model, tokenizer):
    answers = []
    for _ in range(2):
        chat = _chat(model, tokenizer)
        chat.temperature.value = 0.0
        answers.append(chat.send("What is a token?"))
    assert answers[0] and answers[0] == answers[1]


def test_the_widget_displays_as_its_box(model, tokenizer):
    chat = _chat(model, tokenizer)
    bundle = chat._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == chat.box.model_id
