"""The fine-tuning loop: LoRA (peft) or a P-tuning v2 prefix on the native model, checkpoints and resume.

A step is ``grad_accum`` micro-batches (loss averaged), gradient clipping at 1.0, AdamW, linear
warm-up then linear decay. Every ``save_every`` steps and at the end, ``OUTPUT/checkpoint-STEP``
gets the adapter (the folder ``--adapter`` loads) plus ``trainer_state.pt`` (optimizer, schedule,
step, RNG state; plain tensors, read back with ``weights_only``) and ``trainer_state.json`` (what
a person wants to know). ``resume`` restores all of it and skips the micro-batches already seen
(the data order is a function of seed and epoch), so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from configs.errors import BadInput
from llm.finetune.batching import micro_batches
from llm.finetune.data import Example, load_examples, stop_token_ids

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class FinetuneConfig:
    """Everything a run needs; the CLI fills it from flags and settings."""

    data: str
    model_path: str
    output: str
    method: str = "lora"  # lora | ptuning
    device: str = "auto"
    dtype: str = "auto"
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None  # None: 2e-4 for LoRA, 2e-2 for P-tuning (THUDM's ptuning/train.sh)
    warmup_steps: int = 0
    max_length: int = 1024
    pack: bool = False
    last_turn_only: bool = False
    save_every: int = 500
    resume: str | None = None  # a checkpoint folder, or "latest" in output
    seed: int = 42
    lora_r: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    pre_seq_len: int = 128
    prefix_projection: bool = False
    gradient_checkpointing: bool = False
    progress: bool = True


@dataclass
class Finetuned:
    """A finished run: its last checkpoint (an adapter folder) and the trained model in memory."""

    checkpoint: Path
    model: Any
    trainable: torch.nn.Module


@dataclass
class RunState:
    """Where a run is: optimizer steps done, and the loss of each."""

    step: int = 0
    losses: list[float] = field(default_factory=list)


def run_finetune(cfg: FinetuneConfig) -> Finetuned:
    """Train; returns the last checkpoint folder (an adapter folder) and the model."""
    from llm.loading import load_model_and_tokenizer

    check_config(cfg)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    examples = load_examples(
        cfg.data, tokenizer, stop_ids=stop_token_ids(model, tokenizer), last_turn_only=cfg.last_turn_only,
        max_length=cfg.max_length,
    )
    trainable = prepare_model(model, cfg)
    total = total_steps(cfg, examples)
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=learning_rate(cfg), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg.warmup_steps, total))
    state = RunState()
    resume_from = resume_folder(cfg)
    if resume_from is not None:
        state = restore(resume_from, trainable, optimizer, scheduler, cfg)
        logger.warning("resuming from %s at step %d", resume_from, state.step)
    last = train_loop(model, trainable, tokenizer, examples, optimizer, scheduler, state, cfg, total=total)
    trainable.eval()
    return Finetuned(last, model, trainable)


def check_config(cfg: FinetuneConfig) -> None:
    if cfg.method not in ("lora", "ptuning"):
        raise BadInput(f"--method must be lora or ptuning, not {cfg.method!r}")
    if cfg.pack and cfg.method == "ptuning":
        raise BadInput("--pack works with LoRA only (a P-tuning prefix sits in a cache, which turns packed masking off); drop --pack")
    for name in ("batch_size", "grad_accum", "max_length", "save_every"):
        if getattr(cfg, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be at least 1")
    if not Path(cfg.data).is_file():
        raise BadInput(f"training data {cfg.data} does not exist; give a JSONL file of conversations")


def learning_rate(cfg: FinetuneConfig) -> float:
    return cfg.lr if cfg.lr is not None else (2e-4 if cfg.method == "lora" else 2e-2)


def schedule(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def micro_batches_per_epoch(cfg: FinetuneConfig, examples: list[Example], pad_id: int) -> int:
    return len(micro_batches(examples, epoch=0, seed=cfg.seed, batch_size=cfg.batch_size, pack_rows=cfg.pack,
                             max_length=cfg.max_length, pad_id=pad_id))


def total_steps(cfg: FinetuneConfig, examples: list[Example]) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = micro_batches_per_epoch(cfg, examples, pad_id=0)
    return max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))


# ----- the model ------------------------------------------------------------------------------


def prepare_model(model: Any, cfg: FinetuneConfig) -> torch.nn.Module:
    """Freeze the base and add the trainable adapter; returns the module whose state is the adapter."""
    model.requires_grad_(False)
    if cfg.method == "ptuning":
        from llm.adapters.ptuning import PrefixEncoder, PrefixShape, attach_prefix

        mc = model.config
        shape = PrefixShape(
            pre_seq_len=cfg.pre_seq_len, projection=cfg.prefix_projection, num_layers=mc.num_hidden_layers,
            num_kv_heads=mc.num_key_value_heads, head_dim=mc.head_dim, hidden_size=mc.hidden_size,
        )
        encoder = PrefixEncoder(shape).to(model.device)  # float32, as THUDM keeps the prefix encoder
        attach_prefix(model, encoder)
        encoder.requires_grad_(True).train()
        return encoder
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise BadInput("LoRA fine-tuning needs peft: pip install 'glmkb[finetune]'") from e
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    return peft_model


def save_adapter(model: Any, trainable: torch.nn.Module, folder: Path, cfg: FinetuneConfig) -> None:
    if cfg.method == "ptuning":
        from llm.adapters.ptuning import save_ptuning

        save_ptuning(model, folder)
    else:
        trainable.save_pretrained(folder)


def load_adapter_weights(trainable: torch.nn.Module, folder: Path, cfg: FinetuneConfig) -> None:
    from safetensors.torch import load_file

    if cfg.method == "ptuning":
        from llm.adapters.ptuning import KEY_PREFIX

        state = {k.removeprefix(KEY_PREFIX): v for k, v in load_file(str(folder / "model.safetensors")).items()}
        trainable.load_state_dict(state)
    else:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainable, load_file(str(folder / "adapter_model.safetensors")))


# ----- the loop -------------------------------------------------------------------------------


def train_loop(
    model: Any,
    trainable: torch.nn.Module,
    tokenizer: Any,
    examples: list[Example],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: RunState,
    cfg: FinetuneConfig,
    *,
    total: int,
) -> Path:
    from tqdm.auto import tqdm

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.device
    bar = tqdm(total=total, initial=state.step, desc=f"finetune ({cfg.method})", unit="step", disable=not cfg.progress)
    last_saved: Path | None = None
    try:
        for batch_group in step_batches(examples, cfg, pad_id=pad_id, start_step=state.step):
            if state.step >= total:
                break
            loss = accumulate(model, batch_group, device=device)
            torch.nn.utils.clip_grad_norm_([p for p in trainable.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if state.step % cfg.save_every == 0 or state.step == total:
                last_saved = save_checkpoint(model, trainable, optimizer, scheduler, state, cfg)
    finally:
        bar.close()
    if last_saved is None:  # resumed at or past the end: the checkpoint it resumed from is the result
        last_saved = save_checkpoint(model, trainable, optimizer, scheduler, state, cfg)
    return last_saved


def step_batches(examples: list[Example], cfg: FinetuneConfig, *, pad_id: int, start_step: int) -> Any:
    """Groups of ``grad_accum`` micro-batches, epoch after epoch, skipping those of ``start_step`` steps."""
    skip = start_step * cfg.grad_accum
    group: list[dict[str, torch.Tensor]] = []
    epoch = 0
    while True:
        batches = micro_batches(examples, epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size, pack_rows=cfg.pack,
                                max_length=cfg.max_length, pad_id=pad_id)
        for batch in batches:
            if skip:
                skip -= 1
                continue
            group.append(batch)
            if len(group) == cfg.grad_accum:
                yield group
                group = []
        epoch += 1


def accumulate(model: Any, group: list[dict[str, torch.Tensor]], *, device: torch.device) -> float:
    """Forward/backward over one step's micro-batches; returns their mean loss."""
    total = 0.0
    for batch in group:
        inputs = {name: tensor.to(device) for name, tensor in batch.items()}
        loss = model(**inputs, use_cache=False).loss / len(group)
        loss.backward()
        total += float(loss.detach())
    return total


