"""Original GLM-4 folders (THUDM/glm-4-9b-chat's layout: model_type chatglm, a tiktoken tokenizer.model)
load natively, without the remote code.

Differential references: tiktoken itself (``tiktoken.Encoding`` over the same rank file, GLM-4's
regex and special ids, as ChatGLM4Tokenizer builds it) for the tokenizer and its chat ids, and
ChatGLM's equations (``tests.test_chatglm_legacy.reference_forward``, rope base scaling by
rope_ratio as GLM-4's code does) for the logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llm import ModelLoadError
from llm.chatglm_legacy import convert_checkpoint, load_chatglm_legacy
from llm.chatglm_tokenizer import detect_variant
from llm.glm4_tokenizer import GLM4_CHAT_TEMPLATE, GLM4_PATTERN, GLM4_SPECIAL_TOKENS, read_tiktoken_ranks
from llm.loading import load_model_and_tokenizer
from tests.fixtures.chatglm_legacy import load_original_state, make_glm4_legacy_folder
from tests.test_chatglm_legacy import random_ids, read_config, reference_forward

TEXTS = [
    "Hello world 12345 678, version 3.14159",
    "  spaces   and\n\nnewlines\t tab\r\n end  ",
    "I'm sure they'll say it's fine; DON'T SHOUT",
    "emoji 😀 and 𠀀 outside the BMP",
    "混合 English and 中文 text: 第一回 宴桃园豪杰三结义",
    "",
]


@pytest.fixture(scope="module")
def glm4(glm4_legacy_path: Path) -> tuple[object, object]:
    return load_chatglm_legacy(glm4_legacy_path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference_encoding(glm4_legacy_path: Path) -> object:
    """ChatGLM4Tokenizer's own encoder: tiktoken over the rank file, specials after the ranks."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = read_tiktoken_ranks(glm4_legacy_path / "tokenizer.model")
    specials = {token: len(ranks) + i for i, token in enumerate(GLM4_SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="glm4-test", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def test_folder_is_detected_as_glm4(glm4_legacy_path: Path) -> None:
    assert detect_variant(glm4_legacy_path, read_config(glm4_legacy_path)) == "glm4"


def test_tokens_equal_tiktoken(glm4: tuple, reference_encoding: object, xiyouji_path: Path) -> None:
    """Text the rank file was not trained on (西游记, bytes beyond the BMP, whitespace runs) encodes to
    tiktoken's ids and decodes back."""
    _model, tokenizer = glm4
    lines = [line for line in xiyouji_path.read_text(encoding="utf-8")[:30_000].splitlines() if line.strip()]
    for text in [*TEXTS, *lines[:200]]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference_encoding.encode(text, disallowed_special=()), text[:40]
        assert tokenizer.decode(ids) == text


def test_special_ids_and_stop_tokens(glm4: tuple, glm4_legacy_path: Path, reference_encoding: object) -> None:
    """Specials sit after the ranks in ChatGLM4Tokenizer's order; generation stops where config.json says."""
    model, tokenizer = glm4
    for token in GLM4_SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) == reference_encoding.encode(token, allowed_special="all")[0]
    assert model.generation_config.eos_token_id == read_config(glm4_legacy_path)["eos_token_id"]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "left"
    assert tokenizer.encode("你好")[:2] == tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])


def test_chat_ids_equal_build_chat_input(glm4: tuple, reference_encoding: object) -> None:
    """The chat template's ids are ChatGLM4Tokenizer.build_chat_input's: [gMASK] <sop>, then per
    message <|role|> + enc(metadata + "\\n") + enc(content), then <|assistant|>."""
    _model, tokenizer = glm4
    enc = reference_encoding
    messages = [
        {"role": "system", "content": "你是一个熟读三国演义的助手。"},
        {"role": "user", "content": "曹操是谁？"},
        {"role": "assistant", "content": "曹操，字孟德。"},
        {"role": "user", "content": " 刘备呢? Answer in English."},
    ]
    expected = tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    for message in messages:
        expected += [tokenizer.convert_tokens_to_ids(f"<|{message['role']}|>")] + enc.encode("\n")
        expected += enc.encode(message["content"], disallowed_special=())
    expected += [tokenizer.convert_tokens_to_ids("<|assistant|>")]
    got = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(got) == expected


def test_own_template_when_the_folder_has_none(glm4_tiktoken_file: Path, tmp_path: Path) -> None:
    """Without a chat_template in tokenizer_config.json, GLM-4's message format is glmkb's own."""
    folder = make_glm4_legacy_folder(tmp_path / "glm4", glm4_tiktoken_file, folder_template=False)
    _model, tokenizer = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    assert tokenizer.chat_template == GLM4_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "user", "content": "曹操是谁？"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "[gMASK]<sop><|user|>\n曹操是谁？<|assistant|>"


