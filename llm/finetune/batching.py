"""Micro-batches of tokenized conversations: padded (one conversation per row) or packed (several per row).

Padded rows are right-padded; padding has attention 0 and label -100. Packed rows hold
conversations back to back up to ``max_length`` with ``position_ids`` restarting at 0 for each, and
no attention mask: transformers' masking then keeps each conversation to itself (it reads the
restarts as packed sequences; docs/ADAPTERS.md), so no compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llm.finetune.data import IGNORE, Example


def epoch_order(count: int, *, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so a resumed run sees the same."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def padded_batches(examples: list[Example], order: list[int], *, batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        yield pad([examples[i] for i in order[start : start + batch_size]], pad_id=pad_id)


def pad(rows: list[Example], *, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask``/``labels`` ``[rows, longest]``, right-padded."""
    width = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row.input_ids)
        ids[r, :n] = torch.tensor(row.input_ids)
        labels[r, :n] = torch.tensor(row.labels)
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batches(
    examples: list[Example], order: list[int], *, batch_size: int, max_length: int, pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Rows filled greedily in ``order`` up to ``max_length`` tokens, ``batch_size`` rows per batch."""
    rows: list[list[Example]] = []
    current: list[Example] = []
    used = 0
    for i in order:
        example = examples[i]
        if current and used + len(example.input_ids) > max_length:
            rows.append(current)
            current, used = [], 0
        current.append(example)
        used += len(example.input_ids)
    if current:
        rows.append(current)
    for start in range(0, len(rows), batch_size):
        yield pack(rows[start : start + batch_size], pad_id=pad_id)


def pack(rows: list[list[Example]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``/``position_ids``/``labels``; padding at the end of a row is its own (untrained) sequence."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids)
            ids[r, at : at + n] = torch.tensor(example.input_ids)
            labels[r, at : at + n] = torch.tensor(example.labels)
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def micro_batches(
    examples: list[Example],
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    pack_rows: bool,
    max_length: int,
    pad_id: int,
) -> list[dict[str, torch.Tensor]]:
    """One epoch's micro-batches, in order."""
    order = epoch_order(len(examples), seed=seed, epoch=epoch)
    if pack_rows:
        return list(packed_batches(examples, order, batch_size=batch_size, max_length=max_length, pad_id=pad_id))
    return list(padded_batches(examples, order, batch_size=batch_size, pad_id=pad_id))
