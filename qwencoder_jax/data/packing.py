"""Packing documents into training rows of a fixed length, with segment ids, positions and loss masks.

Design notes: docs/DATA.md, section `qwencoder_jax/data/packing.py`.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from qwencoder_jax.data.special_tokens import ENDOFTEXT, SPECIAL_TOKENS

PAD_ID = SPECIAL_TOKENS[ENDOFTEXT]  # padding positions carry EOS (never 0 = "!"); segment_ids = 0 marks them
ROW_FEATURES = ("input_ids", "targets", "segment_ids", "positions", "loss_mask", "source_ids")
_PACKED = ("input_ids", "targets", "loss_mask", "source_ids")


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    sequence_length: int = 8192
    num_packing_bins: int = 16  # rows packed together: more bins, less padding, more documents held in memory
    shuffle_rows: bool = True  # shuffle the rows of each packed group (deterministic for the seed)
    seed: int = 0

    def __post_init__(self):
        if self.sequence_length < 1 or self.num_packing_bins < 1:
            raise ValueError(f"PackingConfig needs positive sequence_length and num_packing_bins, got {self}")


def shift_document(document: dict[str, np.ndarray], sequence_length: int) -> dict[str, np.ndarray]:
    """{ids, loss_mask[, source_id]} of n tokens -> {input_ids, targets, loss_mask, source_ids} of n - 1 positions
    (the loss mask of a position is the mask of its target). Longer documents must have been cut by the sample
    builder."""
    ids, mask = document["ids"], document["loss_mask"]
    if len(ids) - 1 > sequence_length:
        raise ValueError(f"document of {len(ids)} tokens does not fit rows of {sequence_length} positions; build "
                         f"samples with max_tokens = sequence_length + 1 = {sequence_length + 1}")
    return {"input_ids": ids[:-1].astype(np.int32), "targets": ids[1:].astype(np.int32),
            "loss_mask": mask[1:].astype(np.int32),
            "source_ids": np.full(len(ids) - 1, int(document.get("source_id", 0)), np.int32)}


def _finish_row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = packed["input_ids_segment_ids"].astype(np.int32)
    return {"input_ids": packed["input_ids"].astype(np.int32), "targets": packed["targets"].astype(np.int32),
            "segment_ids": segment_ids, "positions": packed["input_ids_positions"].astype(np.int32),
            "loss_mask": (packed["loss_mask"] * (segment_ids > 0)).astype(np.int32),
            "source_ids": (packed["source_ids"] * (segment_ids > 0)).astype(np.int32)}


def pack_dataset(shifted: grain.IterDataset, config: PackingConfig) -> grain.IterDataset:
    """Shifted documents (output of shift_document) -> packed rows of config.sequence_length."""
    length = config.sequence_length
    packed = grain.experimental.FirstFitPackIterDataset(
        shifted, length_struct={name: length for name in _PACKED}, num_packing_bins=config.num_packing_bins,
        seed=config.seed, shuffle_bins=config.shuffle_rows,
        padding_struct={"input_ids": PAD_ID, "targets": PAD_ID, "loss_mask": 0, "source_ids": 0})
    return packed.map(_finish_row)
