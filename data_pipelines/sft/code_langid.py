"""Programming-language identification of code snippets and instructions (report section 4.1).

Design notes: docs/DATA.md, section `data_pipelines/sft/code_langid.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import os
import random
import re
import sysconfig
import tempfile
import zipfile
from typing import Iterator, Sequence

from data_pipelines.fasttext_training import train_supervised
from data_pipelines.languages import language_for_path

NO_LANGUAGE = "No Programming Language"
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]{1,3}")
# Extensions that name data, not source, on real machines (.mat is MATLAB's binary data format).
_NOT_SOURCE = frozenset({"Text", "CSV", "TSV", "MATLAB", "Jupyter Notebook"})
_SKIP_DIRS = {".git", "__pycache__", "node_modules/.cache", "test-data", "testdata"}


def default_roots() -> list[str]:
    """Local trees holding real source files (what exists on this machine)."""
    candidates = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], "/usr/lib/node_modules",
                  "/usr/share/nodejs",
                  *glob.glob("/usr/share/go-*/src"), "/usr/lib/rustlib/src", "/usr/lib/ruby", "/usr/share/perl",
                  "/usr/share/perl5", "/usr/include", "/usr/share/cmake", *glob.glob("/usr/share/cmake-*"),
                  "/usr/share/vim", *glob.glob("/usr/share/php*"), "/usr/share/javascript", "/usr/share/doc",
                  *glob.glob("/usr/share/postgresql*"), "/usr/share/lua", *glob.glob("/usr/lib/jvm/*/lib/src.zip")]
    seen, roots = set(), []
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.exists(real) and real not in seen:
            seen.add(real)
            roots.append(path)
    return roots


@functools.lru_cache(maxsize=8)
def _open_zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)  # kept open: src.zip's directory of 30,000 members is slow to re-read per file


@dataclasses.dataclass(frozen=True)
class CodeFile:
    path: str  # a file path, or "ARCHIVE.zip!member"
    language: str
    key: str = ""  # the path relative to the root it was found under: what the train/held-out split hashes

    def read(self, max_bytes: int) -> str | None:
        try:
            if "!" in self.path and self.path.split("!", 1)[0].endswith(".zip"):
                archive, member = self.path.split("!", 1)
                with _open_zip(archive).open(member) as stream:
                    data = stream.read(max_bytes)
            else:
                with open(self.path, "rb") as stream:
                    data = stream.read(max_bytes)
            text = data.decode("utf-8", errors="ignore")
        except OSError:
            return None
        return text if text.strip() and "\0" not in text else None


def list_code_files(roots: Sequence[str], languages: Sequence[str] | None = None) -> dict[str, list[CodeFile]]:
    """language -> files under the roots (zip archives are listed by member), sorted by path."""
    wanted = set(languages) if languages else None
    found: dict[str, list[CodeFile]] = {}

    def add(path: str, name: str, key: str) -> None:
        language = language_for_path(name)
        if language and language not in _NOT_SOURCE and (wanted is None or language in wanted):
            found.setdefault(language, []).append(CodeFile(path, language, key))

    for root in roots:
        if root.endswith(".zip") and os.path.isfile(root):
            with zipfile.ZipFile(root) as archive:
                for member in archive.namelist():
                    add(f"{root}!{member}", member, member)
            continue
        # followlinks: Debian's rust-src links /usr/lib/rustlib/src/rust to /usr/src/rustc-VERSION
        for directory, directories, files in os.walk(root, followlinks=True):
            directories[:] = [d for d in directories if d not in _SKIP_DIRS]
            for name in files:
                path = os.path.join(directory, name)
                add(path, name, os.path.relpath(path, root))
    unique = {}
    for language, files in found.items():
        by_real = {}
        for file in files:
            by_real.setdefault(os.path.realpath(file.path) if "!" not in file.path else file.path, file)
        unique[language] = sorted(by_real.values(), key=lambda f: (f.key, f.path))
    return unique


def is_held_out(key: str, held_out_percent: int) -> bool:
    """Whether a file (by its path relative to its root, CodeFile.key) belongs to the held-out split."""
    return int(hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % 100 < held_out_percent


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def snippets(text: str, lines_per_snippet: int, max_snippets: int) -> Iterator[str]:
    """Consecutive non-blank chunks of `lines_per_snippet` lines: what instruction data's code blocks look like."""
    lines = text.splitlines()
    count = 0
    for start in range(0, len(lines), lines_per_snippet):
        chunk = "\n".join(lines[start:start + lines_per_snippet])
        if len(tokens(chunk)) >= 8:
            yield chunk
            count += 1
            if count >= max_snippets:
                return


@dataclasses.dataclass(frozen=True)
class LangIdConfig:
    files_per_language: int = 300  # sampled (deterministically) per language and split, at most
    min_files: int = 20  # a language with fewer files on this machine is left out
    held_out_percent: int = 20
    lines_per_snippet: int = 30
    snippets_per_file: int = 4
    max_file_bytes: int = 200_000
    epochs: int = 8
    learning_rate: float = 0.5
    dimension: int = 32
    word_ngrams: int = 2
    char_ngrams: tuple[int, int] = (0, 0)  # (minn, maxn); (0, 0) = off (smaller and faster)
    buckets: int = 200_000  # hashed n-gram rows: bounds the model to ~26 MB at dimension 32
    min_code_tokens: int = 3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LabelledSnippets:
    train: list[tuple[str, str]]  # (language, text)
    held_out: list[tuple[str, str]]
    files: dict[str, tuple[int, int]]  # language -> (train files, held-out files)
    train_keys: frozenset[str] = frozenset()  # CodeFile.key of the files used, per split
    held_out_keys: frozenset[str] = frozenset()


