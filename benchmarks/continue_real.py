"""Stages 2 and 3 of the recipe continued from the published Qwen2.5-Coder-0.5B-Instruct on CPU: losses and peak memory.

    python benchmarks/continue_real.py                                  # adafactor, embedding and head frozen
    python benchmarks/continue_real.py --optimizer adamw --frozen ""    # every parameter, Adam's two moments
    python benchmarks/continue_real.py --param_dtype float32            # float32 weights (default bfloat16)

Stage 2 trains on repo-level samples of standard-library packages (FIM rate 0.5), stage 3 on ChatML SFT of HumanEval
conversations, `--steps` steps each at `--length` positions, `init_from` the cached conversion of the published
checkpoint (qwencoder_jax.convert.published.cached_checkpoint) and stage 3 from stage 2's workdir. Prints each
stage's first and last loss, the bytes of parameters, gradients and optimizer state for this configuration beside
full AdamW's (the reference), and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import sysconfig
import tempfile
from pathlib import Path

from qwencoder_jax import cli_flags

STAGES = (("real_repo", "code_repo", 0.5), ("real_sft", "sft", 0.0))


def repo_examples() -> list[dict]:
    """Standard-library packages as repositories (code_repo records), three files each."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    examples = []
    for package in ("json", "email", "html", "http", "urllib", "xmlrpc", "wsgiref", "dbm"):
        files = sorted((stdlib / package).glob("*.py"))[:3]
        examples.append({"id": f"repo:{package}", "repo_name": f"python/{package}",
                         "paths": [f"{package}/{f.name}" for f in files],
                         "contents": [f.read_text(encoding="utf-8") for f in files]})
    return examples


def state_bytes(model_config, optimizer_config) -> dict[str, int]:
    """Bytes of parameters, gradients (the trained ones) and optimizer state, from shapes only."""
    # jax loads after the arguments are checked (main), so a mistake answers at once
    import jax
    import jax.numpy as jnp
    import flax.linen as nn

    from qwencoder_jax.model import Transformer
    from qwencoder_jax.train import optimizer as optimizer_lib

    params = nn.meta.unbox(jax.eval_shape(lambda: Transformer(model_config).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
    size = lambda tree: sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    trained = {name: tree for name, tree in params.items() if name not in optimizer_config.frozen}
    state = jax.eval_shape(optimizer_lib.make_optimizer(optimizer_config).init, params)
    return {"params": size(params), "gradients": size(trained), "optimizer_state": size(state)}


def continue_stages(workdir: Path, steps: int = 3, length: int = 96, optimizer: str = "adafactor",
                    frozen: tuple[str, ...] = ("embed", "lm_head"), param_dtype: str = "bfloat16",
                    compute_dtype: str | None = None, learning_rate: float = 1e-5) -> dict[int, list[float]]:
    """Runs stages 2 and 3 in workdir/stage2, workdir/stage3; returns each stage's losses in step order."""
    # jax and the trainer load after the arguments are checked (main)
    from qwencoder_jax import checkpoints, sharding
    from qwencoder_jax.convert.published import cached_checkpoint
    from qwencoder_jax.data import loader, shards
    from qwencoder_jax.eval import format_losses
    from qwencoder_jax.train import optimizer as optimizer_lib
    from qwencoder_jax.train.trainer import DataSource, Trainer, TrainerConfig

    checkpoint = cached_checkpoint()
    shards.write_dataset(workdir / "data" / "real_repo", "stdlib_repos", "code_repo", repo_examples())
    shards.write_dataset(workdir / "data" / "real_sft", "humaneval_chats", "sft",
                         [{"id": f"sft:{n}", "messages": json.dumps(m)}
                          for n, m in enumerate(format_losses.sft_conversations(16))])
    model_config = checkpoints.load_config(checkpoint).replace(param_dtype=param_dtype,
                                                               compute_dtype=compute_dtype or param_dtype)
    optimizer_config = optimizer_lib.OptimizerConfig(name=optimizer, frozen=frozen, peak_learning_rate=learning_rate,
                                                     total_steps=steps)
    losses, init = {}, str(checkpoint)
    for stage, (name, kind, fim_rate) in enumerate(STAGES, 2):
        config = TrainerConfig(
            workdir=str(workdir / f"stage{stage}"), model=model_config, mixture=name, total_steps=steps,
            loader=loader.LoaderConfig(sequence_length=length, batch_size=1),
            data_sources=(DataSource(name, str(workdir / "data" / name), kind, fim_rate),),
            optimizer=optimizer_config, init_from=init, mesh=sharding.MeshConfig(fsdp=1), num_devices=1,
            peak_flops_per_second=1e11, progress_bar=False, checkpoint_every=steps, async_checkpoints=False)
        result = Trainer(config).run()
        if result.stop_reason != "completed":
            raise RuntimeError(f"stage {stage} stopped: {result.stop_reason}")
        losses[stage] = [result.losses[step] for step in sorted(result.losses)]
        init = config.workdir
    return losses


def main(argv=None) -> dict:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adafactor")
    parser.add_argument("--frozen", default="embed,lm_head", help="comma-separated top-level names; '' for none")
    parser.add_argument("--param_dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--compute_dtype", choices=("float32", "bfloat16"), help="default: --param_dtype")
    parser.add_argument("--workdir", help="keep the stages' checkpoints here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.length < 8:
        parser.error("--steps must be >= 1 and --length >= 8")
    frozen = tuple(name for name in args.frozen.split(",") if name)
    if set(frozen) - {"embed", "lm_head", "layers", "final_norm"}:
        parser.error(f"--frozen names top-level parameters (embed, lm_head, layers, final_norm), got {args.frozen!r}")

    # after the arguments are checked: a mistake answers before jax loads
    from qwencoder_jax import checkpoints
    from qwencoder_jax.convert.published import cached_checkpoint
    from qwencoder_jax.train import optimizer as optimizer_lib

    model_config = checkpoints.load_config(cached_checkpoint()).replace(param_dtype=args.param_dtype)
    ours = state_bytes(model_config, optimizer_lib.OptimizerConfig(name=args.optimizer, frozen=frozen))
    adamw = state_bytes(model_config, optimizer_lib.OptimizerConfig())
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        losses = continue_stages(workdir, args.steps, args.length, args.optimizer, frozen, args.param_dtype,
                                 args.compute_dtype)
    for stage, values in losses.items():
        print(f"stage {stage}: first loss {values[0]:.3f}, last loss {values[-1]:.3f} ({len(values)} steps)")
    mib = lambda n: f"{n / 2**20:,.0f} MiB"
    for label, sizes in (("this run", ours), ("full AdamW (reference)", adamw)):
        print(f"{label}: params {mib(sizes['params'])}, gradients {mib(sizes['gradients'])}, "
              f"optimizer state {mib(sizes['optimizer_state'])}, total {mib(sum(sizes.values()))}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ratio = sum(ours.values()) / sum(adamw.values())
    print(f"peak_rss={mib(peak)} state_ratio_to_full_adamw={ratio:.2f}")
    return {"losses": losses, "peak_rss": peak, "state_bytes": ours, "reference_state_bytes": adamw}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
