"""seqio tasks per source kind, mixtures and their rates, the SFT loss mask, and bad input counted by reason."""


import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers

import data_helpers
from qwencoder_jax.data import fim, loader, samples, shards, tasks

EOS, IM_START, IM_END = 151643, 151644, 151645
FIM_PREFIX, FIM_MIDDLE, REPO_NAME, FILE_SEP = 151659, 151660, 151663, 151664


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    data_helpers.write_code_files(root / "code", limit=24)
    data_helpers.write_code_repos(root / "repos")
    data_helpers.write_text(root / "text", "text", limit=20)
    data_helpers.write_text(root / "math", "math", limit=20)
    data_helpers.write_sft(root / "sft")
    fim_config = fim.FimConfig(fim_rate=0.5, seed=1)
    for name, kind in [("t_code", "code_file"), ("t_repos", "code_repo"), ("t_text", "text"), ("t_math", "math"),
                       ("t_sft", "sft")]:
        directory = {"code_file": "code", "code_repo": "repos"}.get(kind, kind)
        tasks.register_source(name, str(root / directory), kind, fim_config=fim_config, max_tokens=2049)
    return root


def task_examples(name, sequence_length=None):
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=sequence_length, split="train", shuffle=False)
    return [{k: v.numpy() for k, v in example.items()} for example in dataset]


def test_each_kind_is_a_seqio_task_with_its_format(registered):
    vocabulary = tasks.default_vocabulary()
    code = task_examples("t_code")
    split = tasks.BAD_INPUT["t_code"]["split_long_document"]  # files over 2,049 tokens become several windows
    assert len(code) > 24 and split >= 1 and all(set(e) == {"targets", "loss_mask"} for e in code)
    fim_count = sum(FIM_PREFIX in e["targets"] for e in code)
    assert 0.25 * len(code) <= fim_count <= 0.75 * len(code), "about half are FIM samples at fim_rate 0.5"
    for example in code:
        assert example["targets"].dtype == np.int32 and (example["loss_mask"] == 1).all()
        if FIM_PREFIX in example["targets"]:
            assert example["targets"][0] == FIM_PREFIX and FIM_MIDDLE in example["targets"]
    repos = task_examples("t_repos")
    assert len(repos) == 6 and all(e["targets"][0] == REPO_NAME and FILE_SEP in e["targets"] for e in repos)
    first = vocabulary.decode(repos[0]["targets"].tolist())
    assert first.startswith("<|repo_name|>cpython/") and "<|file_sep|>" in first
    for name in ("t_text", "t_math"):
        examples = task_examples(name)
        assert len(examples) == 20
        assert all(e["targets"][-1] == EOS and FIM_PREFIX not in e["targets"] for e in examples)
    # seqio trims to the requested length
    assert max(len(e["targets"]) for e in task_examples("t_code", {"targets": 64})) == 64


def test_sft_loss_mask_covers_exactly_the_assistant_tokens(registered):
    reference = tokenizers.Tokenizer.from_file(tasks.default_vocabulary().tokenizer_file)
    encode = lambda text: reference.encode(text, add_special_tokens=False).ids  # noqa: E731
    examples = task_examples("t_sft")
    assert len(examples) == len(data_helpers.SFT_CHATS)
    for chat, example in zip(data_helpers.SFT_CHATS, sorted(examples, key=lambda e: len(e["targets"]))):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat)
        np.testing.assert_array_equal(example["targets"], encode(text))  # ChatML, exactly as the tokenizer reads it
        assistant = [i for m in chat if m["role"] == "assistant" for i in encode(m["content"]) + [IM_END]]
        assert example["targets"][example["loss_mask"] == 1].tolist() == assistant
        # and the masked-out tokens are exactly everything else
        others = [i for m in chat for i in ([IM_START] + encode(f"{m['role']}\n") +
                                            ([] if m["role"] == "assistant" else encode(m["content"]) + [IM_END])
                                            + encode("\n"))]
        assert example["targets"][example["loss_mask"] == 0].tolist() == others


