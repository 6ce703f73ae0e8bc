"""The grain training feed: batch layout, determinism, process sharding, exact resume in a new process, workers."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import data_helpers
from qwencoder_jax.data import fim, loader, packing, tasks

LENGTH = 256


def register(root):
    """Registers the sources the tests (and the resume subprocess) read; returns the mixture name."""
    config = fim.FimConfig(fim_rate=0.5, seed=7)
    tasks.register_source("l_code", str(root / "code"), "code_file", fim_config=config, max_tokens=LENGTH + 1)
    tasks.register_source("l_text", str(root / "text"), "text", max_tokens=LENGTH + 1)
    tasks.register_source("l_sft", str(root / "sft"), "sft", max_tokens=LENGTH + 1)
    tasks.register_mixture("l_mixture", {"l_code": 70, "l_text": 20, "l_sft": 10})
    return "l_mixture"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    data_helpers.write_code_files(root / "code", limit=30)
    data_helpers.write_text(root / "text", limit=20)
    data_helpers.write_sft(root / "sft")
    register(root)
    return root


def config(**overrides):
    values = dict(sequence_length=LENGTH, batch_size=4, seed=0, process_index=0, process_count=1)
    values.update(overrides)
    return loader.LoaderConfig(**values)


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(batches_a, batches_b))


def test_batches_have_the_training_layout(root):
    batch = next(loader.make_iterator("l_mixture", config()))
    assert set(batch) == set(packing.ROW_FEATURES)
    for name in packing.ROW_FEATURES:
        assert batch[name].shape == (4, LENGTH) and batch[name].dtype == np.int32
    assert (batch["loss_mask"][batch["segment_ids"] == 0] == 0).all()
    # within a segment, targets are the next inputs
    same_segment = batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
    same_segment &= batch["segment_ids"][:, 1:] > 0
    np.testing.assert_array_equal(batch["targets"][:, :-1][same_segment], batch["input_ids"][:, 1:][same_segment])
    assert (batch["segment_ids"] > 0).mean() > 0.8


def test_deterministic_for_a_seed(root):
    first = loader.take(loader.make_iterator("l_mixture", config()), 5)
    again = loader.take(loader.make_iterator("l_mixture", config()), 5)
    other = loader.take(loader.make_iterator("l_mixture", config(seed=1)), 5)
    assert same(first, again) and not same(first, other)


def test_processes_read_disjoint_records(root):
    # Long enough rows that no docstring is split into windows: one document per record.
    tasks.register_source("l_text_whole", str(root / "text"), "text", max_tokens=4097)

    def documents(index, count):
        iterator = iter(loader.make_document_dataset("l_text_whole", config(
            process_index=index, process_count=count, shuffle=False, sequence_length=4096)))
        return [tuple(next(iterator)["ids"][:8]) for _ in range(20 // count)]

    everything = set(documents(0, 1))
    first, second = set(documents(0, 2)), set(documents(1, 2))
    assert len(first) == len(second) == 10 and not first & second
    assert first | second == everything and len(everything) == 20


RESUME_SCRIPT = textwrap.dedent("""
    import json, os, pathlib, sys
    import numpy as np
    sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]  # this test's folder, and tests/ (data_helpers)
    import test_loader
    from qwencoder_jax.data import loader

    if __name__ == "__main__":
        root, checkpoints, out, mode = pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[6]
        workers = int(sys.argv[5])
        name = test_loader.register(root)
        iterator = loader.make_iterator(name, test_loader.config(num_workers=workers))
        if mode == "save":
            loader.take(iterator, 3)
            params = {"embedding": np.arange(12, dtype=np.float32).reshape(3, 4)}  # stands in for the model state
            loader.save_state(checkpoints, 3, iterator, extra=params)
        else:
            assert loader.restore_state(checkpoints, iterator) == 3
        batches = loader.take(iterator, 4)
        np.savez(out, **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        json.dump(loader.bad_input_counts(iterator), open(out + ".counts.json", "w"))
        iterator.close()
""")


def run_script(tmp_path, root, workers, mode):
    script = tmp_path / "resume_script.py"
    script.write_text(RESUME_SCRIPT)
    out = str(tmp_path / f"{mode}.npz")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, str(script), os.path.dirname(os.path.abspath(__file__)), str(root),
                             str(tmp_path / "checkpoints"), out, str(workers), mode],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out)), json.load(open(out + ".counts.json"))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_in_a_new_process_sees_the_same_batches(tmp_path, root, workers):
    """Process A reads 3 batches, checkpoints (orbax, beside model state), reads 4 more; process B restores and
    must read exactly those 4."""
    uninterrupted, counts_a = run_script(tmp_path, root, workers, "save")
    resumed, counts_b = run_script(tmp_path, root, workers, "restore")
    assert uninterrupted.keys() == resumed.keys() and len(uninterrupted) == 4 * len(packing.ROW_FEATURES)
    for key in uninterrupted:
        np.testing.assert_array_equal(uninterrupted[key], resumed[key], err_msg=key)
    assert counts_a == counts_b


def test_worker_processes_match_their_own_stream_and_resume(root):
    """With worker processes: same seed, same stream; set_state mid-stream continues it exactly."""
    iterator = loader.make_iterator("l_mixture", config(num_workers=2))
    try:
        loader.take(iterator, 2)
        state = iterator.get_state()
        expected = loader.take(iterator, 3)
        # counted in the workers, visible here once a packed group (16 rows per worker) is behind us: stdlib
        # files longer than 257 tokens are split into windows
        loader.take(iterator, 8)
        assert loader.bad_input_counts(iterator).get("split_long_document", 0) > 0
    finally:
        iterator.close()
    resumed = loader.make_iterator("l_mixture", config(num_workers=2), state=state)
    try:
        assert same(expected, loader.take(resumed, 3))
    finally:
        resumed.close()


def test_document_stream_resumes_inside_a_split_record(root):
    """Long files give several windows per record; a state taken between two windows of one record resumes at the
    next window (the record is re-read and the emitted windows skipped)."""
    cfg = config(shuffle=False)
    iterator = iter(loader.make_document_dataset("l_code", cfg))
    states, documents = [], []
    for _ in range(30):
        states.append(iterator.get_state())
        documents.append(next(iterator))
    assert any(state["emitted"] > 0 for state in states), "the data should contain records split into windows"
    for start in (1, 7, 18):
        resumed = iter(loader.make_document_dataset("l_code", cfg))
        resumed.set_state(states[start])
        for expected in documents[start:start + 6]:
            np.testing.assert_array_equal(next(resumed)["ids"], expected["ids"])


def test_loader_benchmark_stays_runnable(capsys):
    """benchmarks/loader_throughput.py end to end on a few files and the tiny preset (figures not asserted)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
    import loader_throughput

    result = loader_throughput.main(["--files", "12", "--sequence", "256", "--batch", "2", "--model_preset", "tiny",
                                     "--model_batch", "1", "--model_sequence", "32"])
    assert result["raw"]["tokens"] >= result["encode_batch"]["tokens"] > 0
    assert "raw-text loader (FIM 0.5) vs encode_batch, per core: ratio=" in capsys.readouterr().out


def test_data_package_never_imports_the_model():
    code = ("import sys; from qwencoder_jax.data import loader, packing, samples, shards, tasks; "
            "assert not [m for m in sys.modules if m.startswith('qwencoder_jax.model')], 'model imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
