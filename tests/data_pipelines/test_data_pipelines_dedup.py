"""MinHash LSH against exact Jaccard on planted near-duplicates; exact dedup; the (bands, rows) choice."""

import random

import numpy as np
import pytest

from data_pipelines import dedup


def _words(generator, count):
    return [f"w{generator.randrange(10**9)}" for _ in range(count)]


def _planted_pairs(pairs_per_level=60, length=150, seed=0):
    """Pairs of documents whose second member replaces a random share of the first's words; the exact Jaccard
    of each pair is measured afterwards, not assumed."""
    generator = random.Random(seed)
    texts = []
    for replaced_share in (0.0, 0.01, 0.02, 0.04, 0.08, 0.15, 0.25, 0.35, 0.5):
        for _ in range(pairs_per_level):
            base = _words(generator, length)
            copy = list(base)
            for position in generator.sample(range(length), int(replaced_share * length)):
                copy[position] = f"r{generator.randrange(10**9)}"
            texts += [" ".join(base), " ".join(copy)]
    return texts


@pytest.fixture(scope="module")
def planted():
    texts = _planted_pairs()
    ids = [f"{i:05d}" for i in range(len(texts))]
    config = dedup.MinHashConfig()
    signatures = dedup.minhash_signatures(texts, config)
    clusters, candidates = dedup.near_duplicate_clusters(ids, signatures, config)
    cluster_of = {member: index for index, members in enumerate(clusters) for member in members}
    jaccards = [dedup.exact_jaccard(texts[i], texts[i + 1]) for i in range(0, len(texts), 2)]
    together = [ids[i] in cluster_of and cluster_of.get(ids[i]) == cluster_of.get(ids[i + 1])
                for i in range(0, len(texts), 2)]
    return texts, signatures, clusters, np.array(jaccards), np.array(together)


def test_recall_at_high_jaccard(planted):
    _, _, _, jaccards, together = planted
    high = jaccards >= 0.8
    assert high.sum() >= 100
    assert together[high].mean() >= 0.95


def test_false_positives_at_low_jaccard(planted):
    _, _, _, jaccards, together = planted
    low = jaccards <= 0.5
    assert low.sum() >= 60
    assert together[low].mean() <= 0.01


def test_unrelated_documents_never_cluster(planted):
    _, _, clusters, _, _ = planted
    assert all(len(members) == 2 and int(members[1]) - int(members[0]) == 1 and int(members[0]) % 2 == 0
               for members in clusters)


def test_signature_agreement_estimates_jaccard(planted):
    texts, signatures, _, jaccards, _ = planted
    estimates = np.array([dedup.estimated_jaccard(signatures[i], signatures[i + 1]) for i in range(0, len(texts), 2)])
    # 256 permutations: standard error sqrt(J(1-J)/256) <= 0.031
    assert np.abs(estimates - jaccards).max() < 0.15
    assert np.abs(estimates - jaccards).mean() < 0.03


def test_signatures_are_batch_independent():
    texts = _planted_pairs(pairs_per_level=3)
    whole = dedup.minhash_signatures(texts)
    one_by_one = np.stack([dedup.minhash_signatures([t])[0] for t in texts[:10]])
    small_batches = dedup.minhash_signatures(texts, dedup.MinHashConfig(batch_bytes=500, block_shingles=7))
    assert np.array_equal(whole[:10], one_by_one) and np.array_equal(whole, small_batches)


def test_short_and_empty_documents():
    signatures = dedup.minhash_signatures(["a b", "a b", "", "...", "a b c"])
    assert np.array_equal(signatures[0], signatures[1])
    assert (signatures[2] == dedup.EMPTY).all() and (signatures[3] == dedup.EMPTY).all()
    assert not np.array_equal(signatures[0], signatures[4])
    clusters, _ = dedup.near_duplicate_clusters(list("abcde"), signatures)
    assert clusters == [["a", "b"]]


