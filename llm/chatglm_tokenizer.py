"""The tokenizer of original ChatGLM2-6B / ChatGLM3-6B folders, as a plain transformers fast tokenizer.

THUDM's ``tokenization_chatglm.py`` (remote code, broken on current transformers) wraps the
folder's sentencepiece ``tokenizer.model`` and appends its own special tokens after the
sentencepiece vocabulary: ``[MASK] [gMASK] [sMASK] sop eop`` (ChatGLM2) plus the role tokens
``<|system|> <|user|> <|assistant|> <|observation|>`` (ChatGLM3), so special id =
sentencepiece size + offset (64789... for the real models). We rebuild the same encoding with
``tokenizers``: the sentencepiece BPE/unigram vocabulary, sentencepiece's own normalisation
(dummy "▁" prefix per text segment, spaces as "▁", optional charsmap / whitespace clean-up,
as its ``normalizer_spec`` says), byte fallback, and the ChatGLM special tokens at their ids.

The original builds chat prompts from ids: role token, ``sp.encode(metadata + "\\n")``,
``sp.encode(content)``. Every text segment between special tokens gets its own dummy "▁",
so ``<|user|>`` + "\\n" + " " + content tokenizes here exactly as the original's ids (the
extra space starts the content's own "▁" word). The chat templates below render that text.

ChatGLM2 or ChatGLM3 is decided from the folder (``detect_variant``): the remote tokenizer code
or tokenizer_config naming ``<|user|>`` means ChatGLM3, code without it ChatGLM2, else the
config's ``_name_or_path``; a folder that says nothing is taken as ChatGLM3 (with a warning).
A ``tokenizer.model`` in tiktoken's text format is an original GLM-4 folder (``llm.glm4_tokenizer``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedTokenizerFast

from llm.errors import ModelLoadError

logger = logging.getLogger(__name__)

Variant = Literal["chatglm2", "chatglm3", "glm4"]
TOKENIZER_FILE = "tokenizer.model"
REMOTE_TOKENIZER_CODE = "tokenization_chatglm.py"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
CHATGLM2_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")

# ChatGLM3 (tokenization_chatglm.build_chat_input / build_single_message): "[gMASK]sop", then per
# message <|role|> + sp(metadata + "\n") + sp(content), then <|assistant|>. The " " before the
# content is where the original's second sp.encode puts its dummy "▁"; empty content adds nothing.
CHATGLM3_CHAT_TEMPLATE = (
    "[gMASK]sop"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'observation'] %}"
    "{{ raise_exception('ChatGLM3 roles are system, user, assistant and observation, not ' + message['role']) }}"
    "{% endif %}"
    "{% set content = message['content'] or '' %}"
    "{% if message['role'] == 'system' and message.get('tools') %}"
    "{% set content = content + '\\n' + (message['tools'] | tojson(indent=4)) %}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message.get('metadata') or '' }}{{ '\\n' }}"
    "{% if content %} {{ content }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# ChatGLM2 (tokenization_chatglm.build_prompt): "[Round N]\n\n问：{query}\n\n答：{response}\n\n" with
# rounds numbered from 1, the whole prompt encoded by sentencepiece after "[gMASK]sop". ChatGLM2
# has no system role; a system message is put before the first round.
CHATGLM2_CHAT_TEMPLATE = (
    "[gMASK]sop"
    "{% set ns = namespace(round=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ message['content'] }}{{ '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{% set ns.round = ns.round + 1 %}"
    "{% if ns.round > 1 %}{{ '\\n\\n' }}{% endif %}"
    "[Round {{ ns.round }}]{{ '\\n\\n' }}问：{{ message['content'] }}{{ '\\n\\n' }}答："
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{{ raise_exception('ChatGLM2 roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
)


def special_tokens_for(variant: Variant) -> tuple[str, ...]:
    """The tokens the original appends after the sentencepiece vocabulary, in id order."""
    return CHATGLM2_SPECIAL_TOKENS + (CHATGLM3_ROLE_TOKENS if variant == "chatglm3" else ())


def detect_variant(path: Path, config: dict[str, Any]) -> Variant:
    """GLM-4 (a tiktoken tokenizer.model), else ChatGLM3 or ChatGLM2 from the folder's tokenizer
    code/config, else its config name."""
    from llm.glm4_tokenizer import is_tiktoken_file

    if is_tiktoken_file(path / TOKENIZER_FILE):
        return "glm4"
    code = path / REMOTE_TOKENIZER_CODE
    if code.is_file():
        text = code.read_text(encoding="utf-8", errors="replace")
        if "<|user|>" in text:
            return "chatglm3"
        if "[gMASK]" in text:
            return "chatglm2"
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file() and "<|user|>" in tokenizer_config.read_text(encoding="utf-8", errors="replace"):
        return "chatglm3"
    name = str(config.get("_name_or_path", "")).lower()
    if "chatglm2" in name or "codegeex2" in name:
        return "chatglm2"
    if "chatglm3" in name:
        return "chatglm3"
    logger.warning(
        "%s has no %s and its config does not name the model; assuming ChatGLM3 (role tokens, "
        "<|user|> chat format). For a ChatGLM2 folder, copy its %s back into the folder.",
        path,
        REMOTE_TOKENIZER_CODE,
        REMOTE_TOKENIZER_CODE,
    )
    return "chatglm3"


def stop_token_ids(tokenizer: PreTrainedTokenizerFast, variant: Variant) -> list[int]:
    """Ids that end an answer: ``</s>``, and for ChatGLM3 also ``<|user|>``/``<|observation|>`` (as its
    chat()); GLM-4's ``<|endoftext|>``, ``<|user|>``, ``<|observation|>``."""
    if variant == "glm4":
        from llm.glm4_tokenizer import STOP_TOKENS

        names = list(STOP_TOKENS)
    else:
        names = [EOS_TOKEN] + (["<|user|>", "<|observation|>"] if variant == "chatglm3" else [])
    return [tokenizer.convert_tokens_to_ids(name) for name in names]


