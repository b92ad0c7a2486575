"""Fine-tuning runs on a tiny ChatGLM3: the loss drops, the saved adapter reloads to identical logits,
``--resume`` continues exactly where the checkpoint stopped, and the CLI reports errors in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llm.finetune.data import load_examples, stop_token_ids
from llm.finetune.batching import pad
from llm.finetune.train import FinetuneConfig, run_finetune
from llm.loading import load_model_and_tokenizer

pytest.importorskip("peft")

TOY = [
    [{"role": "user", "content": "刘备的字是什么？"}, {"role": "assistant", "content": "玄德。"}],
    [{"role": "user", "content": "关羽的字是什么？"}, {"role": "assistant", "content": "云长。"},
     {"role": "user", "content": "张飞呢？"}, {"role": "assistant", "content": "翼德。"}],
    [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": "诸葛亮的字？"}, {"role": "assistant", "content": "孔明。"}],
    [{"role": "user", "content": "曹操的字？"}, {"role": "assistant", "content": "孟德。"}],
]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    data.write_text("\n".join(json.dumps({"conversations": c}, ensure_ascii=False) for c in TOY), encoding="utf-8")
    return data


def config(base: Path, data: Path, output: Path, **options: Any) -> FinetuneConfig:
    defaults: dict[str, Any] = {"device": "cpu", "dtype": "float32", "batch_size": 2, "progress": False, "seed": 1}
    return FinetuneConfig(data=str(data), model_path=str(base), output=str(output), **{**defaults, **options})


def toy_loss(model: Any, tokenizer: Any, data: Path) -> float:
    """Mean loss over the toy set's trained tokens (one padded batch)."""
    examples = load_examples(data, tokenizer, stop_ids=stop_token_ids(model, tokenizer), last_turn_only=False, max_length=256)
    batch = pad(examples, pad_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        return float(model(**batch).loss)


@pytest.mark.parametrize(
    ("method", "options"),
    [("lora", {"lr": 1e-2, "lora_dropout": 0.0}), ("ptuning", {"lr": 0.3, "pre_seq_len": 8})],
)
def test_training_lowers_the_loss_and_the_adapter_reloads(
    chatglm3_legacy_path: Path, toy_data: Path, tmp_path: Path, method: str, options: dict[str, Any]
) -> None:
    base, tokenizer = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32")
    before = toy_loss(base, tokenizer, toy_data)
    result = run_finetune(config(chatglm3_legacy_path, toy_data, tmp_path / "out", method=method, max_steps=12,
                                 save_every=100, **options))
    assert result.checkpoint == tmp_path / "out" / "checkpoint-12"
    reloaded, _ = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32", adapter=result.checkpoint)
    after = toy_loss(reloaded, tokenizer, toy_data)
    assert after < 0.8 * before, (before, after)
    ids = torch.tensor([load_examples(toy_data, tokenizer, stop_ids={2}, last_turn_only=False, max_length=64)[1].input_ids])
    with torch.inference_mode():
        trained = result.model(input_ids=ids).logits
        again = reloaded(input_ids=ids).logits
    torch.testing.assert_close(again, trained, rtol=0, atol=1e-5)


def test_resume_continues_from_the_saved_step(chatglm3_legacy_path: Path, toy_data: Path, tmp_path: Path) -> None:
    """4 steps in one go == resuming its checkpoint-2 to step 4 (adapter, optimizer, schedule, data order, RNG)."""
    whole = run_finetune(config(chatglm3_legacy_path, toy_data, tmp_path / "a", max_steps=4, save_every=2, lr=5e-3))
    assert (tmp_path / "a" / "checkpoint-2" / "trainer_state.pt").is_file()
    resumed = run_finetune(config(chatglm3_legacy_path, toy_data, tmp_path / "b", max_steps=4, save_every=2, lr=5e-3,
                                  resume=str(tmp_path / "a" / "checkpoint-2")))
    assert not (tmp_path / "b" / "checkpoint-2").exists()  # steps 1-2 were not run again
    assert resumed.checkpoint.name == "checkpoint-4"
    state_a = json.loads((whole.checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    state_b = json.loads((resumed.checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    assert state_b["step"] == 4
    assert state_b["last_loss"] == pytest.approx(state_a["last_loss"], rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(str(whole.checkpoint / "adapter_model.safetensors"))
    b = load_file(str(resumed.checkpoint / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_cli_runs_and_reports_bad_data_in_one_line(
    chatglm3_legacy_path: Path, toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.glmkb_cli import main as glmkb
    from llm.finetune.cli import main

    out = tmp_path / "out"
    code = glmkb(["finetune", str(toy_data), "--model-path", str(chatglm3_legacy_path), "--output", str(out), "--device", "cpu",
                 "--max-steps", "2", "--pack", "--max-length", "128", "-q"])
    assert code == 0 and (out / "checkpoint-2" / "adapter_config.json").is_file()
    assert "--adapter" in capsys.readouterr().out
    code = main([str(toy_data), "--model-path", str(chatglm3_legacy_path), "--output", str(out), "--device", "cpu",
                 "--max-steps", "3", "--pack", "--max-length", "128", "-q", "--resume"])
    assert code == 0 and (out / "checkpoint-3").is_file() is False and (out / "checkpoint-3" / "trainer_state.pt").is_file()
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text(encoding="utf-8"))["step"] == 3
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": [{"role": "user", "content": "?"}]}) + "\n", encoding="utf-8")
    code = main([str(bad), "--model-path", str(chatglm3_legacy_path), "--output", str(out), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "line 1: no assistant turn" in err


def test_packed_rows_keep_conversations_apart(chatglm3_legacy_path: Path, toy_data: Path) -> None:
    """--pack: each conversation in a packed row gets exactly the logits it gets alone (no attention across)."""
    from llm.finetune.batching import pack

    model, tokenizer = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32")
    examples = load_examples(toy_data, tokenizer, stop_ids=stop_token_ids(model, tokenizer), last_turn_only=False, max_length=256)
    batch = pack([examples[:3]], pad_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        at = 0
        for example in examples[:3]:
            alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[at : at + len(example.input_ids)], alone, atol=1e-4, rtol=1e-4)
            at += len(example.input_ids)
