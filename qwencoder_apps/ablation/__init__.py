"""The ablation runner's parts: sweep specs (spec.py), running variants (runner.py), the comparison table (collect.py).

The command line is `python -m qwencoder_apps.ablate` (qwencoder_apps/ablate.py).
"""
