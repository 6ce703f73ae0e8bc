"""Exact dedup (normalised content hash) and near dedup (MinHash LSH), vectorised with numpy.

Near dedup, end to end for a batch of documents:
  1. tokens: the batch's UTF-8 bytes are concatenated; word characters ([A-Za-z0-9_] and every non-ASCII byte)
     form tokens, and each token's polynomial hash comes from one prefix sum over the whole batch;
  2. shingles: 5 consecutive tokens of one document, combined and mixed into a 31-bit value x < p;
  3. MinHash: h_i(x) = (a_i * x + b_i) mod (2^31 - 1) for 256 (a_i, b_i) drawn uniformly from the field,
     computed for blocks of shingles at once in uint64 (a*x + b < 2^62 never overflows) with the Mersenne
     reduction (y & p) + (y >> 31) and one conditional subtraction, reduced by document; signatures are uint32.
     (A 61-bit prime would need a < 2^32 to avoid overflow, and then a*x mod p wraps at most 8 times over all
     x: h is nearly monotone in x and the 256 permutations all pick the same minimum. So: a 31-bit prime.)
  4. LSH: b bands of r rows, (b, r) chosen from the threshold by minimising weighted false-positive +
     false-negative probability; documents sharing a band key are candidates; candidates whose signature
     agreement is below the threshold are dropped (optional); union-find gives clusters; the smallest id of
     each cluster is kept.
Steps 1-3 and the band keys are per document (Map on Beam); grouping by band key and the union-find are the
global steps.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from typing import Iterable, Sequence

import numpy as np

MERSENNE_31 = np.uint64((1 << 31) - 1)
EMPTY = np.uint32((1 << 31) - 1)  # signature value of a text without words; hash values are < 2^31 - 1
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
    block_shingles: int = 128  # shingles per (permutations x block) uint64 block; 24-128 measured alike, 512+ slower


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
    generator = np.random.default_rng(seed)
    a = generator.integers(1, int(MERSENNE_31), size=num_permutations, dtype=np.uint64)
    b = generator.integers(0, int(MERSENNE_31), size=num_permutations, dtype=np.uint64)
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


def token_hashes(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every word of every byte string and the index of its string; words are runs of
    [A-Za-z0-9_] and non-ASCII bytes. One prefix sum over the concatenated batch hashes all words at once."""
    data = np.frombuffer(b"\0".join(encoded) + b"\0", dtype=np.uint8)  # NUL separates documents
    doc_starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])
    is_word = np.zeros(len(data) + 2, dtype=np.int8)
    is_word[1:-1] = _WORD_BYTES[data]
    edges = np.diff(is_word)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    # powers are cached in sizes rounded up to a power of two so that batches of similar size share them
    powers, inverse_powers = _powers(1 << max(int(len(data) - 1).bit_length(), 10))
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([np.uint64(0)],
                                 np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: len(data)])))
        token_doc = np.searchsorted(doc_starts, starts, side="right") - 1
        return _mix64((prefix[ends] - prefix[starts]) * inverse_powers[starts]), token_doc