def load_chatglm_tokenizer(path: Path, *, variant: Variant) -> PreTrainedTokenizerFast:
    """The folder's ChatGLM tokenizer as a ``PreTrainedTokenizerFast`` with its chat template."""
    if variant == "glm4":
        from llm.glm4_tokenizer import load_glm4_tokenizer

        return load_glm4_tokenizer(path)
    proto = read_sentencepiece_model(path / TOKENIZER_FILE)
    backend = build_backend(proto, path / TOKENIZER_FILE, special_tokens=special_tokens_for(variant))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=UNK_TOKEN,  # the original pads with the sentencepiece unk id
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHATGLM3_CHAT_TEMPLATE if variant == "chatglm3" else CHATGLM2_CHAT_TEMPLATE,
    )


def read_sentencepiece_model(file: Path) -> Any:
    """Parse ``tokenizer.model``; a clear error when it is missing or not sentencepiece."""
    from sentencepiece import sentencepiece_model_pb2

    if not file.is_file():  # GLM-4's tiktoken file is looked for here too (detect_variant needs it present)
        raise ModelLoadError(
            f"missing {file}: original ChatGLM2/3 and GLM-4 folders keep their tokenizer there (sentencepiece, "
            "or tiktoken ranks for GLM-4); copy tokenizer.model from the model's download into the folder"
        )
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
    except Exception as e:  # protobuf raises DecodeError (and others) on foreign files
        raise ModelLoadError(_not_sentencepiece(file)) from e
    if not proto.pieces:
        raise ModelLoadError(_not_sentencepiece(file))
    return proto


def _not_sentencepiece(file: Path) -> str:
    return (
        f"{file} is neither a sentencepiece model (ChatGLM2/3-6B) nor a tiktoken rank file (GLM-4); "
        "copy tokenizer.model from the model's download into the folder again"
    )


