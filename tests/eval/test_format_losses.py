"""format_losses on data_pipelines datasets (what `make demo` measures on its held-out shards): each kind gives its
formats, built like the training samples, with the loss where training puts it."""

from __future__ import annotations

import json

import numpy as np

from qwencoder_jax.data import samples, shards
from qwencoder_jax.data.fim import BadInputCounter
from qwencoder_jax.data.special_tokens import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME
from qwencoder_jax.data.vocabulary import QwenVocabulary
from qwencoder_jax.eval import format_losses

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n" * 4
MESSAGES = [{"role": "user", "content": "Write add."}, {"role": "assistant", "content": "def add(a, b): ..."}]


def test_dataset_documents_by_kind(tmp_path):
    vocabulary = QwenVocabulary()
    special = vocabulary.special_ids
    shards.write_dataset(tmp_path / "code", "code", "code_file", [{"id": "c", "text": CODE}] * 3, 1, "validation")
    shards.write_dataset(tmp_path / "repo", "repo", "code_repo",
                         [{"id": "r", "repo_name": "me/calc", "paths": ["calc/a.py", "calc/b.py"],
                           "contents": [CODE, CODE]}], 1, "validation")
    shards.write_dataset(tmp_path / "sft", "sft", "sft", [{"id": "s", "messages": json.dumps(MESSAGES)}], 1,
                         "validation")
    shards.write_dataset(tmp_path / "text", "text", "text", [{"id": "t", "text": "prose"}], 1, "validation")
    documents = format_losses.dataset_documents([tmp_path / n for n in ("code", "repo", "sft", "text")], vocabulary,
                                                count=2, max_chars=100)
    assert set(documents) == set(format_losses.FORMATS)
    assert len(documents["file_level"]) == 2 and len(documents["repo_level"]) == 1
    file_level = documents["file_level"][0]
    assert vocabulary.decode(file_level["ids"][:-1].tolist()) == CODE[:CODE.rfind("\n", 0, 100) + 1]
    fim = documents["fim_psm"][0]
    assert fim["ids"][0] == special[FIM_PREFIX] and special[FIM_SUFFIX] in fim["ids"]
    middle = int(np.flatnonzero(fim["ids"] == special[FIM_MIDDLE])[0])
    assert not fim["loss_mask"][:middle + 1].any() and fim["loss_mask"][middle + 1:].all()
    repo = documents["repo_level"][0]
    assert repo["ids"][0] == special[REPO_NAME] and not repo["loss_mask"][0] and repo["loss_mask"][-1]
    ours = samples.chatml_document(MESSAGES, vocabulary, None, BadInputCounter())
    np.testing.assert_array_equal(documents["sft_chatml"][0]["ids"], ours["ids"])
    np.testing.assert_array_equal(documents["sft_chatml"][0]["loss_mask"], ours["loss_mask"])


def test_pack_uses_trainings_packer_and_keeps_every_target():
    vocabulary = QwenVocabulary()
    documents = format_losses.real_documents(vocabulary, count=3, max_chars=300)["fim_psm"]
    rows = format_losses.pack(documents, 256)
    assert sum(int(row["loss_mask"].sum()) for row in rows) == sum(int(d["loss_mask"][1:].sum()) for d in documents)
    assert all(row["input_ids"].shape == (256,) for row in rows) and max(row["segment_ids"].max() for row in rows) > 1
