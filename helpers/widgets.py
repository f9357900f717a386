"""A chat box for a ``transformers`` chat model, in the notebook (chapter 09, section 7).

:class:`ChatWidget` puts SmolLM2-135M-Instruct (or any causal LM with a chat template) behind an ipywidgets 8
form: a system prompt, the sampling settings, a message box, and the conversation, which fills in token by token as
:func:`helpers.llm.stream` yields the answer. With a ``retrieve`` function, each question is sent with the passages
it retrieves in the layout the model was tuned on, while the conversation shows the learner's own words. It uses only
the core widgets, so it works in JupyterLab and in Colab alike.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as widgets

from helpers.llm import chat_ids, check_fits, stream

# Translucent backgrounds read on light and dark notebook themes alike.
_USER_STYLE = "background:rgba(33,150,243,0.15);border-radius:8px;padding:6px 10px;margin:6px 0 6px 15%;"
_ASSISTANT_STYLE = "background:rgba(128,128,128,0.15);border-radius:8px;padding:6px 10px;margin:6px 15% 6px 0;"
_LABEL_STYLE = "font-size:0.8em;font-weight:bold;opacity:0.7;"
_TEXT_STYLE = "white-space:pre-wrap;"  # the model's line breaks and lists stay as it wrote them
_PASSAGES_STYLE = "font-size:0.8em;color:grey;margin-top:4px;white-space:pre-wrap;"
_ERROR_STYLE = "color:#d32f2f;padding:6px 10px;white-space:pre-wrap;"


def _with_context(question: str, passages: Sequence[str]) -> str:
    """The user turn as the model was tuned on it (:func:`helpers.support.messages`)."""
    if not passages:
        return question
    return "Policy:\n" + "\n".join(f"- {p}" for p in passages) + f"\n\nQuestion: {question}"


class ChatWidget:
    """A chat with ``model`` (a ``transformers`` causal LM) and its ``tokenizer`` (with a chat template), as a
    notebook widget: put it last in a cell to show it, or ``display(chat.box)``.

    ``retrieve`` (optional) maps a question to a list of passages (strings); with it, a "retrieval" checkbox (on by
    default) sends each question as ``"Policy:\\n- p1\\n- p2\\n\\nQuestion: <question>"`` and shows the passages in
    grey under it. :meth:`send` is what the Send button and the Enter key do; :meth:`clear` starts over. The
    sampling settings are read from the sliders at each message (temperature 0: greedy); turn ``k`` of the chat is
    drawn with ``seed + k``, so a chat replayed with the same settings gives the same answers.

    Taught in chapter 09, section 7.
    """

    def __init__(
        self,
        model,
        tokenizer,
        system_prompt: str = "You are a helpful assistant.",
        retrieve: Callable[[str], Sequence[str]] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
    ):
        if retrieve is not None and not callable(retrieve):
            raise TypeError(f"retrieve must be a function question -> list of passages, got {type(retrieve).__name__}.")
        self.model, self.tokenizer, self.retrieve, self.seed = model, tokenizer, retrieve, seed
        # Each turn: role, the words shown, what the model was sent, and the passages retrieved for it.
        self._turns: list[dict] = []
        self._error = ""

        wide = widgets.Layout(width="100%")
        label = {"description_width": "initial"}
        self.system = widgets.Textarea(value=system_prompt, description="System prompt", layout=wide, style=label)
        self.temperature = widgets.FloatSlider(
            value=temperature, min=0.0, max=1.5, step=0.05, description="temperature", style=label
        )
        self.top_p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p", style=label)
        self.max_new_tokens = widgets.IntSlider(
            value=max_new_tokens, min=16, max=512, step=1, description="max new tokens", style=label
        )
        self.use_retrieval = widgets.Checkbox(value=True, description="retrieval") if retrieve is not None else None
        self.input = widgets.Text(placeholder="Type a message and press Enter", layout=widgets.Layout(flex="1 1 auto"))
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.clear_button = widgets.Button(description="Clear")
        self.conversation = widgets.HTML(value="", layout=wide)

        self.send_button.on_click(self._on_send)
        self.clear_button.on_click(lambda _: self.clear())
        # Enter arrives as a "submit" message; Text.on_submit would register the same callback but warns that it is
        # deprecated, and observing the value instead would also send on every loss of focus.
        self.input.on_msg(self._on_input_msg)

        settings = [self.temperature, self.top_p, self.max_new_tokens] + ([self.use_retrieval] if self.use_retrieval else [])
        self.box = widgets.VBox(
            [
                self.system,
                widgets.HBox(settings, layout=widgets.Layout(flex_flow="row wrap")),
                self.conversation,
                widgets.HBox([self.input, self.send_button, self.clear_button], layout=wide),
            ]
        )

    # ----------------------------------------------------------------------------------------------- state
    @property
    def history(self) -> list[dict]:
        """The conversation as shown: ``[{"role": ..., "content": ...}, ...]`` with the user's own words.
        Taught in chapter 09, section 7."""
        return [{"role": t["role"], "content": t["content"]} for t in self._turns]

    def messages(self) -> list[dict]:
        """What the model reads before the next message: the system prompt and every turn as it was sent (questions
        with their retrieved passages). Taught in chapter 09, section 7."""
        return [{"role": "system", "content": self.system.value}] + [
            {"role": t["role"], "content": t["sent"]} for t in self._turns
        ]

    # ----------------------------------------------------------------------------------------------- actions
    def send(self, text: str) -> str:
        """Send ``text`` as the user's next message and return the answer, showing it as it is generated.

        A blank message does nothing (returns ""). A chat that no longer fits the model's context shows why in red
        and is left as it was (returns ""): clear it, or ask for fewer new tokens. Taught in chapter 09, section 7.
        """
        question = (text or "").strip()
        if not question:
            return ""
        passages: list[str] = []
        if self.retrieve is not None and self.use_retrieval.value:
            # Passage objects (helpers.support) are welcome too: their text is what the model reads.
            passages = [str(getattr(p, "text", p)) for p in self.retrieve(question)]
        user = {"role": "user", "content": question, "sent": _with_context(question, passages), "passages": passages}
        prompt = chat_ids(self.tokenizer, self.messages() + [{"role": "user", "content": user["sent"]}])
        max_new_tokens = int(self.max_new_tokens.value)
        try:
            check_fits(self.model, len(prompt), max_new_tokens)
        except ValueError as e:
            self._error = str(e)
            self._render()
            return ""
        self._error = ""
        answer = ""
        self.send_button.disabled = True
        try:
            self._render(pending=[user, {"role": "assistant", "content": ""}])
            top_p = float(self.top_p.value)
            pieces = stream(
                self.model,
                self.tokenizer,
                prompt,
                max_new_tokens=max_new_tokens,
                temperature=float(self.temperature.value),
                top_p=top_p if top_p < 1 else None,  # 1 keeps every token: skip the filter
                seed=self.seed + sum(t["role"] == "user" for t in self._turns),
            )
            for piece in pieces:
                answer += piece
                self._render(pending=[user, {"role": "assistant", "content": answer}])
            self._turns += [user, {"role": "assistant", "content": answer, "sent": answer, "passages": []}]
            self.input.value = ""
        finally:
            self.send_button.disabled = False
            self._render()
        return answer

    def clear(self) -> None:
        """Forget the conversation and empty its display (the Clear button). Taught in chapter 09, section 7."""
        self._turns = []
        self._error = ""
        self._render()

    # ----------------------------------------------------------------------------------------------- display
    def _render(self, pending: Sequence[dict] = ()) -> None:
        parts = [self._turn_html(t) for t in [*self._turns, *pending]]
        if self._error:
            parts.append(f'<div style="{_ERROR_STYLE}">{html.escape(self._error)}</div>')
        self.conversation.value = "".join(parts)

    @staticmethod
    def _turn_html(turn: dict) -> str:
        user = turn["role"] == "user"
        out = (
            f'<div style="{_USER_STYLE if user else _ASSISTANT_STYLE}">'
            f'<div style="{_LABEL_STYLE}">{"You" if user else "Assistant"}</div>'
            f'<div style="{_TEXT_STYLE}">{html.escape(turn["content"])}</div>'
        )
        if turn.get("passages"):
            out += f'<div style="{_PASSAGES_STYLE}">' + "<br>".join(f"• {html.escape(p)}" for p in turn["passages"]) + "</div>"
        return out + "</div>"

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    # ----------------------------------------------------------------------------------------------- events
    def _on_send(self, _button=None) -> None:
        # An exception in a widget callback goes to a log the learner rarely opens: show it in the chat instead.
        try:
            self.send(self.input.value)
        except Exception as e:
            self._error = f"{type(e).__name__}: {e}"
            self._render()

    def _on_input_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            self._on_send()
