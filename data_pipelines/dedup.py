"""Exact dedup (normalised content hash) and near dedup (MinHash LSH), vectorised with numpy, plus one small
XLA kernel (jax.jit) for the (shingles x permutations) MinHash step.

Design notes: docs/DATA.md, section `data_pipelines/dedup.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
from typing import Iterable, Sequence

import numpy as np

EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a text without words; real minima are <= 2^32 - 2
_WORD_BYTES = np.zeros(256, dtype=bool)
for _chars in (range(48, 58), range(65, 91), range(97, 123), [95], range(128, 256)):
    _WORD_BYTES[list(_chars)] = True
_TOKEN_BASE = np.uint64(1099511628211)  # odd, so it is invertible modulo 2^64


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
    num_permutations: int = 256
    shingle_size: int = 5  # words per shingle
    threshold: float = 0.7  # Jaccard similarity above which two documents are near duplicates
    false_positive_weight: float = 0.5
    false_negative_weight: float = 0.5
    seed: int = 1
    verify_candidates: bool = True  # drop LSH candidates whose signature agreement is below the threshold
    lowercase: bool = False
    batch_bytes: int = 1 << 20  # documents are hashed in batches of about this many bytes
    block_shingles: int = 512  # longest piece of a document the MinHash kernel takes at once (at most 512)


# ---------------------------------------------------------------- LSH parameters

def _integrate(function, low: float, high: float, points: int = 1001) -> float:
    grid = np.linspace(low, high, points)
    values = function(grid)
    return float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2.0)


@functools.lru_cache(maxsize=64)
def optimal_bands_rows(threshold: float, num_permutations: int, false_positive_weight: float = 0.5,
                       false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_permutations minimising the weighted area under the LSH
    S-curve below the threshold (false positives) and above it (false negatives)."""
    best, best_error = (1, 1), float("inf")
    for bands in range(1, num_permutations + 1):
        for rows in range(1, num_permutations // bands + 1):
            false_positive = _integrate(lambda s: 1 - (1 - s ** rows) ** bands, 0.0, threshold)
            false_negative = _integrate(lambda s: (1 - s ** rows) ** bands, threshold, 1.0)
            error = false_positive_weight * false_positive + false_negative_weight * false_negative
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


# ---------------------------------------------------------------- hashing

@functools.lru_cache(maxsize=8)
def _permutations(num_permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the hash family h_i(x) = (a_i * x + b_i) mod 2^32: a_i random odd, b_i random, uint32."""
    generator = np.random.default_rng(seed)
    a = generator.integers(0, 1 << 32, size=num_permutations, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = generator.integers(0, 1 << 32, size=num_permutations, dtype=np.uint64).astype(np.uint32)
    return a, b


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial hashes' low-entropy bits over all 64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


WORD_PATTERN = re.compile(r"[A-Za-z0-9_\u0080-\U0010FFFF]+")  # the same words as _WORD_BYTES, on str


@functools.lru_cache(maxsize=32)
def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """B^(j+1) and B^-(j+1) mod 2^64 for j < length (cached: the cumulative products are sequential scans)."""
    with np.errstate(over="ignore"):
        inverse = np.uint64(pow(int(_TOKEN_BASE), -1, 1 << 64))
        return (np.cumprod(np.full(length, _TOKEN_BASE, dtype=np.uint64)),
                np.cumprod(np.full(length, inverse, dtype=np.uint64)))


def _is_word_byte(data: np.ndarray) -> np.ndarray:
    """_WORD_BYTES[data] with uint8 comparisons (several times faster than the table lookup)."""
    return ((data >= 128) | ((data | np.uint8(32)) - np.uint8(97) < 26) | (data - np.uint8(48) < 10)
            | (data == 95))


def token_hashes(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every word of every byte string and the index of its string; words are runs of
    [A-Za-z0-9_] and non-ASCII bytes. One prefix sum over the concatenated batch hashes all words at once."""
    data = np.frombuffer(b"\0".join(encoded) + b"\0", dtype=np.uint8)  # NUL separates documents
    doc_starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])[: len(encoded)]
    is_word = np.zeros(len(data) + 2, dtype=np.int8)
    is_word[1:-1] = _is_word_byte(data)
    boundaries = np.flatnonzero(np.diff(is_word) != 0)  # alternately a word's start and its end
    starts, ends = boundaries[0::2], boundaries[1::2]
    # powers are cached in sizes rounded up to a power of two so that batches of similar size share them
    powers, inverse_powers = _powers(1 << max(int(len(data) - 1).bit_length(), 10))
    with np.errstate(over="ignore"):
        terms = data.astype(np.uint64)
        terms += np.uint64(1)
        terms *= powers[: len(data)]
        prefix = np.empty(len(data) + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum(terms, out=prefix[1:])
        # documents are contiguous runs of tokens: count each document's tokens, then repeat its index
        tokens_before = np.append(np.searchsorted(starts, doc_starts), len(starts))
        token_doc = np.repeat(np.arange(len(encoded)), np.diff(tokens_before))
        return _mix64((prefix[ends] - prefix[starts]) * inverse_powers[starts]), token_doc


# odd multipliers of the 5 (or shingle_size) word hashes of a shingle: position-dependent, so word order counts
_SHINGLE_MULTIPLIERS = _mix64(np.arange(101, 101 + 64, dtype=np.uint64)) | np.uint64(1)


def shingle_hashes(texts: Sequence[str], shingle_size: int = 5, lowercase: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes (uint32) of every word shingle of every text, and each text's [start, end) offsets.

    A shingle's hash is mix64(sum_k word_hash[i + k] * c_k) >> 32 with fixed odd c_k (a linear combination of
    64-bit word hashes, so no shingle string is built). A text with fewer words than `shingle_size` has one
    shingle of all its words; a text without words has none.
    """
    encoded = [(text.lower() if lowercase else text).encode("utf-8", "surrogatepass") for text in texts]
    token_hash, token_doc = token_hashes(encoded)
    n_tokens = len(token_hash)
    tokens_per_doc = np.bincount(token_doc, minlength=len(encoded))
    counts = np.where(tokens_per_doc >= shingle_size, tokens_per_doc - (shingle_size - 1),
                      np.minimum(tokens_per_doc, 1))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    if n_tokens == 0:
        return np.zeros(0, dtype=np.uint32), offsets
    multipliers = _SHINGLE_MULTIPLIERS[:shingle_size]
    padded = np.concatenate((token_hash, np.zeros(shingle_size - 1, dtype=np.uint64)))
    with np.errstate(over="ignore"):
        combined = padded[:n_tokens] * multipliers[0]
        for offset in range(1, shingle_size):
            combined += padded[offset:offset + n_tokens] * multipliers[offset]
        # full shingles: the last word is in the same document; documents are contiguous runs of tokens
        full = np.zeros(n_tokens, dtype=bool)
        full[: max(n_tokens - shingle_size + 1, 0)] = \
            token_doc[shingle_size - 1:] == token_doc[: max(n_tokens - shingle_size + 1, 0)]
        first_token = np.concatenate(([0], np.cumsum(tokens_per_doc)[:-1]))
        short = np.flatnonzero((tokens_per_doc > 0) & (tokens_per_doc < shingle_size))
        keep = full
        if len(short):  # one shingle of all the words of each short text, at its first token
            starts, lengths = first_token[short], tokens_per_doc[short]
            value = np.zeros(len(short), dtype=np.uint64)
            for offset in range(shingle_size - 1):
                value += np.where(offset < lengths, padded[starts + offset] * multipliers[offset], np.uint64(0))
            combined[starts] = value
            keep[starts] = True
        shingles = (_mix64(combined[keep]) >> np.uint64(32)).astype(np.uint32)
    return shingles, offsets


_TILE_WIDTH = 16  # shingles per tile row: the kernel takes the minimum over a row, then over rows
_TILE_ROWS = 32  # rows per tile, so one piece of a document holds at most 512 shingles
_TILE_DOCS = 128  # document pieces per kernel call (a 256 KB tile; bigger tiles measured slightly slower)
_FORKED_AFTER_JAX = False  # set in a child forked from a process whose JAX runtime was running


def _after_fork_in_child() -> None:
    # JAX's thread pools do not survive fork(): a child of a process that started them must not use JAX.
    # The backend table is read without xla_bridge's lock, which a thread that fork() did not copy may hold;
    # if it cannot be read, any imported JAX counts as started.
    global _FORKED_AFTER_JAX
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None:
        backends = getattr(bridge, "_backends", None)
        _FORKED_AFTER_JAX = _FORKED_AFTER_JAX or not isinstance(backends, dict) or len(backends) > 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.lru_cache(maxsize=1)
def _jax_kernel():
    """jit(tiles (rows, docs, width) uint32, used rows, a, b) -> (docs, permutations) uint32 minima of
    a * x + b (mod 2^32) over the first `used rows` rows; None without JAX. XLA fuses multiply, add and min into
    one loop that never writes a (shingles x permutations) array: about 0.07 ns per shingle x permutation."""
    try:  # jax is optional here: without it the numpy kernel runs
        import jax
        import jax.numpy as jnp
    except ImportError:  # pragma: no cover - jax is a dependency of this repository
        return None

    def kernel(tiles, used_rows, a, b):
        def row_minimum(row, current):
            x = jax.lax.dynamic_index_in_dim(tiles, row, 0, keepdims=False)  # (docs, width)
            return jnp.minimum(current, jnp.min(x[:, :, None] * a + b, axis=1))
        initial = jnp.full((tiles.shape[1], a.shape[0]), 0xFFFFFFFF, dtype=jnp.uint32)
        return jax.lax.fori_loop(0, used_rows, row_minimum, initial)

    return jax.jit(kernel)


def _numpy_kernel(tiles: np.ndarray, used_rows: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The same values as the JAX kernel (integer arithmetic: bit-identical), slower."""
    result = np.full((tiles.shape[1], len(a)), 0xFFFFFFFF, dtype=np.uint32)
    values = np.empty((tiles.shape[1], tiles.shape[2], len(a)), dtype=np.uint32)
    for row in range(used_rows):
        np.multiply(tiles[row][:, :, None], a, out=values)
        values += b
        np.minimum(result, values.min(axis=1), out=result)
    return result


def _signatures_of_shingles(shingles: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
                            piece_shingles: int = _TILE_ROWS * _TILE_WIDTH) -> np.ndarray:
    """(documents, permutations) minima of h_i over each document's shingles; EMPTY for documents without any.

    Documents are cut into pieces of at most `piece_shingles` shingles, pieces are sorted by length and packed
    128 at a time into (rows, 128, 16) tiles, each piece padded by repeating its last shingle (which leaves its
    minimum unchanged); the kernel loops over the rows the longest piece of the tile needs."""
    num_docs = len(offsets) - 1
    result = np.full((num_docs, len(a)), EMPTY, dtype=np.uint32)
    lengths = np.diff(offsets)
    piece_shingles = max(1, min(piece_shingles, _TILE_ROWS * _TILE_WIDTH))
    pieces_per_doc = -(-lengths // piece_shingles)
    piece_doc = np.repeat(np.arange(num_docs), pieces_per_doc)
    if len(piece_doc) == 0:
        return result
    first_piece = np.concatenate(([0], np.cumsum(pieces_per_doc)[:-1]))
    piece_index = np.arange(len(piece_doc)) - first_piece[piece_doc]
    piece_start = offsets[piece_doc] + piece_index * piece_shingles
    piece_length = np.minimum(offsets[piece_doc + 1] - piece_start, piece_shingles)
    kernel = None if _FORKED_AFTER_JAX else _jax_kernel()
    order = np.argsort(piece_length, kind="stable")
    piece_signatures = np.empty((len(piece_doc), len(a)), dtype=np.uint32)
    tiles = np.zeros((_TILE_ROWS, _TILE_DOCS, _TILE_WIDTH), dtype=np.uint32)
    for first in range(0, len(order), _TILE_DOCS):
        chosen = order[first:first + _TILE_DOCS]
        padded = np.concatenate((chosen, np.full(_TILE_DOCS - len(chosen), chosen[-1])))
        rows = -(-int(piece_length[padded].max()) // _TILE_WIDTH)
        columns = np.minimum(np.arange(rows * _TILE_WIDTH), piece_length[padded][:, None] - 1)
        values = shingles[piece_start[padded][:, None] + columns]  # (docs, rows * width)
        tiles[:rows] = values.reshape(_TILE_DOCS, rows, _TILE_WIDTH).transpose(1, 0, 2)
        minima = np.asarray(kernel(tiles, np.int32(rows), a, b)) if kernel is not None else \
            _numpy_kernel(tiles, rows, a, b)
        piece_signatures[chosen] = minima[: len(chosen)]
    has_pieces = pieces_per_doc > 0
    result[has_pieces] = piece_signatures[first_piece[has_pieces]]
    for extra in range(1, int(pieces_per_doc.max())):  # documents longer than one piece
        docs = np.flatnonzero(pieces_per_doc > extra)
        result[docs] = np.minimum(result[docs], piece_signatures[first_piece[docs] + extra])
    nonempty = lengths > 0
    # a real minimum never equals EMPTY: 2^32 - 1 is folded onto 2^32 - 2
    result[nonempty] = np.minimum(result[nonempty], np.uint32(EMPTY - 1))
    return result


def minhash_signatures(texts: Sequence[str], config: MinHashConfig = MinHashConfig()) -> np.ndarray:
    """(len(texts), num_permutations) uint32 signatures; rows of texts without words are all EMPTY."""
    a, b = _permutations(config.num_permutations, config.seed)
    signatures = np.full((len(texts), config.num_permutations), EMPTY, dtype=np.uint32)
    batch, batch_bytes = [], 0
    for index, text in enumerate(texts):
        batch.append(index)
        batch_bytes += len(text)
        if batch_bytes >= config.batch_bytes or index == len(texts) - 1:
            shingles, offsets = shingle_hashes([texts[i] for i in batch], config.shingle_size, config.lowercase)
            signatures[batch] = _signatures_of_shingles(shingles, offsets, a, b, config.block_shingles)
            batch, batch_bytes = [], 0
    return signatures


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) uint64 keys; equal keys <=> (with overwhelming probability) equal band rows.

    Multilinear hash: sum_j value_j * m_j mod 2^64 with fixed random 64-bit m_j, so two different bands of
    32-bit values collide with probability <= 2^-32 (a collision only adds a candidate, which verification
    drops); the sums are then mixed."""
    with np.errstate(over="ignore"):
        banded = signatures[:, : bands * rows].reshape(len(signatures), bands, rows)
        multipliers = _mix64(np.arange(1, bands * rows + 1, dtype=np.uint64)).reshape(bands, rows)
        keys = np.zeros((len(signatures), bands), dtype=np.uint64)
        for row in range(rows):
            keys += banded[:, :, row].astype(np.uint64) * multipliers[:, row]
        return _mix64(keys + np.arange(bands, dtype=np.uint64))


def estimated_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    return float(np.mean(signature_a == signature_b))


# ---------------------------------------------------------------- clustering

class UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, item):
        parent = self.parent.setdefault(item, item)
        if parent != item:
            root = self.find(parent)
            self.parent[item] = root
            return root
        return item

    def union(self, first, second) -> None:
        root_first, root_second = self.find(first), self.find(second)
        if root_first != root_second:  # the smaller root wins, so the result does not depend on edge order
            low, high = sorted((root_first, root_second))
            self.parent[high] = low

    def clusters(self) -> list[list]:
        groups: dict = {}
        for item in self.parent:
            groups.setdefault(self.find(item), []).append(item)
        return sorted(sorted(members) for members in groups.values() if len(members) > 1)


def candidate_pairs_in_bucket(ids: Sequence[str], signatures: Sequence[np.ndarray] | None, threshold: float,
                              max_pairwise: int = 64, already_checked: set | None = None) -> list[tuple[str, str]]:
    """Edges among the documents sharing one band key; pairwise for small buckets, a star for large ones.
    With signatures, an edge needs signature agreement >= threshold. Pairs in `already_checked` (a pair
    shares many bands) are skipped, and the pairs checked here are added to it."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    if len(order) <= max_pairwise:
        pairs = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    else:
        pairs = [(order[0], other) for other in order[1:]]
    if already_checked is not None:
        pairs = [(i, j) for i, j in pairs if (ids[i], ids[j]) not in already_checked]
        already_checked.update((ids[i], ids[j]) for i, j in pairs)
    if signatures is None:
        return [(ids[i], ids[j]) for i, j in pairs]
    return [(ids[i], ids[j]) for i, j in pairs if estimated_jaccard(signatures[i], signatures[j]) >= threshold]


def _bucket_pairs(keys: np.ndarray, ranks: np.ndarray, max_pairwise: int = 64) -> np.ndarray:
    """Distinct candidate pairs, as codes low_rank * n + high_rank, of the documents whose `keys` (documents,
    bands) agree in some band: all pairs of a bucket of up to `max_pairwise` documents, a star from the
    smallest rank for larger buckets (the same edges as candidate_pairs_in_bucket, vectorised over buckets)."""
    n = int(ranks.max()) + 1 if len(ranks) else 0
    codes = [np.zeros(0, dtype=np.int64)]

    def add(first: np.ndarray, second: np.ndarray) -> None:
        codes.append(np.minimum(first, second) * n + np.maximum(first, second))

    for band in range(keys.shape[1]):
        column = keys[:, band]
        order = np.argsort(column, kind="stable")
        sorted_keys, members = column[order], ranks[order]
        if len(sorted_keys) < 2:
            continue
        starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        sizes = np.diff(np.append(starts, len(sorted_keys)))
        if sizes.max() < 2:
            continue
        run_start, run_size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
        small = (run_size > 1) & (run_size <= max_pairwise)
        largest_small = int(run_size[small].max()) if small.any() else 1
        for distance in range(1, largest_small):  # members `distance` apart in one small bucket
            same = small[:-distance] & (run_start[:-distance] == run_start[distance:])
            add(members[:-distance][same], members[distance:][same])
        for start, size in zip(starts[sizes > max_pairwise].tolist(), sizes[sizes > max_pairwise].tolist()):
            bucket = members[start:start + size]
            centre = bucket.min()
            others = bucket[bucket != centre]
            add(np.full(len(others), centre), others)
    return np.unique(np.concatenate(codes))


def near_duplicate_clusters(ids: Sequence[str], signatures: np.ndarray, config: MinHashConfig = MinHashConfig()
                            ) -> tuple[list[list[str]], int]:
    """Clusters (sorted lists of ids, size >= 2) and the number of distinct LSH candidate pairs (before
    verification)."""
    bands, rows = optimal_bands_rows(config.threshold, config.num_permutations, config.false_positive_weight,
                                     config.false_negative_weight)
    with_words = np.flatnonzero(signatures[:, 0] != EMPTY)
    by_id = np.array(sorted(with_words.tolist(), key=ids.__getitem__), dtype=np.int64)  # rank -> document
    ranks = np.empty(len(signatures), dtype=np.int64)
    ranks[by_id] = np.arange(len(by_id))
    keys = band_keys(signatures[with_words], bands, rows)
    codes = _bucket_pairs(keys, ranks[with_words])
    first, second = by_id[codes // max(len(by_id), 1)], by_id[codes % max(len(by_id), 1)]
    if config.verify_candidates:  # signature agreement, in blocks of pairs
        agree = np.concatenate([np.zeros(0, dtype=bool)] + [
            (signatures[first[i:i + 65536]] == signatures[second[i:i + 65536]]).mean(axis=1) >= config.threshold
            for i in range(0, len(first), 65536)])
        first, second = first[agree], second[agree]
    union_find = UnionFind()
    for low, high in zip(first.tolist(), second.tolist()):
        union_find.union(ids[low], ids[high])
    return union_find.clusters(), len(codes)


def representatives(clusters: Iterable[list[str]]) -> dict[str, str]:
    """id -> representative id for every non-representative member (the smallest id of a cluster is kept)."""
    removed = {}
    for members in clusters:
        keeper = min(members)
        removed.update({member: keeper for member in members if member != keeper})
    return removed


def cluster_report(clusters: list[list[str]]) -> list[dict]:
    return [{"representative": min(members), "size": len(members), "members": sorted(members)}
            for members in sorted(clusters, key=lambda m: (-len(m), min(m)))]


def write_cluster_report(path: str, clusters: list[list[str]]) -> None:
    with open(path, "w") as handle:
        for row in cluster_report(clusters):
            handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- exact dedup

_WHITESPACE = re.compile(r"\s+")


def content_hash(text: str) -> str:
    """Hash of the text with whitespace runs collapsed, so re-indented or re-wrapped copies match."""
    normalised = _WHITESPACE.sub(" ", text).strip()
    return hashlib.sha256(normalised.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def exact_duplicates(ids: Sequence[str], hashes: Sequence[str]) -> dict[str, str]:
    """id -> kept id for every document whose content hash an earlier (smaller) id already has."""
    keeper: dict[str, str] = {}
    for doc_id, digest in sorted(zip(ids, hashes)):
        keeper.setdefault(digest, doc_id)
    return {doc_id: keeper[digest] for doc_id, digest in zip(ids, hashes) if keeper[digest] != doc_id}


def exact_jaccard(text_a: str, text_b: str, shingle_size: int = 5, lowercase: bool = False) -> float:
    """Reference Jaccard of two texts' shingle sets (same tokenisation and shingling as the MinHash)."""
    shingles, offsets = shingle_hashes([text_a, text_b], shingle_size, lowercase)
    set_a, set_b = set(shingles[offsets[0]:offsets[1]].tolist()), set(shingles[offsets[1]:offsets[2]].tolist())
    if not set_a and not set_b:
        return 1.0
    return len(set_a & set_b) / len(set_a | set_b)
