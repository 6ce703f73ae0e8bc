#!/usr/bin/env bash
# MaxText 0.2.5 on the reference CPU training configuration (the one benchmarks/train_throughput.py runs), for the
# side-by-side figure in docs/BENCHMARKS.md. MaxText needs Python 3.12: give one as PYTHON312 (default: python3.12
# on PATH). A virtualenv is made on first use in $MAXTEXT_VENV (default $TMPDIR/venv_maxtext, a few minutes).
# Prints, last, the median tokens/s of the steady-state steps: `maxtext_tokens_per_second=<float>`.
#   bash benchmarks/maxtext_reference.sh            # STEPS=12 by default
set -euo pipefail
venv=${MAXTEXT_VENV:-${TMPDIR:-/tmp}/venv_maxtext}
steps=${STEPS:-12}
python312=${PYTHON312:-$(command -v python3.12 || true)}
if ! "$venv/bin/python" -c "import maxtext" 2>/dev/null; then
  if [ -z "$python312" ]; then
    echo "maxtext_reference.sh: MaxText needs Python 3.12; set PYTHON312=/path/to/python3.12" >&2
    exit 1
  fi
  "$python312" -m venv "$venv"
  "$venv/bin/pip" install -q uv
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" 'maxtext[tpu]==0.2.5' --resolution=lowest
fi
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
# The reference model: 2 layers, hidden 256, 4 query / 2 kv heads of 64, MLP 512, sequence 512, batch 1,
# dot-product attention, synthetic data, no checkpoints (as preset "maxtext-reference" + train_throughput.py).
if ! JAX_PLATFORMS=cpu DECOUPLE_GCLOUD=TRUE "$venv/bin/python" -m maxtext.trainers.pre_train.train \
    run_name=reference base_output_directory="$workdir" dataset_type=synthetic steps="$steps" hardware=cpu \
    skip_jax_distributed_system=true enable_checkpointing=false base_emb_dim=256 base_num_query_heads=4 \
    base_num_kv_heads=2 base_mlp_dim=512 base_num_decoder_layers=2 head_dim=64 max_target_length=512 \
    per_device_batch_size=1 attention=dot_product >"$workdir/train.log" 2>&1; then
  tail -30 "$workdir/train.log" >&2
  exit 1
fi
# the first 3 steps compile; the median of the others
grep -oE 'Tokens/s/device: [0-9.]+' "$workdir/train.log" | awk '{print $2}' | tail -n +4 | sort -n | awk '
  {v[NR] = $1}
  END {
    if (NR == 0) { print "maxtext_reference.sh: no step lines in the MaxText log" > "/dev/stderr"; exit 1 }
    median = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "maxtext_tokens_per_second=%.1f\n", median
  }'
