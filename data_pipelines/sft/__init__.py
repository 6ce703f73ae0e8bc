"""Instruction-tuning (stage 3) data tools, report section 4.

  chatml.py     ChatML conversations from JSONL: validation, counted rejections, `sft` shards (FORMAT.md)
  langid.py     programming-language identification (fastText trained on local source trees, by extension)
  synthesis.py  instruction/response pairs from code snippets through a pluggable model (HTTP or checkpoint)
  judge.py      checklist scoring (weighted criteria from a config) with a keep threshold
  execution.py  multilingual sandbox validation (compile + run with tests), rejection sampling
  ast_fim.py    FIM-instruction samples whose middle is a whole syntactic unit (tree-sitter)
  decontam.py   10-gram decontamination of conversations against evaluation sets
Every tool reads and writes JSONL of records with a `messages` list and keeps `kept + rejected == read`.
"""
