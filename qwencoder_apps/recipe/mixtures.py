"""Phase 2: the datasets registered as seqio tasks and the report's mixtures built over them.

Task names are the ones the stage gin files register for training (code, text, math, repo, sft), so what is shown
here is what the trainer reads: the stage-1 file-level mixture code:text:math 70:20:10 (shares of tokens; the
record rates that give them come from each task's tokens per record, since a long file is many rows of windows)
and the stage-2 repo-level mixture, with their record and token shares, and one sample of each kind as the model
sees it (FIM sentinels, repository headers, ChatML).
"""

from __future__ import annotations

from qwencoder_jax.data import tensorflow_import  # noqa: F401  (first: quiets TensorFlow's startup notices)
import seqio

from qwencoder_jax.data import fim, samples, shards, tasks
from qwencoder_apps.recipe.config import RecipeConfig

NOTE = ("mixtures: the report's 70:20:10 is a share of tokens; the registered record rates are the token shares "
        "divided by each task's tokens per record, measured on its first 64 records "
        "(tasks.register_recipe_mixtures), so the token shares drawn match it in expectation.")
KINDS = {"code": "code_file", "repo": "code_repo", "text": "text", "math": "math", "sft": "sft"}


def register(data_dirs: dict[str, str], recipe: RecipeConfig) -> dict:
    """Registers every dataset's train split and the recipe mixtures; returns what was built (for the report)."""
    lengths = {"code": recipe.stage1.sequence_length, "text": recipe.stage1.sequence_length,
               "math": recipe.stage1.sequence_length, "repo": recipe.stage2.sequence_length,
               "sft": recipe.stage3.sequence_length}
    for name, kind in KINDS.items():
        tasks.register_source(name, data_dirs[name], kind, max_tokens=lengths[name] + 1,
                              fim_config=fim.FimConfig(fim_rate=0.0 if kind in ("text", "math", "sft") else 0.5))
    names = tasks.register_recipe_mixtures(code="code", text="text", math="math", repo="repo")
    mean_tokens = {name: tasks.mean_record_tokens(name) for name in KINDS}
    mixtures = {}
    for mixture in ("stage1_70_20_10", "stage2_repo"):
        provider = seqio.get_mixture_or_task(mixture)
        rates = {task.name: provider.get_rate(task) for task in provider.tasks}
        total = sum(rates.values())
        token_mass = {task: rate * mean_tokens[task] for task, rate in rates.items()}
        token_total = sum(token_mass.values())
        mixtures[mixture] = {task: {"document_share": rates[task] / total,
                                    "token_share": token_mass[task] / token_total} for task in rates}
    return {"registered_mixtures": names, "mean_document_tokens": mean_tokens, "mixtures": mixtures}


def sample_text(name: str, max_chars: int = 240) -> str:
    """The first training document of a registered task, decoded (special tokens shown), cut for printing."""
    spec, vocabulary = tasks.SOURCE_SPECS[name], tasks.VOCABULARIES[name]
    source = shards.RecordSource(shards.split_files(spec.dataset_dir, spec.split))
    counter = fim.BadInputCounter()
    for index in range(min(len(source), 32)):
        documents = samples.build_documents(source[index], spec, vocabulary, counter)
        if documents:
            text = vocabulary.decode(documents[0]["ids"].tolist())
            return text[:max_chars] + (" ..." if len(text) > max_chars else "")
    return "(no usable document among the first records)"


MIXTURE_HEADER = ["mixture", "task", "record share", "token share", "tokens/record"]


def as_rows(built: dict) -> list[list]:
    rows = []
    for mixture, shares in built["mixtures"].items():
        for task, share in shares.items():
            rows.append([mixture, task, f"{share['document_share']:.1%}", f"{share['token_share']:.1%}",
                         f"{built['mean_document_tokens'][task]:.0f}"])
    return rows
