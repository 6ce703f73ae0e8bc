"""The environment is reproducible: every Python requirement is pinned to one version."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirement_lines(name):
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line


def test_every_requirement_is_pinned():
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        unpinned = [line for line in _requirement_lines(name) if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=<>~]+",
                                                                                   line)]
        assert not unpinned, f"{name} has unpinned requirements: {unpinned}"


def test_required_packages_are_listed():
    names = {re.split(r"[=\[]", line)[0].lower().replace("_", "-") for line in _requirement_lines("requirements.txt")}
    required = {"jax", "flax", "optax", "orbax-checkpoint", "grain", "seqio", "sentencepiece",
                "tensorflow-datasets", "fasttext", "gin-config"}
    assert required <= names, f"missing from requirements.txt: {sorted(required - names)}"