def build_dataset(config: LangIdConfig, roots: Sequence[str] | None = None,
                  languages: Sequence[str] | None = None) -> LabelledSnippets:
    listing = list_code_files(roots if roots is not None else default_roots(), languages)
    rng = random.Random(config.seed)
    train, held_out, files = [], [], {}
    used_keys = {False: set(), True: set()}
    for language in sorted(listing):
        if len(listing[language]) < config.min_files:
            continue
        split = {True: [], False: []}
        for file in listing[language]:
            split[is_held_out(file.key, config.held_out_percent)].append(file)
        counts = []
        for held, target in ((False, train), (True, held_out)):
            chosen = split[held][:]
            rng.shuffle(chosen)
            used = 0
            for file in chosen:
                if used >= config.files_per_language:
                    break
                text = file.read(config.max_file_bytes)
                if text is None:
                    continue
                pieces = list(snippets(text, config.lines_per_snippet, config.snippets_per_file))
                if pieces:
                    target.extend((language, piece) for piece in pieces)
                    used_keys[held].add(file.key)
                    used += 1
            counts.append(used)
        if counts[1]:
            files[language] = (counts[0], counts[1])
    if not files:
        raise ValueError(f"no language has {config.min_files} source files under {roots or default_roots()}; "
                         f"install source packages (scripts/apt-packages.txt) or pass other roots")
    return LabelledSnippets(train, [(lang, text) for lang, text in held_out if lang in files], files,
                            frozenset(used_keys[False]), frozenset(used_keys[True]))


def _label(language: str) -> str:
    return "__label__" + language.replace(" ", "_")


def _line(text: str) -> str:
    return " ".join(tokens(text)[:2000])


class CodeLanguageIdentifier:
    def __init__(self, model, config: LangIdConfig = LangIdConfig()):
        self.model = model
        self.config = config

    @classmethod
    def train(cls, examples: Sequence[tuple[str, str]], config: LangIdConfig = LangIdConfig()):
        rows = [f"{_label(language)} {_line(text)}" for language, text in examples]
        random.Random(config.seed).shuffle(rows)
        handle, path = tempfile.mkstemp(suffix=".txt")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write("\n".join(rows) + "\n")
            minn, maxn = config.char_ngrams
            model = train_supervised(path, epoch=config.epochs, lr=config.learning_rate, dim=config.dimension,
                                     wordNgrams=config.word_ngrams, minn=minn, maxn=maxn, bucket=config.buckets,
                                     seed=config.seed)
        finally:
            os.remove(path)
        return cls(model, config)

    @classmethod
    def load(cls, path: str, config: LangIdConfig = LangIdConfig()):
        # fastText's native module loads only when a model is used
        import fasttext

        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no language-ID model; build one with "
                                    f"`python -m data_pipelines.sft langid-train --output {path}`")
        fasttext.FastText.eprint = lambda *args, **kwargs: None
        return cls(fasttext.load_model(path), config)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.model.save_model(path)

    @property
    def languages(self) -> list[str]:
        return sorted(label.replace("__label__", "").replace("_", " ") for label in self.model.labels)

    def predict_batch(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        lines = [_line(text) for text in texts]
        todo = [i for i, line in enumerate(lines) if len(line.split()) >= self.config.min_code_tokens]
        out = [(NO_LANGUAGE, 1.0)] * len(texts)
        if todo:
            # multilinePredict: the wrapper's predict() breaks on NumPy 2 (fasttext 0.9.3)
            labels, probabilities = self.model.f.multilinePredict([lines[i] + "\n" for i in todo], 1, 0.0, "replace")
            for index, label, probability in zip(todo, labels, probabilities):
                out[index] = (label[0].replace("__label__", "").replace("_", " "), float(min(probability[0], 1.0)))
        return out

    def predict(self, text: str) -> tuple[str, float]:
        return self.predict_batch([text])[0]


def accuracy_per_language(identifier: CodeLanguageIdentifier, examples: Sequence[tuple[str, str]]
                          ) -> dict[str, tuple[float, int]]:
    """language -> (accuracy, snippets) on labelled examples; the key "all" holds the micro average."""
    predictions = identifier.predict_batch([text for _, text in examples])
    totals: dict[str, list[int]] = {}
    for (language, _), (predicted, _) in zip(examples, predictions):
        entry = totals.setdefault(language, [0, 0])
        entry[0] += predicted == language
        entry[1] += 1
    result = {lang: (right / count, count) for lang, (right, count) in sorted(totals.items())}
    right = sum(r for r, _ in totals.values())
    count = sum(c for _, c in totals.values())
    result["all"] = (right / max(count, 1), count)
    return result