def build_backend(proto: Any, file: Path, *, special_tokens: tuple[str, ...]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes like the sentencepiece model plus ChatGLM's specials."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    trainer = proto.trainer_spec
    if trainer.model_type not in (1, 2):  # 1 unigram, 2 bpe
        raise ModelLoadError(f"{file}: unsupported sentencepiece model type {trainer.model_type} (need BPE or unigram)")
    if trainer.treat_whitespace_as_suffix:
        raise ModelLoadError(f"{file}: sentencepiece models with treat_whitespace_as_suffix are not supported")
    unk_piece = proto.pieces[trainer.unk_id].piece
    if trainer.model_type == 2:
        extracted = SentencePieceExtractor(str(file)).extract(models.BPE)
        model = models.BPE(
            vocab=extracted["vocab"],
            merges=extracted["merges"],
            unk_token=unk_piece,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
        )
    else:
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
        model = models.Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    backend = Tokenizer(model)
    backend.normalizer = sentencepiece_normalizer(proto.normalizer_spec)
    backend.decoder = sentencepiece_decoder(proto.normalizer_spec, byte_fallback=trainer.byte_fallback)
    add_sentencepiece_symbols(backend, proto, file)
    add_chatglm_special_tokens(backend, special_tokens, first_id=len(proto.pieces), file=file)
    backend.post_processor = chatglm_post_processor(backend)
    return backend


def sentencepiece_normalizer(spec: Any) -> normalizers.Normalizer:
    """sentencepiece's normalisation, applied to each text segment between special tokens."""
    steps: list[normalizers.Normalizer] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(normalizers.Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def sentencepiece_decoder(spec: Any, *, byte_fallback: bool) -> decoders.Decoder:
    """ "▁" back to spaces, bytes back to characters, the dummy prefix space dropped."""
    steps: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    return decoders.Sequence(steps)


def add_sentencepiece_symbols(backend: Tokenizer, proto: Any, file: Path) -> None:
    """sentencepiece control symbols (``<s>``, ``</s>``) and user-defined symbols as added tokens.

    ChatGLM2/3's tokenizer.model has no user-defined symbols (its byte pieces start right after
    ``</s>``). Other models' ones are added the usual transformers way, which can differ from
    sentencepiece in the spaces right after such a symbol; we say so.
    """
    control = [AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type == 3]
    user = [AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces if p.type == 4]
    if control:
        backend.add_special_tokens(control)
    if user:
        logger.warning(
            "%s has user-defined symbols (%s); text right after them may tokenize slightly differently "
            "from the original tokenizer",
            file,
            ", ".join(t.content for t in user[:5]),
        )
        backend.add_tokens(user)


def add_chatglm_special_tokens(
    backend: Tokenizer, special_tokens: tuple[str, ...], *, first_id: int, file: Path
) -> None:
    """ChatGLM's tokens at sentencepiece size + offset, checked (a clash would shift every id)."""
    for offset, token in enumerate(special_tokens):
        existing = backend.token_to_id(token)
        if existing is not None:
            raise ModelLoadError(
                f"{file} already has a piece {token!r} (id {existing}); a ChatGLM tokenizer appends "
                "it at the end of the vocabulary, so this is not a ChatGLM2/3 tokenizer.model"
            )
        # "sop"/"eop" are also letters inside words ("Aesop", "people"): match them only standing alone.
        added = AddedToken(token, special=True, normalized=False, single_word=token.isalnum())
        backend.add_special_tokens([added])
        require_id(backend, token, first_id + offset, file=file, rule="sentencepiece size + offset", model="ChatGLM")


def require_id(backend: Tokenizer, token: str, expected: int, *, file: Path, rule: str, model: str) -> None:
    """Special ``token`` must sit at ``expected`` (a shifted id would shift every special after it)."""
    got = backend.token_to_id(token)
    if got != expected:
        raise ModelLoadError(
            f"{file}: special token {token!r} got id {got}, expected {expected} ({rule}); "
            f"the tokenizer.model does not match a {model} vocabulary"
        )


def chatglm_post_processor(backend: Tokenizer) -> processors.PostProcessor:
    """``[gMASK] sop`` before a text (and ``</s>`` after a pair), as build_inputs_with_special_tokens."""
    ids = {token: backend.token_to_id(token) for token in ("[gMASK]", "sop", EOS_TOKEN)}
    return processors.TemplateProcessing(
        single="[gMASK] sop $A",
        pair="[gMASK] sop $A $B:1 </s>:1",
        special_tokens=list(ids.items()),
    )
