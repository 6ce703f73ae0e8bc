"""Sweep specs: a set of named variants of one training run, each a list of gin files and gin bindings.

Design notes: docs/ABLATIONS.md, section `qwencoder_apps/ablation/spec.py`.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Iterable, Sequence

GIN_DIR = Path(__file__).resolve().parents[2] / "gin"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
    """A sweep spec that cannot be run; the message names the variant or file and what to fix."""


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    gin_files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sweep:
    variants: tuple[Variant, ...]
    gin_files: tuple[str, ...] = ()  # before every variant's files
    overlays: tuple[str, ...] = ()  # after every variant's files
    bindings: tuple[str, ...] = ()  # before every variant's bindings
    extra_bindings: tuple[str, ...] = ()  # after every variant's bindings (the command line's --gin.KEY=VALUE)
    description: str = ""

    def __post_init__(self):
        if not self.variants:
            raise SweepError("the sweep has no variants: give --sweep=FILE (.sweep or .gin) or --variant NAME=...")
        names = [variant.name for variant in self.variants]
        for name in names:
            if not _NAME.match(name):
                raise SweepError(f"variant name {name!r} is not usable as a directory name: use letters, digits, "
                                 "'_', '.' and '-', starting with a letter or digit")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SweepError(f"variant names {duplicates} appear more than once; every variant needs its own name "
                             "(it names the variant's workdir)")
        for variant in self.variants:
            if not (variant.gin_files or variant.bindings):
                raise SweepError(f"variant {variant.name!r} has neither gin files nor bindings: it would be the "
                                 "base run itself; give it what it changes")
            for path in (*self.gin_files, *variant.gin_files, *self.overlays):
                resolve_gin_file(path, f"variant {variant.name!r}")
            for binding in (*self.bindings, *variant.bindings, *self.extra_bindings):
                check_binding(binding, f"variant {variant.name!r}")

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"no variant {name!r} in the sweep; it has {[v.name for v in self.variants]}")

    def gin_files_of(self, variant: Variant) -> list[str]:
        return [str(resolve_gin_file(p)) for p in (*self.gin_files, *variant.gin_files, *self.overlays)]

    def bindings_of(self, variant: Variant) -> list[str]:
        return [*self.bindings, *variant.bindings, *self.extra_bindings]

    def train_arguments(self, variant: Variant, workdir: str) -> list[str]:
        """The arguments of `python -m qwencoder_apps.train` for one variant (see the module docstring)."""
        return ([f"--gin_file={path}" for path in self.gin_files_of(variant)]
                + [f"--gin_bindings={binding}" for binding in self.bindings_of(variant)]
                + [f"--workdir={workdir}"])


def resolve_gin_file(path: str, context: str = "sweep") -> Path:
    for candidate in (Path(path), GIN_DIR / path):
        if candidate.is_file():
            return candidate.resolve()
    raise SweepError(f"{context}: gin file {path!r} not found (looked at {Path(path).absolute()} and "
                     f"{GIN_DIR / path}); fix the path")


def check_binding(binding: str, context: str = "sweep") -> None:
    if "=" not in binding or not binding.split("=", 1)[0].strip():
        raise SweepError(f"{context}: binding {binding!r} is not of the form 'KEY = VALUE' (strings need their "
                         "quotes: 'CODE_DIR = \"runs/data/code\"')")


def _strings(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SweepError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def load_sweep_file(path: str | Path) -> Sweep:
    """A `.sweep` (TOML) file, or a `.gin` file as a one-variant sweep."""
    path = Path(path)
    if path.suffix == ".gin":
        resolved = resolve_gin_file(str(path))
        return Sweep(variants=(Variant(resolved.stem, gin_files=(str(resolved),)),))
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found; give a .sweep (TOML) or .gin file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"sweep file {path} is not valid TOML: {error}") from error
    known = {"description", "gin_files", "overlays", "bindings", "variants"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SweepError(f"sweep file {path}: unknown keys {unknown}; the keys are {sorted(known)}")
    variants_table = data.get("variants")
    if not isinstance(variants_table, dict) or not variants_table:
        raise SweepError(f"sweep file {path} has no [variants.NAME] tables; add one per variant, each with "
                         "gin_files and/or bindings")
    variants = []
    for name, entry in variants_table.items():
        if not isinstance(entry, dict):
            raise SweepError(f"sweep file {path}: variants.{name} must be a table with gin_files/bindings")
        extra = sorted(set(entry) - {"gin_files", "bindings"})
        if extra:
            raise SweepError(f"sweep file {path}: variants.{name} has unknown keys {extra}; use gin_files and "
                             "bindings")
        # Relative gin files are looked up beside the sweep file too, so a sweep can ship its own overlays.
        files = tuple(_beside(p, path) for p in _strings(entry.get("gin_files", []), f"variants.{name}.gin_files"))
        variants.append(Variant(name, files, _strings(entry.get("bindings", []), f"variants.{name}.bindings")))
    return Sweep(variants=tuple(variants),
                 gin_files=tuple(_beside(p, path) for p in _strings(data.get("gin_files", []), "gin_files")),
                 overlays=tuple(_beside(p, path) for p in _strings(data.get("overlays", []), "overlays")),
                 bindings=_strings(data.get("bindings", []), "bindings"),
                 description=str(data.get("description", "")))


def _beside(gin_path: str, sweep_path: Path) -> str:
    candidate = sweep_path.parent / gin_path
    return str(candidate) if not Path(gin_path).is_absolute() and candidate.is_file() else gin_path


def parse_variant_flag(text: str) -> Variant:
    """`NAME=ITEM;ITEM...`: items ending in .gin are gin files, the others bindings KEY=VALUE."""
    name, separator, items = text.partition("=")
    if not separator or not name.strip() or not items.strip():
        raise SweepError(f"--variant {text!r}: write NAME=FILE.gin or NAME=KEY=VALUE (several items joined by ';')")
    files, bindings = [], []
    for item in (part.strip() for part in items.split(";")):
        if not item:
            continue
        if item.endswith(".gin"):
            files.append(item)
        else:
            key, equals, value = item.partition("=")
            if not equals:
                raise SweepError(f"--variant {name}: item {item!r} is neither a .gin file nor a binding KEY=VALUE")
            bindings.append(f"{key.strip()} = {value.strip()}")
    return Variant(name.strip(), tuple(files), tuple(bindings))


def build_sweep(sweep_files: Sequence[str] = (), variant_flags: Sequence[str] = (), overlays: Iterable[str] = (),
                extra_bindings: Iterable[str] = ()) -> Sweep:
    """One sweep from --sweep files (their variants in order, then --variant flags) plus command-line overlays
    and bindings. Several .sweep files may be combined only if they agree on their shared files and bindings."""
    loaded = [load_sweep_file(path) for path in sweep_files]
    shared = {(s.gin_files, s.overlays, s.bindings) for s in loaded if len(s.variants) > 1 or s.bindings
              or s.gin_files or s.overlays}
    if len(shared) > 1:
        raise SweepError(f"sweep files {list(sweep_files)} set different shared gin_files/overlays/bindings; "
                         "merge them into one .sweep file")
    gin_files, sweep_overlays, bindings = shared.pop() if shared else ((), (), ())
    variants = [v for s in loaded for v in s.variants] + [parse_variant_flag(f) for f in variant_flags]
    description = "; ".join(s.description for s in loaded if s.description)
    return Sweep(variants=tuple(variants), gin_files=gin_files, overlays=(*sweep_overlays, *overlays),
                 bindings=bindings, extra_bindings=tuple(extra_bindings), description=description)
