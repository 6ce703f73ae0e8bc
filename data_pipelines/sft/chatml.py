"""ChatML conversations: JSONL in, validated, written as `sft` shards (data_pipelines/FORMAT.md).

Input: one JSON object per line, `{"messages": [{"role": ..., "content": ...}, ...], ...}`. Roles are system
(first message only), user, assistant and tool; a conversation needs at least one user and one non-empty
assistant turn, since loss is taken on assistant tokens only (qwencoder_jax/data/samples.py) and a record without
one trains nothing. Extra keys (id, source, quality, language) are kept where FORMAT.md has a place for them.

Problems are reported as `Problem(line, reason, detail)`; `validate_jsonl` counts every line as kept or rejected
with its reason, so `read == kept + sum(rejected)` holds exactly as in the pretraining pipeline.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Iterable, Iterator

from data_pipelines import output
from data_pipelines.document import Document, document_id
from data_pipelines.sft import ast_fim
from data_pipelines.sft.tally import Problem, Tally

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages) -> tuple[str, str] | None:
    """(reason, detail) of the first problem of a conversation, or None if it is usable for SFT."""
    if not isinstance(messages, list) or not messages:
        return "messages_not_a_list", "`messages` must be a non-empty list of {role, content} objects"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return "message_not_an_object", f"message {index} is {type(message).__name__}, not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return "bad_role", f"message {index} has role {role!r}; use one of {ROLES}"
        if not isinstance(content, str):
            return "content_not_a_string", f"message {index} content is {type(content).__name__}, not a string"
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_utf8", f"message {index} content holds an unpaired surrogate"
        if role == "system" and index != 0:
            return "system_not_first", f"message {index} is a system message; only the first may be"
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        return "no_user_turn", "a conversation needs at least one user message"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return "no_assistant_turn", "no non-empty assistant message: nothing to train on"
    first_turn = 1 if roles[0] == "system" else 0
    if roles[first_turn] != "user":
        return "assistant_first", f"message {first_turn} is {roles[first_turn]!r}; conversations start with the user"
    for index in range(first_turn + 1, len(roles)):
        if roles[index] == roles[index - 1] and roles[index] in ("user", "assistant"):
            return "repeated_role", f"messages {index - 1} and {index} are both {roles[index]!r}; merge them"
    return None


def parse_line(line: str, number: int) -> tuple[dict | None, Problem | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return None, Problem(number, "invalid_json", str(error))
    if not isinstance(record, dict):
        return None, Problem(number, "record_not_an_object", f"line holds a {type(record).__name__}")
    if "messages" not in record:
        return None, Problem(number, "missing_messages", f"no `messages` key (keys: {sorted(record)[:8]})")
    problem = check_messages(record["messages"])
    if problem:
        return None, Problem(number, *problem)
    return record, None


def read_jsonl(path: str, tally: Tally) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every valid conversation; blank lines are skipped, bad ones counted."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record, problem = parse_line(line, number)
            if problem:
                tally.reject(problem)
            else:
                yield number, record


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    count = 0
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(path + ".tmp", path)
    return count


def record_key(record: dict) -> str:
    """A stable key: the record's id if it has one, else a digest of its conversation."""
    if record.get("id"):
        return str(record["id"])
    return document_id("conversation", json.dumps(record["messages"], sort_keys=True, ensure_ascii=False))


def to_document(record: dict, source: str) -> Document:
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    quality = record.get("quality")
    return Document(id=document_id(source, record_key(record)), source=source, kind="sft",
                    messages=json.dumps(messages, ensure_ascii=False),
                    quality=float(quality) if isinstance(quality, (int, float)) else None)


def _text_feature(value: str) -> bytes:
    return output._bytes_feature([value.encode("utf-8", "surrogatepass")])


def _int64_feature(values) -> bytes:
    packed = b"".join(output._varint(int(v)) for v in values)  # non-negative ids and mask bits
    return output._field(3, output._field(1, packed))  # Feature.int64_list = 3, Int64List.value = 1 (packed)


def token_example(doc_id: str, source: str, ids: list[int], mask: list[int]) -> bytes:
    """A pre-tokenised `sft` record (`token_ids` + `loss_mask`): samples.py uses it as is, whatever the kind."""
    return output.serialize_example({"id": _text_feature(doc_id), "source": _text_feature(source),
                                     "kind": _text_feature("sft"), "token_ids": _int64_feature(ids),
                                     "loss_mask": _int64_feature(mask)})


