"""The import rules of docs/ARCHITECTURE.md, read from the source of every module (and one real import)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qwencoder_jax", "qwencoder_apps", "data_pipelines")
# What data_pipelines may use of the library: the flag style, the text formats, the vocabulary, the sandbox,
# the Generator.
DATA_PIPELINES_MAY_IMPORT = ("qwencoder_jax.cli_flags", "qwencoder_jax.data.fim",
                             "qwencoder_jax.data.special_tokens",
                             "qwencoder_jax.data.vocabulary", "qwencoder_jax.eval.sandbox",
                             "qwencoder_jax.eval.generate")
# Who may import the CPU decode stack: itself, the GGUF converter (it keeps packed blocks), the Generator (CPU only).
CPU_DECODE_USERS = ("qwencoder_jax.cpu_decode", "qwencoder_jax.convert.gguf", "qwencoder_jax.eval.generate")


# The parts of the library and the other parts each may import (docs/ARCHITECTURE.md's table).
LIBRARY_RULES = {
    "model": {"kernels"}, "kernels": set(), "cpu_decode": {"model", "checkpoints"}, "data": {"assets"},
    "sharding": set(), "distributed": {"sharding"}, "allocator": set(), "assets": set(), "checkpoints": {"model"},
    "cli_flags": set(), "train": {"model", "data", "sharding", "distributed", "checkpoints", "allocator"},
    "eval": {"model", "data", "sharding", "checkpoints", "assets", "cpu_decode", "train"},
    "aot": {"model", "sharding", "train"}, "convert": {"model", "checkpoints", "cpu_decode", "assets"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of ours that `path` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from package import module` names a module; `from module import name` names the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def test_the_library_imports_no_application_and_no_data_pipeline():
    offenders = {name: sorted(t for t in targets if t.startswith(("qwencoder_apps", "data_pipelines")))
                 for name, targets in graph().items() if name.startswith("qwencoder_jax")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_each_part_of_the_library_imports_only_what_it_may():
    def part(module: str) -> str:
        return module.split(".")[1] if module.startswith("qwencoder_jax.") else module

    offenders = {}
    for name, targets in graph().items():
        if name.startswith("qwencoder_jax."):
            extra = {part(t) for t in targets} - {part(name)} - LIBRARY_RULES[part(name)] - {"qwencoder_jax"}
            if extra:
                offenders[name] = sorted(extra)
    assert offenders == {}


def test_data_pipelines_imports_only_what_its_readme_allows():
    offenders = {name: sorted(t for t in targets if t.startswith("qwencoder") and t not in DATA_PIPELINES_MAY_IMPORT)
                 for name, targets in graph().items() if name.startswith("data_pipelines")}
    assert {k: v for k, v in offenders.items() if v} == {}
    readme = (ROOT / "data_pipelines" / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in DATA_PIPELINES_MAY_IMPORT)


def test_only_cpu_decoding_imports_the_cpu_decode_stack():
    offenders = sorted(name for name, targets in graph().items()
                       if any(t.startswith("qwencoder_jax.cpu_decode") for t in targets)
                       and not name.startswith(CPU_DECODE_USERS))
    assert offenders == []


def test_training_and_decoding_on_a_mesh_never_load_the_cpu_decode_stack():
    code = ("import sys, qwencoder_jax.train.trainer, qwencoder_jax.eval.generate, qwencoder_jax.checkpoints; "
            "print(sorted(m for m in sys.modules if 'cpu_decode' in m))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target in edges and target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
