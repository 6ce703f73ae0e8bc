"""The sizes of one recipe run: how much data, how many steps per stage, how much evaluation.

`DEMO` is sized for about 10 minutes on 2 quiet CPU cores (15 on a busier one); `QUICK` trains a third of its
steps on the same data; `SMOKE` runs the whole recipe on a few dozen documents per source (tests). The model
shape itself is gin/cpu/demo.gin (the tiny preset with the Qwen vocabulary); a stage's rows are batch x sequence.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class StagePlan:
    steps: int
    batch_size: int
    sequence_length: int
    peak_learning_rate: float
    warmup_steps: int

    def tokens(self) -> int:
        return self.steps * self.batch_size * self.sequence_length


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    perplexity_documents: int = 8  # held-out documents per dataset (a long file is many windows)
    perplexity_max_tokens: int = 512  # longer documents are scored in windows of this many tokens
    fim_problems: int = 4  # HumanEval problems whose solution lines become single-line FIM tasks
    humaneval_problems: int = 4
    max_new_tokens: int = 64
    # the published Qwen2.5-Coder-0.5B-Instruct beside the demo model (phase 5, recipe/real_model.py)
    real_humaneval_problems: int = 8  # chat mode; one generation call of 8 problems
    real_max_new_tokens: int = 384
    real_format_documents: int = 3  # held-out records per format
    real_format_chars: int = 1200  # each cut at a line end below this many characters


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    code_files_per_source: int = 1500  # files read from the stdlib and from site-packages each
    max_files_per_repository: int = 150  # packages with more files are skipped (keeps many repositories)
    text_documents: int = 600
    math_documents: int = 4000
    sft_pairs: int = 1500
    repo_max_chars: int = 32_000  # code_repo records are split at this length (a row holds far less anyway)
    num_shards: int = 8  # the last one is held out as the validation split
    workers: int = 2
    verbose_pipelines: bool = True
    stage1: StagePlan = StagePlan(steps=240, batch_size=4, sequence_length=256, peak_learning_rate=3e-3,
                                  warmup_steps=10)
    stage2: StagePlan = StagePlan(steps=100, batch_size=2, sequence_length=512, peak_learning_rate=2e-3,
                                  warmup_steps=5)
    stage3: StagePlan = StagePlan(steps=80, batch_size=4, sequence_length=256, peak_learning_rate=1e-3,
                                  warmup_steps=5)
    evaluation: EvalPlan = EvalPlan()

    def stage(self, number: int) -> StagePlan:
        return {1: self.stage1, 2: self.stage2, 3: self.stage3}[number]

    def data_fields(self) -> dict:
        """What the datasets depend on: two sizes with equal data fields can share RUN/data (--reuse_data)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if not field.name.startswith("stage") and field.name not in ("evaluation", "verbose_pipelines",
                                                                               "workers")}


DEMO = RecipeConfig()

SMOKE = RecipeConfig(
    code_files_per_source=60, max_files_per_repository=40, text_documents=40, math_documents=80, sft_pairs=60,
    repo_max_chars=8000, num_shards=4, workers=1, verbose_pipelines=False,
    stage1=StagePlan(steps=5, batch_size=2, sequence_length=128, peak_learning_rate=1e-2, warmup_steps=1),
    stage2=StagePlan(steps=4, batch_size=2, sequence_length=128, peak_learning_rate=1e-3, warmup_steps=1),
    stage3=StagePlan(steps=3, batch_size=2, sequence_length=128, peak_learning_rate=1e-3, warmup_steps=1),
    evaluation=EvalPlan(perplexity_documents=2, fim_problems=1, humaneval_problems=1, max_new_tokens=8,
                        real_humaneval_problems=1, real_max_new_tokens=96, real_format_documents=1,
                        real_format_chars=400))

# The demo's data with a third of the steps: for a machine shared with other work.
QUICK = dataclasses.replace(
    DEMO, stage1=dataclasses.replace(DEMO.stage1, steps=80), stage2=dataclasses.replace(DEMO.stage2, steps=33),
    stage3=dataclasses.replace(DEMO.stage3, steps=27), evaluation=EvalPlan(perplexity_documents=4, fim_problems=2,
                                                                            humaneval_problems=2, max_new_tokens=48,
                                                                            real_humaneval_problems=4))

PRESETS = {"demo": DEMO, "quick": QUICK, "smoke": SMOKE}