@pytest.mark.parametrize("length", [1, 9, 40])
def test_logits_equal_chatglm_equations(glm4: tuple, glm4_legacy_path: Path, length: int) -> None:
    """GLM-4 is ChatGLM3's network with rope_ratio 500 as base scaling (GLM-4's code): the reference's logits."""
    model, _tokenizer = glm4
    state, config = load_original_state(glm4_legacy_path), read_config(glm4_legacy_path)
    assert model.config.rope_parameters["rope_theta"] == 10000.0 * 500
    ids = random_ids(config, length, seed=length, batch=2)
    expected, _ = reference_forward(state, config, ids, style="base")
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_streams_through_chatglm(glm4_legacy_path: Path) -> None:
    """The LangChain face on an original GLM-4 folder: streamed chunks join to the invoked answer."""
    from llm import ChatGLM

    llm_ = ChatGLM.from_model_path(glm4_legacy_path, device="cpu", temperature=0.0, max_new_tokens=12)
    chunks = list(llm_.stream("曹操是谁？"))
    assert chunks and "".join(chunks) == llm_.invoke("曹操是谁？")


def test_int4_on_an_original_glm4_folder(glm4_legacy_path: Path) -> None:
    """llm.quantization int4 quantizes GLM-4 shard by shard like ChatGLM2/3 folders: the same model as
    quantizing the loaded full-precision one."""
    from llm.quantization import WeightOnlyInt4Linear, quantize_model_

    quantized, _ = load_model_and_tokenizer(glm4_legacy_path, device="cpu", dtype="float32", quantization="int4",
                                            quantization_group_size=32)
    assert isinstance(quantized.model.layers[1].mlp.down_proj, WeightOnlyInt4Linear)
    model, _ = load_chatglm_legacy(glm4_legacy_path, device="cpu", dtype="float32")
    quantize_model_(model, "int4", group_size=32)
    ids = random_ids(read_config(glm4_legacy_path), 7, seed=3)
    with torch.inference_mode():
        torch.testing.assert_close(quantized(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_convert_writes_a_native_folder(glm4: tuple, glm4_legacy_path: Path, tmp_path: Path) -> None:
    """``ingest convert``: the native folder reloads through plain transformers classes to the same
    logits and the same tokens."""
    model, tokenizer = glm4
    native = convert_checkpoint(glm4_legacy_path, tmp_path / "glm4-hf", progress=False)
    assert json.loads((native / "config.json").read_text(encoding="utf-8"))["model_type"] == "glm"
    again, tokenizer2 = load_model_and_tokenizer(native, device="cpu", dtype="float32")
    ids = random_ids(read_config(glm4_legacy_path), 11, seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    for text in TEXTS:
        assert tokenizer2.encode(text) == tokenizer.encode(text)


def test_damaged_rank_file_is_one_line(glm4_legacy_path: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(glm4_legacy_path, tmp_path / "glm4"))
    lines = (folder / "tokenizer.model").read_text(encoding="ascii").splitlines()
    (folder / "tokenizer.model").write_text("\n".join([*lines[:300], "!!not-base64 300", *lines[301:]]),
                                            encoding="ascii")
    with pytest.raises(ModelLoadError, match=r"tokenizer.model, line 301: not a 'base64-token rank' line") as e:
        load_chatglm_legacy(folder, device="cpu")
    assert "\n" not in str(e.value)


def test_tokenizer_larger_than_the_vocabulary(glm4_legacy_path: Path, tmp_path: Path) -> None:
    """A tokenizer.model from a bigger model than the weights: refused before ids could overflow the embeddings."""
    folder = Path(shutil.copytree(glm4_legacy_path, tmp_path / "glm4"))
    config = read_config(folder)
    config["padded_vocab_size"] = 1024
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"tokenizer has 1214 tokens but config.json's padded_vocab_size is 1024"):
        load_chatglm_legacy(folder, device="cpu")


def test_special_token_text_in_content_stays_text(glm4: tuple) -> None:
    """Prompt-injection guard (llm.special_tokens) knows GLM-4's specials: a user's "<|assistant|>" is not a turn."""
    from llm.special_tokens import special_token_strings

    _model, tokenizer = glm4
    assert {"<|user|>", "<|assistant|>", "[gMASK]", "<sop>", "<|endoftext|>"} <= set(special_token_strings(tokenizer))
