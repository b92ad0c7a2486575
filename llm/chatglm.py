"""``ChatGLM``: a LangChain LLM over a local chat model (GLM family or any causal LM with a chat template).

Generation runs through ``model.generate`` on a worker thread and streams real tokens
(``llm.streaming``). ``_stream`` is the one code path: ``_call``/``invoke`` join it, ``astream``
drives it from a thread, and only batches of several prompts take a batched ``generate``.
On CUDA both take the fast decode path of ``llm.fast_decode`` (static KV cache, compiled
decode step) unless ``fast_decode=False``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, Field

from configs.settings import GenerationSettings, LLMSettings
from llm.answer_text import answer_pieces, batch_answers
from llm.async_stream import AsyncChunkStream
from llm.cancellation import run_cancellable
from llm.chatglm_prompts import PromptRendering
from llm.chatglm_routing import GenerationRouting
from llm.errors import ModelLoadError
from llm.fast_decode import FastDecodeOptions
from llm.generate_kwargs import (
    GENERATION_FIELDS,
    build_generate_kwargs,
    generation_params,
    special_token_ids,
    with_stop_strings,
)
from llm.loading import load_model_and_tokenizer
from llm.reasoning import Split, prompt_opens_reasoning
from llm.streaming import GenerationStats, run_generate

_DEFAULTS = GenerationSettings()


class ChatGLM(PromptRendering, GenerationRouting, LLM):
    """Local chat model with real token streaming, chat template, history and system prompt.

    Per-call keyword arguments (``llm.invoke(q, history=[...], temperature=0)``): ``history``
    (list of ``(user, assistant)`` pairs), ``system_prompt``, ``enable_thinking``, the generation fields below, and
    any other ``model.generate`` keyword (e.g. ``top_k``, ``logits_processor``). ``messages``
    (the whole chat as role/content dicts, already neutralised) replaces prompt, history and
    system prompt: that is how ``llm.chatglm_chat.ChatGLMChat`` shares this generation core.
    Fast path or plain ``generate``, alone or batched: ``llm.chatglm_routing.GenerationRouting``; the
    chat template and tokens: ``llm.chatglm_prompts.PromptRendering``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(exclude=True, repr=False, description="A loaded transformers causal LM.")
    tokenizer: Any = Field(exclude=True, repr=False, description="Its tokenizer, with a chat template.")
    model_path: str | None = Field(None, description="Folder the model was loaded from (for display).")
    system_prompt: str | None = Field(None, description="System prompt of every chat unless given per call.")
    max_new_tokens: int = Field(_DEFAULTS.max_new_tokens, ge=1)
    temperature: float = Field(_DEFAULTS.temperature, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(_DEFAULTS.top_p, ge=0.0, le=1.0)  # 0: greedy (only the likeliest token)
    repetition_penalty: float = Field(_DEFAULTS.repetition_penalty, gt=0.0)
    fast_decode: bool | None = Field(
        None,
        description=(
            "Static KV cache + torch.compile'd decode step (CUDA graphs). None = on where supported "
            "(CUDA; int8/int4 included, not bitsandbytes); False = plain generate; True = on, with a "
            "warning where unsupported."
        ),
    )
    fast_decode_options: FastDecodeOptions = Field(
        default_factory=FastDecodeOptions,
        description="Which parts of the fast path to use (packed attention, fused q/k/v, captured prompt pass).",
    )
    batch_concurrent: bool = Field(
        True,
        description=(
            "Streamed requests that arrive while the model is busy wait and start together as one batch "
            "(llm.batching); False = strictly one generation at a time."
        ),
    )
    enable_thinking: bool | None = Field(
        None,
        description=(
            "A reasoning model's thinking (llm.enable_thinking): None = as its chat template renders it; False = "
            "off (the template's enable_thinking=False, and a <think> block it still opens closed empty); True = "
            "the template's enable_thinking=True. Per call: invoke(..., enable_thinking=False)."
        ),
    )
    max_concurrent_batch: int = Field(16, ge=1, description="Most requests in one batch (llm.max_concurrent_batch).")
    max_queue: int = Field(
        64, ge=1, description="Most requests waiting for the model; past it requests get Busy (HTTP 503, retry)."
    )

    # ----- construction -------------------------------------------------------------------

    @classmethod
    def from_model_path(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quantization: str = "none",
        trust_remote_code: bool = False,
        quantization_group_size: int = 128,
        int4_kernel: str = "auto",  # llm.quantization.DEFAULT_INT4_KERNEL
        adapter: str | Path | None = None,
        merge_adapter: bool = False,
        **fields: Any,
    ) -> ChatGLM:
        """Load a local model folder or hub id (``llm.loading.load_model_and_tokenizer``) and wrap it: the one
        place loading options (``adapter``: a P-tuning v2 or LoRA folder) reach the loader."""
        model, tokenizer = load_model_and_tokenizer(
            path,
            device=device,
            dtype=dtype,
            quantization=quantization,
            trust_remote_code=trust_remote_code,
            quantization_group_size=quantization_group_size,
            int4_kernel=int4_kernel,
            adapter=adapter,
            merge_adapter=merge_adapter,
        )
        return cls(model=model, tokenizer=tokenizer, model_path=str(path), **fields)

    @classmethod
    def from_settings(cls, settings: LLMSettings, **fields: Any) -> ChatGLM:
        """Load the model named by the ``llm`` settings section (with ``llm.adapter``), with its generation defaults."""
        if not settings.model_path:
            raise ModelLoadError(
                "no chat model configured: set llm.model_path (YAML, GLMKB_LLM__MODEL_PATH or "
                "--model-path) to a local model folder such as chatglm3-6b or glm-4-9b-chat-hf"
            )
        defaults = {
            "system_prompt": settings.system_prompt,
            "max_concurrent_batch": settings.max_concurrent_batch,
            "enable_thinking": settings.enable_thinking,
            "max_queue": settings.max_queue,
            **settings.generation.model_dump(),
        }
        from llm.kernels.gemv_configs import use_measured_tiles

        try:
            use_measured_tiles(settings.gemv_tiles)  # None: the built-in table again
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        return cls.from_model_path(
            settings.model_path,
            device=settings.device,
            dtype=settings.dtype,
            quantization=settings.quantization,
            quantization_group_size=settings.quantization_group_size,
            int4_kernel=settings.int4_kernel,
            trust_remote_code=settings.trust_remote_code,
            adapter=settings.adapter,
            merge_adapter=settings.merge_adapter,
            **{**defaults, **fields},
        )

    # ----- LangChain identity -------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "chatglm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "model_class": type(self.model).__name__,
            "device": str(getattr(self.model, "device", "")),
            "dtype": str(getattr(self.model, "dtype", "")),
            "system_prompt": self.system_prompt,
            **{name: getattr(self, name) for name in GENERATION_FIELDS},
        }

    # ----- generation keyword arguments (the one place) -----------------------------------

    def _generate_kwargs(self, prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Everything ``model.generate`` gets for ``prompts``; pops the kwargs it consumes.

        Renders each prompt with ``history``/``system_prompt`` (or the whole chat, ``messages``);
        ``llm.generate_kwargs`` encodes (left-padded when several), resolves sampling from fields
        and per-call overrides, and passes any other per-call keyword straight to ``generate``.
        """
        history = kwargs.pop("history", None)
        system_prompt = kwargs.pop("system_prompt", self.system_prompt)
        messages = kwargs.pop("messages", None)
        thinking = kwargs.pop("enable_thinking", None)
        if messages is not None:
            texts = [self.render_messages(messages, enable_thinking=thinking)]
        else:
            texts = [self.render_prompt(p, history=history, system_prompt=system_prompt, enable_thinking=thinking)
                     for p in prompts]
        params = generation_params(kwargs, defaults=self)
        return build_generate_kwargs(
            texts,
            tokenizer=self.tokenizer,
            params=params,
            special_tokens=self._special_token_ids(),
            extra=kwargs,
        )

    def _special_token_ids(self) -> dict[str, Any]:
        """eos ids (GLM has several) and a pad id, from generation_config with tokenizer fallback."""
        return special_token_ids(self.model, self.tokenizer)

    # ----- streaming: the one code path ---------------------------------------------------

    def _iter_text(
        self,
        prompt: str,
        stop: list[str] | None,
        *,
        cancel: threading.Event,
        stats: GenerationStats | None = None,
        **kwargs: Any,
    ) -> Iterator[Split]:
        """Thinking and answer pieces as tokens are generated (``llm.reasoning``); closing this generator
        stops generation.

        ``stats`` (if given) is filled in as generation runs: prompt and generated token
        counts, and once the generator ends, why it stopped.
        """
        scheduler = self._scheduler() if self.batch_concurrent else None
        if scheduler is not None:
            scheduler.arrive()  # a batch about to start waits for this request's tokenization
        try:
            generate_kwargs = self._generate_kwargs([prompt], kwargs)
        except BaseException:
            if scheduler is not None:
                scheduler.leave()
            raise
        stats = stats if stats is not None else GenerationStats()
        stats.start(generate_kwargs)
        thinking = prompt_opens_reasoning(generate_kwargs["input_ids"][0], tokenizer=self.tokenizer)
        token_ids = self._token_ids(generate_kwargs, cancel, scheduler)
        yield from answer_pieces(token_ids, tokenizer=self.tokenizer, stop=stop, stats=stats, thinking=thinking)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        pieces = self._iter_text(prompt, stop, cancel=threading.Event(), **kwargs)
        yield from _generation_chunks(pieces, run_manager.on_llm_new_token if run_manager else None)

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop, run_manager, **kwargs))

    # ----- async --------------------------------------------------------------------------

    def _astream(  # type: ignore[override]
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """Drives ``_iter_text`` from a thread; closing, cancelling or dropping it stops generation."""
        cancel = threading.Event()
        chunks = _generation_chunks(self._iter_text(prompt, stop, cancel=cancel, **kwargs))

        async def report(chunk: GenerationChunk) -> None:
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)

        return AsyncChunkStream(chunks, cancel, report)

    async def _acall(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join([chunk.text async for chunk in self._astream(prompt, stop, run_manager, **kwargs)])

    # ----- batches ------------------------------------------------------------------------

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """One prompt streams; several run as one left-padded ``generate`` batch."""
        if len(prompts) == 1:
            return super()._generate(prompts, stop, run_manager, **kwargs)
        return _batch_result(self._generate_batch(prompts, stop, **kwargs))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if len(prompts) == 1:
            return await super()._agenerate(prompts, stop, run_manager, **kwargs)

        def work(cancel: threading.Event) -> list[Split]:
            return self._generate_batch(prompts, stop, **kwargs)  # in cancel's scope (llm.cancellation)

        return _batch_result(await run_cancellable(work))

    def _generate_batch(self, prompts: list[str], stop: list[str] | None, **kwargs: Any) -> list[Split]:
        """Thinking and answer of several prompts from one batched ``generate`` call (cleaned as streams are)."""
        generate_kwargs = self._generate_kwargs(prompts, kwargs)
        prompt_length = generate_kwargs["input_ids"].shape[1]
        with_stop_strings(generate_kwargs, tokenizer=self.tokenizer, stop=stop, prompt_length=prompt_length)
        output = run_generate(self.model, generate_kwargs, fast_decode=self._fast_decode())
        return batch_answers(output, prompt_length=prompt_length, tokenizer=self.tokenizer, stop=stop)


def _generation_chunks(
    pieces: Iterator[Split], on_token: Callable[..., Any] | None = None
) -> Iterator[GenerationChunk]:
    """Pieces as ``GenerationChunk``s, each first reported to ``on_token`` (a callback manager's
    ``on_llm_new_token``) if given; closing this closes ``pieces`` (stops generation). A reasoning model's
    thinking comes as chunks of no text with ``generation_info["reasoning_content"]``."""
    try:
        for piece in pieces:
            chunk = GenerationChunk(text=piece.answer, generation_info=_reasoning_info(piece))
            if on_token is not None:
                on_token(piece.answer, chunk=chunk)
            yield chunk
    finally:
        pieces.close()  # type: ignore[attr-defined]


def _reasoning_info(piece: Split) -> dict[str, str] | None:
    return {"reasoning_content": piece.reasoning} if piece.reasoning else None


def _batch_result(splits: list[Split]) -> LLMResult:
    """The answers of a batch, each with its thinking (if any) in ``generation_info``."""
    return LLMResult(generations=[[Generation(text=s.answer, generation_info=_reasoning_info(s))] for s in splits])
