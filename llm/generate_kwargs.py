"""The keyword arguments ``model.generate`` gets for a ``ChatGLM`` call (the one place).

``ChatGLM._generate_kwargs`` renders the prompts and hands them here: generation fields with
per-call overrides, left-padded encoding, sampling or greedy, the model's eos/pad ids, any other
per-call keyword as is, and the enclosing ``llm.cancel_scope``s. ``with_stop_strings`` adds the
per-row stop of a batched call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm.cancellation import current_cancel_events
from llm.streaming import BatchStopStringCriteria, CancelCriteria

__all__ = [
    "GENERATION_FIELDS",
    "build_generate_kwargs",
    "generation_params",
    "sampling_kwargs",
    "special_token_ids",
    "with_stop_strings",
]

GENERATION_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")


def generation_params(kwargs: dict[str, Any], *, defaults: Any) -> dict[str, Any]:
    """``GENERATION_FIELDS`` popped from per-call ``kwargs``, else ``defaults``' attributes
    (a ``max_new_tokens`` of None also takes the default)."""
    params = {name: kwargs.pop(name, getattr(defaults, name)) for name in GENERATION_FIELDS}
    if params["max_new_tokens"] is None:
        params["max_new_tokens"] = defaults.max_new_tokens
    return params


def special_token_ids(model: Any, tokenizer: Any) -> dict[str, Any]:
    """eos ids (GLM has several) and a pad id, from generation_config with tokenizer fallback."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return {"eos_token_id": eos, "pad_token_id": pad}


def sampling_kwargs(*, temperature: float | None, top_p: float) -> dict[str, Any]:
    """Sampling with ``temperature``/``top_p`` when both are above 0, else greedy: a nucleus of mass 0
    holds only the likeliest token (OpenAI's API takes ``top_p`` 0; generate refuses it)."""
    if temperature and temperature > 0 and top_p > 0:
        return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)}
    # Greedy; clear the checkpoint's sampling defaults so generate does not warn.
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def build_generate_kwargs(
    texts: Sequence[str],
    *,
    tokenizer: Any,
    params: dict[str, Any],
    special_tokens: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``model.generate`` keywords for rendered ``texts``: encoded (left-padded when several),
    ``params`` (``generation_params``), ``special_tokens``, then ``extra`` (any other per-call
    keyword) as is, and a ``CancelCriteria`` for each enclosing ``llm.cancel_scope``.

    The ids stay on the CPU: the model's worker moves them (``llm.streaming.generate_on_worker``), so
    that a request thread never calls CUDA while the worker may be capturing a graph."""
    encoded = tokenizer(
        list(texts), add_special_tokens=False, padding=len(texts) > 1, padding_side="left", return_tensors="pt"
    )
    out: dict[str, Any] = {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "max_new_tokens": int(params["max_new_tokens"]),
        "repetition_penalty": float(params["repetition_penalty"]),
        **special_tokens,
    }
    out.update(sampling_kwargs(temperature=params["temperature"], top_p=params["top_p"]))
    out.update(extra)
    scopes = current_cancel_events()
    if scopes:  # e.g. the UI's Stop during a summary's batched map step
        out["stopping_criteria"] = [*(out.get("stopping_criteria") or []), *map(CancelCriteria, scopes)]
    return out


def with_stop_strings(
    generate_kwargs: dict[str, Any], *, tokenizer: Any, stop: Sequence[str] | None, prompt_length: int
) -> None:
    """Add a per-row ``BatchStopStringCriteria`` for ``stop`` (if any) to a batched call's
    ``generate_kwargs``, in place; new tokens start at ``prompt_length``."""
    if stop:
        criteria = list(generate_kwargs.pop("stopping_criteria", None) or [])
        criteria.append(BatchStopStringCriteria(tokenizer, stop, prompt_length))
        generate_kwargs["stopping_criteria"] = criteria
