"""Packing: segments never attend across documents, loss masks at boundaries, nothing lost but what is counted."""

import grain
import numpy as np
import pytest

from qwencoder_jax.data import packing

PACKED_FEATURES = ("input_ids", "targets", "loss_mask", "source_ids")


def pack_rows(documents: list[dict[str, np.ndarray]], sequence_length: int) -> dict[str, np.ndarray]:
    """Reference packer: shifted documents in order, next-fit (a new row when the next one does not fit).

    Vectorised per row: one concatenate per feature, no per-token Python.
    """
    rows: list[list[dict]] = [[]]
    used = 0
    for document in documents:
        size = len(document["input_ids"])
        if used + size > sequence_length and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(document)
        used += size
    out = {name: np.zeros((len(rows), sequence_length), np.int32) for name in packing.ROW_FEATURES}
    out["input_ids"][:] = packing.PAD_ID
    out["targets"][:] = packing.PAD_ID
    for row_index, row in enumerate(rows):
        if not row:
            continue
        sizes = np.asarray([len(d["input_ids"]) for d in row])
        total = int(sizes.sum())
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        for name in PACKED_FEATURES:
            out[name][row_index, :total] = np.concatenate(
                [d[name] if name in d else np.zeros(len(d["input_ids"]), np.int32) for d in row])
        out["segment_ids"][row_index, :total] = np.repeat(np.arange(1, len(row) + 1), sizes)
        out["positions"][row_index, :total] = np.arange(total) - starts
    return out


LENGTH = 64


def make_documents(count=120, seed=0):
    """Documents whose ids say (document, position): id = 1000 * document + position. Masks vary (SFT-like)."""
    rng = np.random.default_rng(seed)
    documents = []
    for number in range(count):
        size = int(rng.integers(2, LENGTH + 2))  # up to LENGTH + 1 tokens = LENGTH positions after the shift
        ids = 1000 * (number + 1) + np.arange(size)
        mask = (rng.random(size) < 0.7).astype(np.int32)
        documents.append({"ids": ids.astype(np.int32), "loss_mask": mask})
    return documents


def packed_rows(documents, num_packing_bins=4, shuffle_rows=True):
    config = packing.PackingConfig(sequence_length=LENGTH, num_packing_bins=num_packing_bins, seed=3,
                                   shuffle_rows=shuffle_rows)
    shifted = grain.MapDataset.source(documents).map(lambda d: packing.shift_document(d, LENGTH)).to_iter_dataset()
    return list(packing.pack_dataset(shifted, config))


def split_segments(row):
    """{segment id: positions} of one row."""
    return {int(s): np.flatnonzero(row["segment_ids"] == s) for s in np.unique(row["segment_ids"]) if s > 0}


@pytest.mark.parametrize("rows_of", ["grain", "reference"])
def test_rows_are_documents_concatenated(rows_of):
    documents = make_documents()
    if rows_of == "grain":
        rows = packed_rows(documents)
    else:
        shifted = [packing.shift_document(d, LENGTH) for d in documents]
        batch = pack_rows(shifted, LENGTH)
        rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]
    seen = {}
    for row in rows:
        assert set(row) == set(packing.ROW_FEATURES)
        assert all(row[name].shape == (LENGTH,) and row[name].dtype == np.int32 for name in packing.ROW_FEATURES)
        padding = row["segment_ids"] == 0
        assert not padding.any() or padding[np.argmax(padding):].all(), "padding only at the end of a row"
        assert (row["loss_mask"][padding] == 0).all() and (row["input_ids"][padding] == packing.PAD_ID).all()
        for segment, where in split_segments(row).items():
            assert (np.diff(where) == 1).all(), "a segment is contiguous"
            np.testing.assert_array_equal(row["positions"][where], np.arange(len(where)))
            number = row["input_ids"][where[0]] // 1000 - 1
            document = documents[number]
            # input_ids + the last target = the whole document: nothing lost, nothing from another document
            np.testing.assert_array_equal(np.append(row["input_ids"][where], row["targets"][where[-1]]),
                                          document["ids"])
            # the loss mask of a position is its target's mask: boundary positions included
            np.testing.assert_array_equal(row["loss_mask"][where], document["loss_mask"][1:])
            assert number not in seen
            seen[number] = True
    assert len(seen) == len(documents), "every document is packed exactly once"
    assert sum(int((r["segment_ids"] > 0).sum()) for r in rows) == sum(len(d["ids"]) - 1 for d in documents)


def test_attention_never_crosses_documents():
    rows = packed_rows(make_documents(seed=1))
    for row in rows:
        segment_ids = row["segment_ids"]
        # The mask a model builds from segment ids: causal and same (non-padding) segment.
        allowed = (segment_ids[:, None] == segment_ids[None, :]) & (segment_ids[:, None] > 0)
        allowed &= np.tril(np.ones((LENGTH, LENGTH), bool))
        document_of = np.where(segment_ids > 0, row["input_ids"] // 1000, -1)
        query, key = np.nonzero(allowed)
        assert (document_of[query] == document_of[key]).all()
        # positions restart at every document: RoPE never sees a predecessor's offset
        starts = np.flatnonzero(np.diff(np.concatenate([[0], segment_ids])) != 0)
        assert (row["positions"][starts[segment_ids[starts] > 0]] == 0).all()


def test_first_token_of_a_document_is_never_a_target():
    documents = make_documents(seed=2)
    first_ids = {int(d["ids"][0]) for d in documents}
    for row in packed_rows(documents):
        trained = row["targets"][row["loss_mask"] > 0]
        assert not first_ids & set(trained.tolist())


def test_grain_packing_is_deterministic_and_fills_rows():
    documents = make_documents(count=200, seed=4)
    first = packed_rows(documents, num_packing_bins=8)
    second = packed_rows(documents, num_packing_bins=8)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first, second) for k in a)
    fill = np.mean([(r["segment_ids"] > 0).mean() for r in first])
    assert fill > 0.75, f"first-fit over 8 bins should fill rows well, got {fill:.2f}"


def test_document_longer_than_row_is_an_error_naming_the_fix():
    with pytest.raises(ValueError, match="max_tokens"):
        packing.shift_document({"ids": np.arange(LENGTH + 2), "loss_mask": np.ones(LENGTH + 2)}, LENGTH)