def test_recipe_mixtures_registered(registered):
    names = tasks.register_recipe_mixtures("t_code", "t_text", "t_math", repo="t_repos", prefix="t_", by="documents")
    assert names == ["t_stage1_70_20_10", "t_ablation_100_0_0", "t_ablation_85_10_5", "t_stage2_repo"]
    rates = {name: {spec.name: rate for spec, _, rate in tasks.resolve(name)} for name in names}
    assert rates["t_stage1_70_20_10"] == {"t_code": 70, "t_text": 20, "t_math": 10}
    assert rates["t_ablation_100_0_0"] == {"t_code": 100}
    assert rates["t_ablation_85_10_5"] == {"t_code": 85, "t_text": 10, "t_math": 5}
    assert rates["t_stage2_repo"] == {"t_repos": 70, "t_text": 20, "t_math": 10}
    # the seqio side samples it too (tf.data), documents from all three tasks
    dataset = seqio.get_mixture_or_task("t_stage1_70_20_10").get_dataset({"targets": 128}, shuffle=False, seed=0)
    assert len(list(dataset.take(20))) == 20


@pytest.fixture(scope="module")
def pretokenized(tmp_path_factory):
    """Three sources whose documents differ in length (as code, text and math do) and carry traceable ids."""
    root = tmp_path_factory.mktemp("pretokenized")
    rng = np.random.default_rng(0)
    spec = {"p_code": (60, 120), "p_text": (20, 40), "p_math": (10, 20)}
    for index, (name, (low, high)) in enumerate(spec.items()):
        lengths = rng.integers(low, high, size=50).tolist()
        data_helpers.write_pretokenized(root / name, name, lengths, first_id=index * 10)
        tasks.register_source(name, str(root / name), "text", max_tokens=257)
    return spec


def source_shares(name, count, by_tokens):
    config = loader.LoaderConfig(sequence_length=256, batch_size=1, process_index=0, process_count=1, seed=5)
    iterator = iter(loader.make_document_dataset(name, config))
    totals = {}
    for _ in range(count):
        document = next(iterator)
        totals[document["source"]] = totals.get(document["source"], 0) + (len(document["ids"]) if by_tokens else 1)
    return {source: value / sum(totals.values()) for source, value in totals.items()}


def test_mixture_rates_are_document_proportions(pretokenized):
    tasks.register_mixture("p_70_20_10", {"p_code": 70, "p_text": 20, "p_math": 10})
    shares = source_shares("p_70_20_10", 3000, by_tokens=False)
    for source, expected in {"p_code": 0.7, "p_text": 0.2, "p_math": 0.1}.items():
        assert abs(shares[source] - expected) < 0.01, shares
    # ... which are NOT token proportions when documents differ in length: that is why rates say documents
    token_shares = source_shares("p_70_20_10", 3000, by_tokens=True)
    assert token_shares["p_code"] > 0.8


def test_token_rates_through_document_rate_conversion(pretokenized):
    mean_tokens = {name: tasks.mean_document_tokens(name) for name in pretokenized}
    rates = tasks.document_rates_for_token_rates({"p_code": 70, "p_text": 20, "p_math": 10}, mean_tokens)
    tasks.register_mixture("p_tokens_70_20_10", rates)
    shares = source_shares("p_tokens_70_20_10", 3000, by_tokens=True)
    for source, expected in {"p_code": 0.7, "p_text": 0.2, "p_math": 0.1}.items():
        assert abs(shares[source] - expected) < 0.01, shares


def test_recipe_mixtures_are_token_shares_by_default(pretokenized):
    names = tasks.register_recipe_mixtures("p_code", "p_text", "p_math", prefix="pt_")
    shares = source_shares(names[0], 3000, by_tokens=True)
    for source, expected in {"p_code": 0.7, "p_text": 0.2, "p_math": 0.1}.items():
        assert abs(shares[source] - expected) < 0.01, shares
    with pytest.raises(ValueError, match="by='bytes'"):
        tasks.register_recipe_mixtures("p_code", "p_text", "p_math", by="bytes")


