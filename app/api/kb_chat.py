"""Knowledge-base chat for the API: the prompt budget the model's context allows, and the
``usage``/``finish_reason`` of an answer the QA chain generated.

Issue 17 (API conformance) and issue 20 #8: KB chat sent a 6,150-token prompt to a
1,024-position model, let ``max_tokens`` run past the context (2,528 tokens), answered no
``usage`` and always ``finish_reason: "stop"``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from app.api.chat_jobs import RequestError, context_length
from llm import ChatGLM

__all__ = ["MAX_CHARS_PER_TOKEN", "KBBudget", "UsageCounter", "check_prompt_chars", "prompt_budget"]

# No tokenizer glmkb serves packs more characters than this into one token (GLM-4's ~1 char
# per CJK token, ~4 per English word piece); text longer than context × this cannot fit and is
# refused before tokenizing (issue 20 #6: a 30 MB message took 54 s of CPU and +3.6 GiB).
MAX_CHARS_PER_TOKEN = 8
MIN_PROMPT_TOKENS = 16


def check_prompt_chars(chars: int, context: int | None) -> None:
    """Refuse text that cannot fit ``context`` tokens, by length alone (no tokenizing)."""
    if context is not None and chars > context * MAX_CHARS_PER_TOKEN:
        raise RequestError(
            f"the messages have {chars} characters, more than a {context}-token context can hold; "
            "shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )


def template_tokens(llm: Any) -> int:
    """Tokens the chat template adds around a prompt (system prompt included)."""
    if not isinstance(llm, ChatGLM):
        return 0
    text = llm.render_prompt("", history=None, system_prompt=llm.system_prompt)
    return len(llm.tokenizer.encode(text, add_special_tokens=False))


class KBBudget:
    """``max_new_tokens`` and the chain's ``max_input_tokens`` for one KB chat request."""

    def __init__(self, llm: Any, *, max_input_tokens: int, asked: int | None) -> None:
        context = context_length(llm) if isinstance(llm, ChatGLM) else None
        new_tokens = asked or getattr(llm, "max_new_tokens", None) or getattr(llm, "max_tokens", None) or 0
        self.context = context
        self.max_new_tokens = int(new_tokens)
        self.max_input_tokens = max_input_tokens
        if context is None:
            return
        template = template_tokens(llm)
        room = context - template - MIN_PROMPT_TOKENS
        if asked is not None:
            if asked > room:
                raise RequestError(
                    f"max_tokens is {asked}, but the model's context holds {context} tokens with the prompt; "
                    f"lower max_tokens (at most {max(room, 0)})",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            self.max_input_tokens = max(MIN_PROMPT_TOKENS, min(max_input_tokens, context - template - asked))
            return
        # No max_tokens asked: the prompt keeps its budget, leaving at least a quarter of the
        # context (or the model's default, if smaller) to the answer, which gets what is left.
        answer_floor = min(self.max_new_tokens, context // 4)
        self.max_input_tokens = max(MIN_PROMPT_TOKENS, min(max_input_tokens, context - template - answer_floor))
        self.max_new_tokens = max(1, min(self.max_new_tokens, context - template - self.max_input_tokens))


class UsageCounter(BaseCallbackHandler):
    """Counts the tokens of every model call in one KB answer (condense + answer) as the model
    reads them (the chat template included for ChatGLM), and whether the last one was cut."""

    def __init__(self, llm: Any, *, max_new_tokens: int) -> None:
        self.llm = llm
        self.max_new_tokens = max_new_tokens
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.last_completion = 0

    def _count(self, text: str) -> int:
        tokenizer = getattr(self.llm, "tokenizer", None)
        if tokenizer is not None:
            return len(tokenizer.encode(text, add_special_tokens=False))
        return int(self.llm.get_num_tokens(text))

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        for prompt in prompts:
            if isinstance(self.llm, ChatGLM):
                prompt = self.llm.render_prompt(prompt, history=None, system_prompt=self.llm.system_prompt)
            self.prompt_tokens += self._count(prompt)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        text = "".join(g.text for generations in response.generations for g in generations)
        self.last_completion = self._count(text)
        self.completion_tokens += self.last_completion

    @property
    def finish_reason(self) -> str:
        """``length`` when the answer used all of ``max_tokens`` (re-tokenized), else ``stop``."""
        return "length" if self.max_new_tokens and self.last_completion >= self.max_new_tokens else "stop"

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def prompt_budget(llm: Any, *, max_input_tokens: int, asked: int | None) -> KBBudget:
    return KBBudget(llm, max_input_tokens=max_input_tokens, asked=asked)