def shingle_hashes(texts: Sequence[str], shingle_size: int = 5, lowercase: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """31-bit hashes (in uint64) of every word shingle of every text, and each text's [start, end) offsets.

    A text with fewer words than `shingle_size` has one shingle of all its words; a text without words has none.
    """
    encoded = [(text.lower() if lowercase else text).encode("utf-8", "surrogatepass") for text in texts]
    token_hash, token_doc = token_hashes(encoded)
    with np.errstate(over="ignore"):
        n_tokens = len(token_hash)
        positions = np.arange(n_tokens)
        combined = np.zeros(n_tokens, dtype=np.uint64)
        for offset in range(shingle_size):
            index = np.minimum(positions + offset, n_tokens - 1) if n_tokens else positions
            same_doc = (token_doc[index] == token_doc) & (positions + offset < n_tokens)
            term = _mix64(token_hash[index] + np.uint64(offset + 1)) if n_tokens else combined
            combined = combined + np.where(same_doc, term, np.uint64(0))
        shingles = _mix64(combined) >> np.uint64(33)
    tokens_per_doc = np.bincount(token_doc, minlength=len(encoded))
    first_token = np.concatenate(([0], np.cumsum(tokens_per_doc)[:-1]))
    last = np.minimum(positions + shingle_size - 1, max(n_tokens - 1, 0))
    full = (token_doc[last] == token_doc) & (positions + shingle_size - 1 < n_tokens) if n_tokens else positions > 0
    short_doc_first = (positions == first_token[token_doc]) & (tokens_per_doc[token_doc] < shingle_size) \
        if n_tokens else full
    keep = full | short_doc_first
    kept_doc = token_doc[keep]
    counts = np.bincount(kept_doc, minlength=len(encoded))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return shingles[keep], offsets


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


def _signatures_of_shingles(shingles: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
                            block_shingles: int) -> np.ndarray:
    num_docs = len(offsets) - 1
    result = np.full((num_docs, len(a)), EMPTY, dtype=np.uint32)
    shift, prime = np.uint64(31), MERSENNE_31
    a_column, b_column = a[:, None], b[:, None]
    # preallocated: a fresh 512 KB array per block would be mmap'ed and page-faulted every time
    buffer = np.empty((len(a), block_shingles), dtype=np.uint64)
    carry_buffer = np.empty_like(buffer)
    doc = 0
    while doc < num_docs:
        # a block of whole documents, so np.minimum.reduceat can reduce it by document in one call
        last = int(np.searchsorted(offsets, offsets[doc] + block_shingles, side="right")) - 1
        last = min(max(last, doc + 1), num_docs)
        low, high = int(offsets[doc]), int(offsets[last])
        if high > low:
            # (permutations, shingles) layout: every row is a contiguous run times one scalar, and reduceat
            # runs along the contiguous axis (about 25% faster here than the transposed layout)
            size = high - low
            fits = size <= block_shingles
            values = buffer[:, :size] if fits else np.empty((len(a), size), dtype=np.uint64)
            carry = carry_buffer[:, :size] if fits else np.empty_like(values)
            np.multiply(a_column, shingles[None, low:high], out=values)
            values += b_column
            np.right_shift(values, shift, out=carry)
            values &= prime
            values += carry  # now in [0, 2p]: congruent to (a*x+b) mod p
            np.subtract(values, prime, out=carry)  # wraps to a huge value where values < p
            np.minimum(values, carry, out=values)
            nonempty = np.flatnonzero(offsets[doc + 1:last + 1] > offsets[doc:last])
            reduced = np.minimum.reduceat(values, offsets[doc:last][nonempty] - low, axis=1)
            result[doc + nonempty] = reduced.T
        doc = last
    return result


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) uint64 keys; equal keys <=> (with overwhelming probability) equal band rows."""
    with np.errstate(over="ignore"):
        banded = signatures[:, : bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
        multipliers = _mix64(np.arange(1, rows + 1, dtype=np.uint64)) | np.uint64(1)
        keys = np.sum(_mix64(banded) * multipliers, axis=2, dtype=np.uint64)
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


def near_duplicate_clusters(ids: Sequence[str], signatures: np.ndarray, config: MinHashConfig = MinHashConfig()
                            ) -> tuple[list[list[str]], int]:
    """Clusters (sorted lists of ids, size >= 2) and the number of distinct LSH candidate pairs (before
    verification)."""
    bands, rows = optimal_bands_rows(config.threshold, config.num_permutations, config.false_positive_weight,
                                     config.false_negative_weight)
    has_words = signatures[:, 0] != EMPTY
    keys = band_keys(signatures, bands, rows)
    union_find, checked = UnionFind(), set()
    for band in range(bands):
        column = keys[:, band]
        order = np.argsort(column, kind="stable")
        order = order[has_words[order]]
        sorted_keys = column[order]
        if len(sorted_keys) == 0:
            continue
        # only buckets holding two or more documents are visited (np.split would build one array per document)
        starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        sizes = np.diff(np.append(starts, len(sorted_keys)))
        for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
            bucket = order[start:start + size]
            bucket_ids = [ids[i] for i in bucket]
            bucket_signatures = [signatures[i] for i in bucket] if config.verify_candidates else None
            for first, second in candidate_pairs_in_bucket(bucket_ids, bucket_signatures, config.threshold,
                                                           already_checked=checked):
                union_find.union(first, second)
    return union_find.clusters(), len(checked)


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