def write_bad_dataset(directory):
    good = "def ok():\n    return 1\n"
    examples = [
        {"id": "good", "kind": "code_file", "text": good},
        {"id": "invalid-utf8", "kind": "code_file", "text": b"caf\xe9 \xff\xfe"},
        {"id": "empty", "kind": "code_file", "text": ""},
        {"id": "blank", "kind": "code_file", "text": "  \n\t\n"},
        {"id": "giant", "kind": "code_file", "text": "x = 1\n" * 2000},  # 12,000 characters > max_document_chars
        {"id": "no-text", "kind": "code_file", "path": "a.py"},
        {"id": "good-2", "kind": "code_file", "text": good * 3},
    ]
    shards.write_dataset(directory, "bad", "code_file", examples, num_shards=1)
    # A record that is not an Example at all, appended as a valid TFRecord entry.
    with tf.io.TFRecordWriter(str(directory / "train-00000-of-00001.tfrecord.tmp")) as writer:
        for record in tf.data.TFRecordDataset(str(directory / "train-00000-of-00001.tfrecord")):
            writer.write(record.numpy())
        writer.write(b"\x0a\xff\xff\xff\xff garbage")
    (directory / "train-00000-of-00001.tfrecord.tmp").replace(directory / "train-00000-of-00001.tfrecord")


EXPECTED_BAD = {"empty": 2, "invalid_utf8": 1, "malformed_record": 1, "missing_feature": 1, "too_large": 1}


def test_bad_input_is_counted_by_reason_in_seqio_and_grain(tmp_path):
    write_bad_dataset(tmp_path)
    config = fim.FimConfig(fim_rate=0.0, max_document_chars=10_000)
    tasks.register_source("t_bad", str(tmp_path), "code_file", fim_config=config, max_tokens=129)
    examples = task_examples("t_bad")
    assert len(examples) == 2
    assert tasks.BAD_INPUT["t_bad"].as_dict() == EXPECTED_BAD
    # The grain feed counts the same reasons: 3 documents = the whole first pass + the first good one again.
    documents = iter(loader.make_document_dataset("t_bad", loader.LoaderConfig(
        sequence_length=128, batch_size=1, process_index=0, process_count=1, shuffle=False)))
    assert [next(documents)["ids"][0] for _ in range(3)][0] is not None
    assert loader.bad_input_counts(documents) == EXPECTED_BAD
    next(documents)  # second pass, second good document: counted again per pass
    twice = {reason: 2 * count for reason, count in EXPECTED_BAD.items()}
    assert loader.bad_input_counts(documents) == twice | {"malformed_record": 1}  # the garbage record is the last


def test_sft_bad_conversations_are_counted():
    vocabulary = tasks.default_vocabulary()
    counter = fim.BadInputCounter()
    assert samples.chatml_document("not a list", vocabulary, None, counter) is None
    assert samples.chatml_document([{"role": "wizard", "content": "hi"}], vocabulary, None, counter) is None
    assert samples.chatml_document([{"role": "user", "content": "hi"}], vocabulary, None, counter) is None
    assert counter.as_dict() == {"bad_messages": 2, "no_assistant_tokens": 1}


def test_torn_shard_keeps_complete_records(tmp_path):
    data_helpers.write_code_files(tmp_path, limit=4)
    path = tmp_path / "train-00000-of-00002.tfrecord"
    path.write_bytes(path.read_bytes()[:-10])
    source = shards.RecordSource(shards.split_files(tmp_path, "train"))
    assert len(source) == 3 and source.torn_files == [str(path)]
    assert all(shards.parse_example(source[i])["text"] for i in range(len(source)))


def test_parser_matches_tensorflow(registered):
    source = shards.RecordSource(shards.split_files(registered / "repos", "train"))
    for index in range(len(source)):
        ours = shards.parse_example(source[index])
        theirs = tf.train.Example.FromString(source[index])
        for name, feature in theirs.features.feature.items():
            assert ours[name] == list(feature.bytes_list.value)


