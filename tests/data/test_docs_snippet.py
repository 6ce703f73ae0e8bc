"""docs/DATA.md's registration snippet runs as written (in a directory holding the dataset directories it names),
and exits without `Exception ignored` noise from grain's finalisers."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def snippet() -> str:
    text = (ROOT / "docs" / "DATA.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    return next(b for b in blocks if "tasks.register_source" in b)


def test_data_snippet_runs_as_written(tmp_path):
    from qwencoder_jax.data import shards

    code = snippet()
    data = tmp_path / "runs" / "data"
    program = "def f(n):\n    return n + 1\n" * 20
    for name in ("go_code", "stdlib_code", "docs_text", "mmath"):
        kind = {"docs_text": "text", "mmath": "math"}.get(name, "code_file")
        shards.write_dataset(data / name, name, kind, [{"id": f"{name}{i}", "kind": kind, "text": f"# {i}\n" + program}
                                                       for i in range(8)], num_shards=1)
    shards.write_dataset(data / "stdlib_repos", "stdlib_repos", "code_repo",
                         [{"id": f"r{i}", "kind": "code_repo", "repo_name": f"r{i}", "paths": ["a.py", "b.py"],
                           "contents": [program, f"import a\nprint({i})\n"]} for i in range(8)], num_shards=1)
    (tmp_path / "snippet.py").write_text(code)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("{"), result.stdout  # the bad-input counts
    assert "Exception ignored" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