def test_bands_and_rows_minimise_weighted_error():
    bands, rows = dedup.optimal_bands_rows(0.7, 256)
    assert bands * rows <= 256
    assert (bands, rows) == (25, 10)  # the choice datasketch's MinHashLSH makes for these settings
    # the S-curve's steepest point sits near the threshold
    assert abs((1 / bands) ** (1 / rows) - 0.7) < 0.1
    assert dedup.optimal_bands_rows(0.5, 128)[0] > dedup.optimal_bands_rows(0.9, 128)[0]


def test_exact_dedup_normalises_whitespace_and_keeps_the_smallest_id():
    hashes = [dedup.content_hash(t) for t in ["a  b\n", "a b", "a\tb  ", "a c"]]
    removed = dedup.exact_duplicates(["z", "m", "c", "d"], hashes)
    assert removed == {"z": "c", "m": "c"}


def test_cluster_report_and_representatives():
    union_find = dedup.UnionFind()
    for first, second in [("d", "b"), ("b", "c"), ("x", "y")]:
        union_find.union(first, second)
    clusters = union_find.clusters()
    assert clusters == [["b", "c", "d"], ["x", "y"]]
    assert dedup.representatives(clusters) == {"c": "b", "d": "b", "y": "x"}
    assert dedup.cluster_report(clusters)[0] == {"representative": "b", "size": 3, "members": ["b", "c", "d"]}


def _reference_signatures(texts, config=dedup.MinHashConfig()):
    """Plain numpy: min over each text's shingles of (a * x + b) mod 2^32."""
    a, b = dedup._permutations(config.num_permutations, config.seed)
    shingles, offsets = dedup.shingle_hashes(texts, config.shingle_size)
    rows = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        values = shingles[start:end, None] * a + b
        rows.append(np.minimum(values.min(axis=0), dedup.EMPTY - 1) if end > start
                    else np.full(len(a), dedup.EMPTY, dtype=np.uint32))
    return np.stack(rows)


def test_kernels_match_the_plain_definition(monkeypatch):
    generator = random.Random(3)
    texts = _planted_pairs(pairs_per_level=2) + [" ".join(_words(generator, 9000)), "", "one two"]
    expected = _reference_signatures(texts)
    assert np.array_equal(dedup.minhash_signatures(texts), expected)  # JAX kernel; one text of 2+ pieces
    monkeypatch.setattr(dedup, "_FORKED_AFTER_JAX", True)  # as in a child forked after JAX started: numpy
    assert np.array_equal(dedup.minhash_signatures(texts), expected)


def test_hash_family_estimates_jaccard_on_random_sets():
    """(a*x + b) mod 2^32 is not a min-wise independent family; on random 32-bit shingle hashes its estimates
    should still be unbiased with the binomial spread sqrt(J(1-J)/256) of ideal permutations."""
    generator = np.random.default_rng(0)
    a, b = dedup._permutations(256, 1)
    errors, spreads = [], []
    for _ in range(400):
        union = int(generator.integers(20, 600))
        shared = int(generator.integers(0, union + 1))
        values = generator.choice(1 << 32, size=union, replace=False).astype(np.uint32)
        only_first = (union - shared) // 2
        first, second = values[: shared + only_first], np.concatenate((values[:shared], values[shared + only_first:]))
        shingles = np.concatenate((first, second))
        offsets = np.array([0, len(first), len(shingles)])
        signatures = dedup._signatures_of_shingles(shingles, offsets, a, b)
        jaccard = shared / union
        errors.append(dedup.estimated_jaccard(signatures[0], signatures[1]) - jaccard)
        spreads.append(np.sqrt(jaccard * (1 - jaccard) / 256))
    errors, spreads = np.array(errors), np.array(spreads)
    assert abs(errors.mean()) < 0.005
    assert np.abs(errors).max() < 0.12
    z = errors[spreads > 0] / spreads[spreads > 0]
    assert 0.85 < z.std() < 1.15