@pytest.mark.parametrize("fim_rate", [0.0, 1.0])
def test_long_file_is_split_into_windows_not_truncated(fim_rate):
    vocabulary = tasks.default_vocabulary()
    path, text = data_helpers.stdlib_files("argparse.py", limit=1, max_chars=40_000)[0]
    full_ids = vocabulary.encode(text)
    counter = fim.BadInputCounter()
    documents = samples.file_documents(text, b"argparse", vocabulary, fim.FimConfig(fim_rate=fim_rate), 1025, counter)
    assert len(documents) == -(-len(full_ids) // (1025 - 8)) and counter.as_dict() == {"split_long_document": 1}
    assert all(len(d["ids"]) <= 1025 for d in documents)
    if fim_rate == 0.0:  # plain windows are the one tokenisation, cut; only the last ends the file
        assert sum((d["ids"].tolist() for d in documents), []) == full_ids + [EOS]
        assert [d["ids"][-1] == EOS for d in documents] == [False] * (len(documents) - 1) + [True]
    else:  # every window is a FIM sample of its own text, and the windows' texts are the file
        rebuilt = ""
        for number, document in enumerate(documents):
            ids = document["ids"].tolist()
            assert ids[0] == FIM_PREFIX and ids[-1] == EOS
            suffix_at, middle_at = ids.index(151661), ids.index(FIM_MIDDLE)
            prefix = vocabulary.decode(ids[1:suffix_at])
            suffix = vocabulary.decode(ids[suffix_at + 1:middle_at])
            middle = vocabulary.decode(ids[middle_at + 1:-1])
            rebuilt += prefix + middle + suffix
            # exactly the FIM sample of the window's text, planned with the window's key
            plan = fim.plan_fim(prefix + middle + suffix, b"argparse#%d" % number, fim.FimConfig(fim_rate=1.0))
            assert (plan.prefix, plan.middle, plan.suffix) == (prefix, middle, suffix)
            assert ids == fim.fim_ids(plan, vocabulary)
        assert rebuilt == text


def test_fim_windows_equal_tokenising_each_piece_on_its_own():
    """file_documents reuses the document's one tokenisation for FIM pieces away from the cuts; the ids must be
    exactly fim.fim_ids of the same plan (each piece tokenised alone)."""
    vocabulary = tasks.default_vocabulary()
    config = fim.FimConfig(fim_rate=1.0, spm_rate=0.3)
    texts = [text for _, text in data_helpers.stdlib_files(limit=80, max_chars=5000)]
    texts += ["x\n\n  \ny = 'é'\r\n\tz = 1\n", "日本語\nテキスト\n🎉 done\n", "a\u0301b\nc\n",
              "def f():\n    x = 1\n    \n\n    return x\n", "a\r\n  b\r\n\r\n  c\n", "x\n\t\ty\n \n z\n  \n",
              "if a:\n\x0c    b()\n\xa0\xa0c\n\u3000d\n" * 20]
    checked = 0
    for number, text in enumerate(texts):
        for key in range(5):
            key_bytes = b"%d-%d" % (number, key)
            documents = samples.file_documents(text, key_bytes, vocabulary, config, 100_000, fim.BadInputCounter())
            pieces = fim.plan_fim(text, key_bytes, config)
            assert documents[0]["ids"].tolist() == fim.fim_ids(pieces, vocabulary), (number, key)
            checked += 1
    assert checked == 5 * len(texts)


@pytest.mark.parametrize("fim_rate", [0.0, 1.0])
def test_document_exactly_at_the_limit(fim_rate):
    vocabulary = tasks.default_vocabulary()
    text = data_helpers.stdlib_files("bisect.py", limit=1)[0][1]
    count = len(vocabulary.encode(text))
    counter = fim.BadInputCounter()
    documents = samples.file_documents(text, b"bisect", vocabulary, fim.FimConfig(fim_rate=fim_rate), count + 1,
                                       counter)
    assert all(len(d["ids"]) <= count + 1 for d in documents)
    if fim_rate == 0.0:  # plain fits exactly: one document, the file + EOS
        assert len(documents) == 1 and documents[0]["ids"].tolist() == vocabulary.encode(text) + [EOS]
        assert counter.as_dict() == {}
    else:  # the FIM form needs 3 more tokens: two windows, nothing cut
        assert len(documents) == 2 and counter.as_dict() == {"split_long_document": 1}