class DatasetWriter:
    """Collects serialized `sft` records (conversations and pre-tokenised ones alike) and writes FORMAT.md shards
    + manifest. A record whose id was already added is rejected as `duplicate_id`."""

    def __init__(self, name: str, tally: Tally):
        self.name, self.tally = name, tally
        self.examples: dict[str, bytes] = {}
        self.characters = 0

    def add_conversation(self, record: dict) -> None:
        document = to_document(record, self.name)
        if self._add(document.id, record_key(record)):
            self.examples[document.id] = output.document_to_example(document)
            self.characters += len(document.messages)

    def add_tokens(self, key: str, ids: list[int], mask: list[int]) -> None:
        if len(ids) != len(mask) or len(ids) < 2 or not any(mask[1:]):
            self.tally.reject(Problem(0, "bad_token_row", f"{key}: {len(ids)} ids, {sum(mask)} trained"))
            return
        doc_id = document_id(self.name, key)
        if self._add(doc_id, key):
            self.examples[doc_id] = token_example(doc_id, self.name, ids, mask)
            self.characters += int(len(ids) * output.TOKEN_BYTES)

    def _add(self, doc_id: str, key: str) -> bool:
        if doc_id in self.examples:
            self.tally.reject(Problem(0, "duplicate_id", key))
            return False
        self.tally.keep()
        return True

    def write(self, directory: str, num_shards: int = 1, stages: tuple[str, ...] = ("chatml",),
              config: dict | None = None) -> dict:
        by_shard: dict[int, list[tuple[str, bytes]]] = collections.defaultdict(list)
        for doc_id, example in self.examples.items():
            by_shard[output.shard_of(doc_id, num_shards)].append((doc_id, example))
        os.makedirs(directory, exist_ok=True)
        entries = []
        for index in range(num_shards):
            file_name = output.SHARD_NAME.format(split="train", index=index, count=num_shards)
            digest, size = hashlib.sha256(), 0
            with open(os.path.join(directory, file_name + ".tmp"), "wb") as handle:
                for _, example in sorted(by_shard[index]):  # sorted by id, as output.py does
                    framed = output.tfrecord_frame(example)
                    handle.write(framed)
                    digest.update(framed)
                    size += len(framed)
            os.replace(os.path.join(directory, file_name + ".tmp"), os.path.join(directory, file_name))
            entries.append({"file": file_name, "records": len(by_shard[index]), "bytes": size,
                            "sha256": digest.hexdigest()})
        counts = self.tally.as_dict() | {"per_source": {self.name: {"read": self.tally.read, "kept": self.tally.kept}}}
        return output.write_manifest(directory, self.name, "sft", list(stages), config or {}, {"train": entries},
                                     counts, self.characters)


def write_sft_dataset(records: Iterable[dict], directory: str, name: str, tally: Tally, num_shards: int = 1,
                      stages: tuple[str, ...] = ("chatml",), config: dict | None = None) -> dict:
    """Conversations as kind `sft` shards + manifest; the tally's earlier rejections go into the manifest."""
    writer = DatasetWriter(name, tally)
    for record in records:
        writer.add_conversation(record)
    return writer.write(directory, num_shards, stages, config)


def jsonl_to_shards(input_path: str, directory: str, name: str, num_shards: int = 1, fim_samples_path: str = "",
                    fim_share: float = 0.1, vocabulary=None) -> tuple[dict, Tally]:
    """Conversations of a JSONL file as `sft` shards, optionally mixed with AST-FIM samples (the JSONL that
    `ast-fim --output X.jsonl` writes) making up at most `fim_share` of the records: the report trains on "a
    majority of standard SFT data and a small part of FIM instruction samples". FIM samples beyond the share
    are counted as `fim_over_share`."""
    tally = Tally()
    writer = DatasetWriter(name, tally)
    for _, record in read_jsonl(input_path, tally):
        writer.add_conversation(record)
    config = {"input": input_path}
    if fim_samples_path:
        if not 0.0 <= fim_share < 1.0:
            raise ValueError(f"fim_share must be in [0, 1), got {fim_share}")
        if vocabulary is None:
            # imported here: the Qwen vocabulary loads seqio and TensorFlow, which plain JSONL validation never needs
            from qwencoder_jax.data.vocabulary import QwenVocabulary

            vocabulary = QwenVocabulary()
        budget = int(round(fim_share / (1.0 - fim_share) * len(writer.examples)))
        with open(fim_samples_path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    sample = ast_fim.AstFimSample(**json.loads(line))
                except (json.JSONDecodeError, TypeError) as error:
                    tally.reject(Problem(number, "bad_fim_sample", f"{fim_samples_path}: {error}"))
                    continue
                if budget <= 0:
                    tally.reject(Problem(number, "fim_over_share", sample.key))
                    continue
                writer.add_tokens("ast-fim:" + sample.key, *ast_fim.psm_ids(sample, vocabulary))
                budget -= 1
        config |= {"fim_samples": fim_samples_path, "fim_share": fim_share}
    manifest = writer.write(directory, num_shards, ("chatml", "ast_fim") if fim_samples_path else ("chatml",),
                            config)
    return manifest, tally
