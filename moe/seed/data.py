"""The seed's data contract: ``load_jsonl`` and ``TimeSeriesDataset`` (one window per series).

Strict by design: a bad line raises ``ValueError`` naming the file and line. The tolerant,
recording ingest that production uses lives in ``storage.ingest``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["load_jsonl", "read_records", "TimeSeriesDataset"]


def read_records(path: str | Path) -> tuple[list[list[float]], list[str | None]]:
    """Each line's ``sequence`` and its optional ``freq`` (None when absent), in file order."""
    sequences: list[list[float]] = []
    freqs: list[str | None] = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sequence = record["sequence"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{line_number}: field 'sequence': {error}") from error
            if not isinstance(sequence, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in sequence
            ):
                raise ValueError(
                    f"{path}:{line_number}: field 'sequence' must be a list of numbers"
                )
            freq = record.get("freq")
            if freq is not None and not isinstance(freq, str):
                raise ValueError(f"{path}:{line_number}: field 'freq' must be a string")
            sequences.append([float(v) for v in sequence])
            freqs.append(freq)
    return sequences, freqs


def load_jsonl(path: str | Path) -> list[list[float]]:
    """Read ``{"sequence": [floats...]}`` lines; return the sequences in file order."""
    return read_records(path)[0]


class TimeSeriesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One window per series, exactly as the seed: ``inp = seq[:L]``, ``tgt = seq[L:L+H]``.

    Series shorter than ``input_length + pred_length`` are left out. Items are float32
    tensors of shapes ``(input_length,)`` and ``(pred_length,)``.
    """

    def __init__(
        self, sequences: Sequence[Sequence[float]], input_length: int, pred_length: int
    ) -> None:
        if input_length < 1 or pred_length < 1:
            raise ValueError(
                f"input_length and pred_length must be >= 1, got {input_length}, {pred_length}"
            )
        self.input_length = input_length
        self.pred_length = pred_length
        need = input_length + pred_length
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = [
            (
                torch.tensor(seq[:input_length], dtype=torch.float32),
                torch.tensor(seq[input_length:need], dtype=torch.float32),
            )
            for seq in sequences
            if len(seq) >= need
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pairs[index]
