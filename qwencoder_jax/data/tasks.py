"""The seqio registry of our data: one task per source (code files, code repos, text, math, SFT) and the mixtures.

Design notes: docs/DATA.md, section `qwencoder_jax/data/tasks.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from qwencoder_jax.data import tensorflow_import  # noqa: F401  (first: quiets TensorFlow's startup notices)
import seqio
import tensorflow as tf

from qwencoder_jax.data import fim, samples, shards
from qwencoder_jax.data.vocabulary import QwenVocabulary

# Registered by us: task name -> spec, vocabulary, and the bad-input counter of this process's seqio reads.
SOURCE_SPECS: dict[str, samples.SourceSpec] = {}
VOCABULARIES: dict[str, seqio.Vocabulary] = {}
BAD_INPUT: dict[str, fim.BadInputCounter] = {}


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> QwenVocabulary:
    return QwenVocabulary()


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {
        # add_eos=False: the sample builders end documents themselves (and a cut document must not get an EOS).
        "targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
        "loss_mask": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32, required=False),
    }


def _records_dataset(split: str, shuffle_files: bool, seed: int | None = None, *, dataset_dir: str) -> tf.data.Dataset:
    source = shards.RecordSource(shards.split_files(dataset_dir, split))
    order = np.arange(len(source))
    if shuffle_files:
        order = np.random.default_rng(seed).permutation(order)

    def generate():
        for index in order:
            yield {"record": source[index]}

    return tf.data.Dataset.from_generator(generate, output_signature={"record": tf.TensorSpec([], tf.string)})


def build_documents(dataset: tf.data.Dataset, *, task_name: str) -> tf.data.Dataset:
    """seqio preprocessor: serialized record -> {targets, loss_mask}; unusable records are dropped and counted."""
    spec, vocabulary = SOURCE_SPECS[task_name], VOCABULARIES[task_name]
    counter = BAD_INPUT.setdefault(task_name, fim.BadInputCounter())

    def build(record: bytes):
        documents = samples.build_documents(record, spec, vocabulary, counter)
        if not documents:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)
        return (np.concatenate([d["ids"] for d in documents]), np.concatenate([d["loss_mask"] for d in documents]),
                np.asarray([len(d["ids"]) for d in documents], np.int64))

    def to_features(example):
        ids, loss_mask, lengths = tf.numpy_function(build, [example["record"]], [tf.int32, tf.int32, tf.int64],
                                                    stateful=False, name="build_documents")
        ids.set_shape([None])
        loss_mask.set_shape([None])
        lengths.set_shape([None])
        # One record can give several documents (a long file's windows): one example each.
        return tf.data.Dataset.from_tensor_slices({
            "targets": tf.RaggedTensor.from_row_lengths(ids, lengths, validate=False),
            "loss_mask": tf.RaggedTensor.from_row_lengths(loss_mask, lengths, validate=False)})

    # One record at a time: the counter is plain Python, and the order of examples stays the order of records.
    return dataset.flat_map(to_features).map(
        lambda example: {"targets": example["targets"], "loss_mask": example["loss_mask"]})


def register_source(name: str, dataset_dir: str, kind: str | None = None, *, split: str = "train",
                    fim_config: fim.FimConfig = fim.FimConfig(), max_tokens: int = 8193,
                    vocabulary: seqio.Vocabulary | None = None, replace: bool = True) -> seqio.Task:
    """Registers one dataset directory as a seqio task named `name` (and for loader.py).

    kind: one of samples.KINDS; None takes the manifest's. max_tokens: the training length + 1 (the packer shifts
    inside documents). replace: re-registering a name replaces it (notebooks and tests re-run cells).
    """
    manifest = shards.read_manifest(dataset_dir)
    kind = kind or manifest.get("kind")
    if manifest.get("kind") not in (None, kind) and manifest.get("kind") != "mixed":
        raise ValueError(f"{dataset_dir}: manifest kind is {manifest.get('kind')!r} but {name!r} was registered "
                         f"as {kind!r}; pass the matching kind or the right directory")
    spec = samples.SourceSpec(name=name, dataset_dir=str(dataset_dir), kind=kind, split=split,
                              fim_config=fim_config, max_tokens=max_tokens)
    vocabulary = vocabulary or default_vocabulary()
    splits = {s: info.get("records") for s, info in manifest.get("splits", {}).items()}
    if split not in splits:
        raise KeyError(f"{dataset_dir}: manifest has splits {sorted(splits)}, not {split!r}")
    if replace:
        seqio.TaskRegistry.remove(name)
    SOURCE_SPECS[name] = spec
    VOCABULARIES[name] = vocabulary
    BAD_INPUT[name] = fim.BadInputCounter()
    return seqio.TaskRegistry.add(
        name,
        seqio.FunctionDataSource(functools.partial(_records_dataset, dataset_dir=str(dataset_dir)),
                                 splits=list(splits), num_input_examples={s: n for s, n in splits.items() if n}),
        preprocessors=[functools.partial(build_documents, task_name=name)],
        output_features=output_features(vocabulary),
    )


def register_mixture(name: str, rates: Mapping[str, float], replace: bool = True) -> seqio.Mixture:
    """A mixture of registered tasks; rates are relative numbers of documents (zero-rate tasks are left out)."""
    unknown = [task for task in rates if task not in SOURCE_SPECS]
    if unknown:
        raise KeyError(f"mixture {name!r}: tasks {unknown} are not registered with register_source")
    kept = [(task, float(rate)) for task, rate in rates.items() if rate > 0]
    if not kept:
        raise ValueError(f"mixture {name!r} has no task with a positive rate: {dict(rates)}")
    if replace:
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, kept)


def _group(tasks_or_rates: str | Mapping[str, float], total: float) -> dict[str, float]:
    rates = {tasks_or_rates: 1.0} if isinstance(tasks_or_rates, str) else dict(tasks_or_rates)
    norm = sum(rates.values())
    return {task: total * rate / norm for task, rate in rates.items()}


def register_recipe_mixtures(code: str | Mapping[str, float], text: str | Mapping[str, float],
                             math: str | Mapping[str, float], repo: str | Mapping[str, float] | None = None,
                             prefix: str = "", by: str = "tokens") -> list[str]:
    """The report's mixtures over registered tasks (a group is one task or {task: relative rate}).

    by="tokens" (default): the rates are shares of training tokens, turned into document rates with each task's
    mean tokens per record (its first records, `mean_record_tokens`); by="documents": shares of records drawn.

      {prefix}stage1_70_20_10    code:text:math 70:20:10, the final stage-1 mixture (report section 3.1.2)
      {prefix}ablation_100_0_0   Table 3, code only
      {prefix}ablation_85_10_5   Table 3
      {prefix}stage2_repo        repo-level code:text:math 70:20:10 (the report gives no stage-2 ratio; we keep
                                 stage 1's with repo-level samples as the code part)
    """
    if by not in ("tokens", "documents"):
        raise ValueError(f"register_recipe_mixtures: by={by!r}; use 'tokens' or 'documents'")
    mixtures = {"stage1_70_20_10": (code, 70, 20, 10), "ablation_100_0_0": (code, 100, 0, 0),
                "ablation_85_10_5": (code, 85, 10, 5)}
    if repo is not None:
        mixtures["stage2_repo"] = (repo, 70, 20, 10)
    mean_tokens: dict[str, float] = {}
    names = []
    for mixture, (code_group, code_rate, text_rate, math_rate) in mixtures.items():
        rates = {**_group(code_group, code_rate), **_group(text, text_rate), **_group(math, math_rate)}
        if by == "tokens":
            for task in rates:
                if rates[task] > 0 and task not in mean_tokens:
                    mean_tokens[task] = mean_record_tokens(task)
            rates = document_rates_for_token_rates(rates, mean_tokens)
        register_mixture(prefix + mixture, rates)
        names.append(prefix + mixture)
    return names


def resolve(name: str) -> list[tuple[samples.SourceSpec, seqio.Vocabulary, float]]:
    """(spec, vocabulary, document rate) of each task of a registered task or mixture name."""
    provider = seqio.get_mixture_or_task(name)
    if isinstance(provider, seqio.Mixture):
        pairs = [(task.name, provider.get_rate(task)) for task in provider.tasks]
    else:
        pairs = [(provider.name, 1.0)]
    missing = [task for task, _ in pairs if task not in SOURCE_SPECS]
    if missing:
        raise KeyError(f"{name!r} uses tasks {missing} that were not registered with tasks.register_source")
    return [(SOURCE_SPECS[task], VOCABULARIES[task], float(rate)) for task, rate in pairs]


def mean_document_tokens(task_name: str, max_documents: int = 256) -> float:
    """Mean tokens per document of a task, over its first documents (for token-rate conversion)."""
    spec, vocabulary = SOURCE_SPECS[task_name], VOCABULARIES[task_name]
    source = shards.RecordSource(shards.split_files(spec.dataset_dir, spec.split))
    counter = fim.BadInputCounter()
    lengths = []
    for index in range(min(len(source), max_documents)):
        lengths += [len(d["ids"]) for d in samples.build_documents(source[index], spec, vocabulary, counter)]
    if not lengths:
        raise ValueError(f"task {task_name!r}: no usable document among its first {max_documents} records")
    return float(np.mean(lengths))


def mean_record_tokens(task_name: str, max_records: int = 64) -> float:
    """Training tokens one record of a task gives, on average over its first records. Rates count records, and a
    file longer than the row becomes several windows (samples.py), so this, not the tokens per window, is what
    turns document rates into token shares."""
    if task_name not in SOURCE_SPECS:
        raise KeyError(f"task {task_name!r} was not registered with tasks.register_source")
    spec, vocabulary = SOURCE_SPECS[task_name], VOCABULARIES[task_name]
    source = shards.RecordSource(shards.split_files(spec.dataset_dir, spec.split))
    counter = fim.BadInputCounter()
    totals = [sum(len(d["ids"]) for d in samples.build_documents(source[index], spec, vocabulary, counter))
              for index in range(min(len(source), max_records))]
    if not any(totals):
        raise ValueError(f"task {task_name!r}: no usable document among its first {max_records} records")
    return float(np.mean(totals))


def document_rates_for_token_rates(token_rates: Mapping[str, float],
                                   mean_tokens: Mapping[str, float]) -> dict[str, float]:
    """Document rates that give `token_rates` in expectation: rate_i / mean document length_i, renormalised."""
    raw = {task: rate / mean_tokens[task] for task, rate in token_rates.items() if rate > 0}
    total = sum(raw.values())
    return {task: 100.0 * value / total for task, value in raw.items()}


def pretokenize_source(task_name: str, output_dir: str, num_shards: int = 1) -> dict:
    """Writes the task's documents (FIM/repo/ChatML already applied) as `token_ids` + `loss_mask` shards.

    Register the copy with register_source(name, output_dir, kind) to train without tokenising in the loader; the
    FIM split is then frozen (the same for every epoch) and bad input was counted once, here.
    """
    spec, vocabulary = SOURCE_SPECS[task_name], VOCABULARIES[task_name]
    source = shards.RecordSource(shards.split_files(spec.dataset_dir, spec.split))
    counter = fim.BadInputCounter()
    examples = []
    for index in range(len(source)):
        for number, document in enumerate(samples.build_documents(source[index], spec, vocabulary, counter)):
            examples.append({"id": f"{task_name}:{index}#{number}", "kind": spec.kind,
                             "token_ids": document["ids"].tolist(), "loss_mask": document["loss_mask"].tolist()})
    return shards.write_dataset(output_dir, f"{task_name}_pretokenized", spec.kind, examples, num_shards=num_shards,
                                split=spec.split, extra_manifest={"pretokenized": {
                                    "from": spec.dataset_dir, "max_tokens": spec.max_tokens,
                                    "bad_input": counter.as_dict()}})