# ----- checkpoints ----------------------------------------------------------------------------


def save_checkpoint(
    model: Any, trainable: torch.nn.Module, optimizer: Any, scheduler: Any, state: RunState, cfg: FinetuneConfig
) -> Path:
    folder = Path(cfg.output) / f"checkpoint-{state.step}"
    folder.mkdir(parents=True, exist_ok=True)
    save_adapter(model, trainable, folder, cfg)
    torch.save(
        {
            "step": state.step,
            "losses": torch.tensor(state.losses, dtype=torch.float64),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        folder / STATE_FILE,
    )
    summary = {"step": state.step, "last_loss": state.losses[-1] if state.losses else None,
               "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def resume_folder(cfg: FinetuneConfig) -> Path | None:
    """The checkpoint to resume from: the named folder, or the newest ``checkpoint-N`` in the output."""
    if not cfg.resume:
        return None
    if cfg.resume != "latest":
        folder = Path(cfg.resume)
        if not (folder / STATE_FILE).is_file():
            raise BadInput(f"--resume {folder}: not a glmkb fine-tuning checkpoint (no {STATE_FILE})")
        return folder
    found = [(int(m[1]), p) for p in Path(cfg.output).glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))
             and (p / STATE_FILE).is_file()]
    if not found:
        raise BadInput(f"--resume: no checkpoint-N folder with {STATE_FILE} in {cfg.output}")
    return max(found)[1]


def restore(folder: Path, trainable: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: FinetuneConfig) -> RunState:
    saved = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    load_adapter_weights(trainable, folder, cfg)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return RunState(step=int(saved["step"]), losses=[float(x) for x in saved["losses"]])
