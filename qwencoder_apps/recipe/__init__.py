"""The recipe run end to end (python -m qwencoder_apps.demo): one module per phase.

sources.py / sft_pairs.py  what goes in (local code, docs, math; ChatML pairs from documented stdlib functions)
data.py                    phase 1, data_pipelines into RUN/data/<dataset>/ with a held-out validation shard
mixtures.py                phase 2, seqio tasks and the report's mixtures
stages.py                  phase 3, the three training stages through the trainer's command line
evaluate.py                phase 4, the final model through `python -m qwencoder_apps.eval`
report.py                  phase 5, tables printed and written to RUN/report.md
config.py                  the sizes: DEMO, QUICK, SMOKE
"""
