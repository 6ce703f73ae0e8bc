"""A model's mean token loss on our packed training rows, per data format, and on deliberately wrong formats.

    losses = format_losses.measure(model, params, format_losses.real_documents(vocabulary))

The documents are built by the data pipeline's own sample builders (qwencoder_jax.data.fim, samples) from real
local data: Python standard-library modules (file-level code, PSM fill-in-the-middle, repo-level samples of one
standard-library package) and HumanEval's problems with their canonical solutions as ChatML conversations. Each
correct format has a wrong twin with the loss counted on exactly the same tokens:

    file_level       plain file + <|endoftext|>                       (all tokens)
    fim_psm          <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M      loss on M and <|endoftext|>
    fim_swapped      the prefix and suffix sentinels exchanged          the same tokens
    repo_level       <|repo_name|>name\\n<|file_sep|>path\\n...          loss on everything after the header
    repo_no_header   the same files without the <|repo_name|> line      the same tokens
    sft_chatml       <|im_start|>role\\n...<|im_end|>\\n                  loss on the assistant's reply + <|im_end|>
    sft_misspelled   the assistant's <|im_start|> tag spelled <|im_star|> (plain text)   the same tokens
    sft_text_tags    every <|im_start|> / <|im_end|> written as plain text, not the special tokens
                     (what encoding chat markup without special-token recognition gives)     the reply's tokens

A model trained on these formats (Qwen2.5-Coder was) scores the correct ones low and the wrong ones higher; the
rows are packed (several documents per row, segment ids and positions) as training packs them.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from qwencoder_jax.data import fim, packing, shards
from qwencoder_jax.data.special_tokens import ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END, IM_START
from qwencoder_jax.eval import humaneval
from qwencoder_jax.train.loss import cross_entropy

FORMATS = ("file_level", "fim_psm", "fim_swapped", "repo_level", "repo_no_header", "sft_chatml", "sft_misspelled",
           "sft_text_tags")
WRONG = {"fim_swapped": "fim_psm", "repo_no_header": "repo_level", "sft_misspelled": "sft_chatml",
         "sft_text_tags": "sft_chatml"}
STDLIB_FILES = ("textwrap.py", "bisect.py", "colorsys.py", "fnmatch.py", "heapq.py", "shlex.py")
REPO_PACKAGE = "json"  # a standard-library package: its modules make one repository


def _document(ids, mask) -> dict[str, np.ndarray]:
    return {"ids": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _trim(text: str, max_chars: int) -> str:
    return text[:text.rfind("\n", 0, max_chars) + 1] if len(text) > max_chars else text


def _code(path: Path, max_chars: int) -> str:
    return _trim(path.read_text(encoding="utf-8"), max_chars)


def _file_formats(named_texts, vocabulary, seed: int) -> dict[str, list]:
    special = vocabulary.special_ids
    out: dict[str, list] = {"file_level": [], "fim_psm": [], "fim_swapped": []}
    for name, text in named_texts:
        ids = vocabulary.encode(text) + [special[ENDOFTEXT]]
        out["file_level"].append(_document(ids, [1] * len(ids)))
        prefix, middle, suffix = fim.split_document(text, fim.rng_for(seed, name))
        p, m, s = vocabulary.encode_batch([prefix, middle, suffix])
        tail = m + [special[ENDOFTEXT]]
        for key, (first, second) in (("fim_psm", (FIM_PREFIX, FIM_SUFFIX)), ("fim_swapped", (FIM_SUFFIX, FIM_PREFIX))):
            head = [special[first]] + p + [special[second]] + s + [special[FIM_MIDDLE]]
            out[key].append(_document(head + tail, [0] * len(head) + [1] * len(tail)))
    return out


def file_documents(vocabulary, count: int, max_chars: int, seed: int = 0) -> dict[str, list]:
    return _file_formats([(name, _code(_stdlib() / name, max_chars)) for name in STDLIB_FILES[:count]], vocabulary,
                         seed)


def _repo_formats(repositories, vocabulary) -> dict[str, list]:
    """repositories: (name, [(path, content), ...]) pairs."""
    out: dict[str, list] = {"repo_level": [], "repo_no_header": []}
    for name, contents in repositories:
        header, bodies, tail = fim._repo_parts(name, contents, vocabulary, None)
        body = [token for part in bodies for token in part] + tail
        out["repo_level"].append(_document(header + body, [0] * len(header) + [1] * len(body)))
        out["repo_no_header"].append(_document(body, [1] * len(body)))
    return out


def repo_documents(vocabulary, count: int, max_chars: int) -> dict[str, list]:
    files = sorted((_stdlib() / REPO_PACKAGE).glob("*.py"))
    repositories = []
    for start in range(count):  # rotations of the package's files: `count` samples with different file orders
        chosen = [files[(start + i) % len(files)] for i in range(3)]
        repositories.append((f"python/{REPO_PACKAGE}", [(f"{REPO_PACKAGE}/{path.name}",
                                                         _code(path, max_chars // len(chosen))) for path in chosen]))
    return _repo_formats(repositories, vocabulary)


def _chat(messages, vocabulary, assistant_tag: str | None = None, text_tags: bool = False) -> dict[str, np.ndarray]:
    """samples.chatml_document's layout and loss mask; `assistant_tag` replaces the <|im_start|> token of the
    assistant's turn by that text (a misspelled tag); text_tags: every tag as plain-text tokens."""
    if text_tags:
        ids, mask = [], []
        for message in messages:
            learn = int(message["role"] == "assistant")
            head, content, tail = vocabulary.encode_batch([f"{IM_START}{message['role']}\n", message["content"],
                                                            f"{IM_END}\n"])
            ids += head + content + tail
            mask += [0] * len(head) + [learn] * len(content) + [0] * len(tail)
        return _document(ids, mask)
    special = vocabulary.special_ids
    ids: list[int] = []
    mask: list[int] = []
    for message in messages:
        role, content, newline = vocabulary.encode_batch([f"{message['role']}\n", message["content"], "\n"])
        learn = int(message["role"] == "assistant")
        start = [special[IM_START]]
        if learn and assistant_tag is not None:
            start, role = [], vocabulary.encode(f"{assistant_tag}{message['role']}\n")
        ids += start + role + content + [special[IM_END]] + newline
        mask += [0] * (len(start) + len(role)) + [learn] * (len(content) + 1) + [0] * len(newline)
    return _document(ids, mask)


