"""HumanEval's chat (instruct) mode: the prompt rendered from the model's own chat template as transformers renders
it, code taken from the reply's fenced block, and the resulting programs scored by the real sandbox."""

from __future__ import annotations

import pytest

from qwencoder_jax.eval import chat, humaneval
from qwencoder_jax.eval.options import EvalOptions


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


@pytest.fixture(scope="module")
def template():
    from qwencoder_jax.convert.gguf import GGUFFile
    from qwencoder_jax.convert.published import cached_gguf

    return str(GGUFFile(cached_gguf()).value("tokenizer.chat_template"))


@pytest.mark.parametrize("reply,code", [
    ("```python\ndef f():\n    return 1\n```\nIt returns one.", "def f():\n    return 1\n"),
    ("Here:\n```py\nx = 1\n```\n```python\ny = 2\n```", "x = 1\n"),       # the first block
    ("```python\ndef f():\n    return 1\n", "def f():\n    return 1\n"),      # never closed: to the end
    ("def f():\n    return 1\n", "def f():\n    return 1\n"),                 # no fence: the whole reply
])
def test_code_comes_from_the_first_fenced_block(reply, code):
    assert humaneval.extract_code(reply) == code


def test_chat_prompt_is_what_transformers_renders(problems, template):
    from transformers.utils.chat_template_utils import render_jinja_template

    problem = problems[0]
    ours = humaneval.chat_prompt(problem, template)
    user = f"{humaneval.INSTRUCTION}\n```\n{problem['prompt'].strip()}\n```\n"
    rendered = render_jinja_template([[{"role": "user", "content": user},
                                       {"role": "assistant", "content": f"{humaneval.RESPONSE}\n```python\n"}]],
                                     chat_template=template, continue_final_message=True)[0][0]
    assert ours.rstrip() == rendered.rstrip() and ours.endswith("```python\n")
    assert ours.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" + humaneval.RESPONSE in ours
    assert chat.render(template, [{"role": "user", "content": "hi"}], add_generation_prompt=True).endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_replies_are_scored_in_the_sandbox(problems):
    chosen = problems[:3]
    # a reply continues the opened fence with a whole script, closes it and explains: the script must pass
    right = [p["prompt"] + p["canonical_solution"] + "```\nThis solves it." for p in chosen]
    wrong = [p["prompt"] + "    return None\n```" for p in chosen]
    records = humaneval.execute(chosen, [[humaneval.chat_completion(r), humaneval.chat_completion(w)]
                                         for r, w in zip(right, wrong)], EvalOptions(workers=2))
    assert [r["statuses"][0] for r in records] == ["passed"] * 3
    assert all(r["statuses"][1] != "passed" for r in records)


def test_chat_mode_needs_a_template(problems):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="needs the checkpoint's chat template"):
        humaneval.prompts_of(NoTemplate(), problems[:1], EvalOptions(chat=True))


def test_greedy_problems_are_generated_in_blocks(problems):
    calls = []

    class Recorder:
        chat_template = None

        def generate(self, prompts, sampling):
            calls.append(len(prompts))
            return [f"    return {len(calls)}\n" for _ in prompts]

    indexed = list(enumerate(problems[:19]))
    texts = humaneval.generate(Recorder(), indexed, EvalOptions(num_samples=2))
    assert calls == [8, 8, 3] and len(texts) == 19 and texts[18] == ["    return 3\n"] * 2
    calls.clear()
    humaneval.generate(Recorder(), indexed[:3], EvalOptions(temperature=0.8))
    assert calls == [1, 1, 1]  # sampling: one call per problem, each with its own seed
