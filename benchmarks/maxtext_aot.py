"""Ahead-of-time compile, side by side: our stage-1 training step against MaxText 0.2.5's `train_compile` for the
Qwen2.5-Coder-7B dimensions, same sequence, per-device batch, remat policy and TPU topology, in one sitting.

    python benchmarks/maxtext_aot.py [--topology v5p-8] [--sequence 8192] [--remat full]

MaxText lives in its own virtualenv (Python 3.12, `maxtext[tpu]==0.2.5`, which brings its own libtpu), created on
first use at $MAXTEXT_VENV (default ~/.cache/qwencoder-jax/venv_maxtext; several minutes). Prints per-device HBM
(MaxText's CompiledMemoryStats vs our memory analysis), each side's compile seconds and the ratios.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qwencoder_jax import cli_flags
from qwencoder_jax.aot import topology as topology_lib

ROOT = Path(__file__).resolve().parents[1]
MAXTEXT = "maxtext[tpu]==0.2.5"
# Qwen2.5-Coder-7B (qwencoder_jax.model.config PRESETS["qwen2.5-coder-7b"]) as MaxText key=value overrides on
# its qwen2.5-7b model config.
QWEN_7B = {"base_emb_dim": 3584, "base_num_decoder_layers": 28, "base_num_query_heads": 28, "base_num_kv_heads": 4,
           "head_dim": 128, "base_mlp_dim": 18944, "vocab_size": 151936}


def maxtext_python() -> str:
    venv = Path(os.environ.get("MAXTEXT_VENV", Path.home() / ".cache/qwencoder-jax/venv_maxtext"))
    python = venv / "bin/python"
    if python.exists() and subprocess.run([str(python), "-c", "import maxtext"], capture_output=True).returncode == 0:
        return str(python)
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python"))) or ["python3.12"]
    print(f"[maxtext_aot] creating {venv} with {MAXTEXT} (first use: several minutes)", file=sys.stderr)
    subprocess.run([candidates[0], "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "uv"], check=True)
    # MaxText's own lower bounds are the combination its release was tested with
    subprocess.run([str(venv / "bin/uv"), "pip", "install", "-q", "--python", str(python), MAXTEXT,
                    "--resolution=lowest"], check=True)
    return str(python)


def run_maxtext(topology: str, sequence: int, remat: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [maxtext_python(), "-m", "maxtext.trainers.pre_train.train_compile", "run_name=aot",
                   f"base_output_directory={out}", "model_name=qwen2.5-7b", f"compile_topology={topology}",
                   "compile_topology_num_slices=1", "per_device_batch_size=1", f"max_target_length={sequence}",
                   f"remat_policy={remat}", "attention=flash", "skip_jax_distributed_system=true",
                   "enable_checkpointing=false", "dataset_type=synthetic", "weight_dtype=float32",
                   "dtype=bfloat16", "override_model_config=true",
                   *[f"{key}={value}" for key, value in QWEN_7B.items()]]
        env = {**os.environ, "TPU_ACCELERATOR_TYPE": topology, "JAX_PLATFORMS": "cpu", "DECOUPLE_GCLOUD": "TRUE"}
        env.pop("PYTHONPATH", None)
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode:
        raise RuntimeError("MaxText train_compile failed:\n" + log[-3000:])
    figures = {"wall_seconds": wall}
    for name in ("argument", "output", "alias", "temp", "generated_code"):
        match = re.search(rf"{name}_size_in_bytes=(\d+)", log)
        if match:
            figures[f"{name}_bytes"] = int(match.group(1))
    if "temp_bytes" not in figures:
        raise RuntimeError("no CompiledMemoryStats in MaxText's output:\n" + log[-3000:])
    figures["per_device_bytes"] = (figures["argument_bytes"] + figures["output_bytes"] - figures.get("alias_bytes", 0)
                                   + figures["temp_bytes"] + figures.get("generated_code_bytes", 0))
    return figures


def run_ours(topology: str, sequence: int, remat: str) -> dict:
    hosts = topology_lib.parse(topology).hosts
    chips_per_host = topology_lib.parse(topology).chips // hosts
    with tempfile.TemporaryDirectory() as out:
        report = Path(out) / "report.json"
        command = [sys.executable, "-m", "qwencoder_apps.aot", "--topology", topology,
                   f"--gin_file={ROOT / 'gin/stages/stage1_file_level.gin'}",
                   f"--gin_file={ROOT / 'gin/models/qwen2.5-coder-7b.gin'}",
                   f"--gin.SEQUENCE_LENGTH={sequence}", f"--gin.BATCH_SIZE={chips_per_host}",  # one row per chip
                   f"--gin.REMAT_POLICY=\"{remat}\"", "--json", str(report)]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if not report.exists():
            raise RuntimeError("our aot compile failed:\n" + result.stderr[-3000:])
        figures = json.loads(report.read_text())
    figures["wall_seconds"] = wall
    return figures


def main(argv=None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="v5p-8")
    parser.add_argument("--sequence", type=int, default=8192)
    parser.add_argument("--remat", default="full", help="MaxText and our name for it: full")
    args = parser.parse_args(argv)
    ours = run_ours(args.topology, args.sequence, args.remat)
    theirs = run_maxtext(args.topology, args.sequence, args.remat)
    gib = 2**30
    print(f"Qwen2.5-Coder-7B dimensions, {args.topology}, sequence {args.sequence}, 1 row per device, remat "
          f"{args.remat}, splash/flash attention, float32 weights, bfloat16 compute")
    print(f"{'':24}{'ours':>12}{'MaxText':>12}{'ratio':>8}")
    for name in ("argument_bytes", "temp_bytes", "per_device_bytes"):
        print(f"{name + ' GiB':24}{ours[name] / gib:12.2f}{theirs[name] / gib:12.2f}{ours[name] / theirs[name]:8.2f}")
    print(f"{'wall seconds':24}{ours['wall_seconds']:12.1f}{theirs['wall_seconds']:12.1f}"
          f"{ours['wall_seconds'] / theirs['wall_seconds']:8.2f}")
    print(f"our compile seconds (lower + compile): {ours['compile_seconds']:.1f}")
    print(f"per_device_gib_ratio={ours['per_device_bytes'] / theirs['per_device_bytes']:.3f} "
          f"wall_seconds_ratio={ours['wall_seconds'] / theirs['wall_seconds']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