def sft_conversations(count: int) -> list[list[dict]]:
    """HumanEval problems as conversations: the user asks for the function, the assistant gives the solution."""
    return [[{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": f"Complete the following Python function:\n```python\n"
                                         f"{problem['prompt'].strip()}\n```"},
             {"role": "assistant", "content": f"The function body:\n```python\n{problem['canonical_solution']}```"}]
            for problem in humaneval.load_problems(count)]


def _sft_formats(conversations, vocabulary) -> dict[str, list]:
    out: dict[str, list] = {"sft_chatml": [], "sft_misspelled": [], "sft_text_tags": []}
    for messages in conversations:
        out["sft_chatml"].append(_chat(messages, vocabulary))
        out["sft_misspelled"].append(_chat(messages, vocabulary, assistant_tag="<|im_star|>"))
        out["sft_text_tags"].append(_chat(messages, vocabulary, text_tags=True))
    return out


def sft_documents(vocabulary, count: int) -> dict[str, list]:
    return _sft_formats(sft_conversations(count), vocabulary)


def real_documents(vocabulary, count: int = 3, max_chars: int = 1200, seed: int = 0) -> dict[str, list]:
    """`count` documents per format (FORMATS), from the real local data described in the module docstring."""
    return {**file_documents(vocabulary, count, max_chars, seed), **repo_documents(vocabulary, count, max_chars),
            **sft_documents(vocabulary, count)}


def measure(model, params: Any, documents: dict[str, list], sequence_length: int = 1024) -> dict[str, float]:
    """Mean loss per target token of each format's documents, packed into rows of `sequence_length`."""
    @jax.jit
    def sums(params, batch):
        logits_btv = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], batch["positions"])
        _, stats = cross_entropy(logits_btv, batch["targets"], batch["loss_mask"].astype(jnp.float32))
        return stats["loss_sum"], stats["weight_sum"]

    losses = {}
    for name, docs in documents.items():
        too_long = [len(d["ids"]) for d in docs if len(d["ids"]) - 1 > sequence_length]
        if too_long:
            raise ValueError(f"format {name}: a document of {too_long[0]} tokens does not fit rows of "
                             f"{sequence_length}; lower max_chars")
        loss_sum = weight_sum = 0.0
        for row in pack(docs, sequence_length):  # one row at a time: one compilation for every format
            row_loss, row_weight = sums(params, {k: jnp.asarray(v)[None] for k, v in row.items()})
            loss_sum, weight_sum = loss_sum + float(row_loss), weight_sum + float(row_weight)
        losses[name] = loss_sum / weight_sum
    return losses


def pack(documents: list, sequence_length: int) -> list[dict[str, np.ndarray]]:
    """The documents in rows by training's packer (data/packing.pack_dataset: first fit, unshuffled)."""
    shifted = grain.MapDataset.source([packing.shift_document(d, sequence_length) for d in documents])
    config = packing.PackingConfig(sequence_length=sequence_length, num_packing_bins=4, shuffle_rows=False)
    return list(packing.pack_dataset(shifted.to_iter_dataset(), config))


def dataset_documents(directories, vocabulary, count: int = 3, max_chars: int = 1200, split: str = "validation",
                      seed: int = 0) -> dict[str, list]:
    """The formats of data_pipelines datasets (e.g. a run's own held-out shards): the first `count` records of
    `split` of each directory, by the manifest's kind: code_file -> file_level and the FIM formats, code_repo ->
    the repo formats (each file cut to max_chars / number of files), sft -> the ChatML formats (each message cut to
    max_chars); other kinds are not read."""
    out: dict[str, list] = {}
    for directory in directories:
        kind = shards.read_manifest(directory).get("kind")
        source = shards.RecordSource(shards.split_files(directory, split))
        records = [shards.parse_example(source[index]) for index in range(min(count, len(source)))]
        text = lambda values: [value.decode("utf-8") for value in values]
        if kind == "code_file":
            formats = _file_formats([(f"{directory}:{n}", _trim(text(r["text"])[0], max_chars))
                                     for n, r in enumerate(records)], vocabulary, seed)
        elif kind == "code_repo":
            formats = _repo_formats([(text(r["repo_name"])[0],
                                      [(path, _trim(content, max_chars // len(r["paths"])))
                                       for path, content in zip(text(r["paths"]), text(r["contents"]))])
                                     for r in records], vocabulary)
        elif kind == "sft":
            formats = _sft_formats([[{**m, "content": _trim(m["content"], max_chars)}
                                     for m in json.loads(text(r["messages"])[0])] for r in records], vocabulary)
        else:
            continue
        for name, documents in formats.items():
            out.setdefault(name, []).extend(documents)
    return out
