"""TensorFlow's startup notices are dropped; anything else it writes to stderr is kept."""

import os
import subprocess
import sys

from qwencoder_jax.data.tensorflow_import import without_startup_notices

NOTICES = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796416424.138446   22074 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796416424.138772   22074 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796416424.257502   22074 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
"""


def test_known_notices_are_dropped_and_other_lines_kept():
    other = ("E0000 00:00:1796416424.1 22074 something.cc:1] a real TensorFlow error\n"
             "WARNING: a different warning\n")
    assert without_startup_notices(NOTICES) == ""
    assert without_startup_notices(NOTICES + other) == other
    assert without_startup_notices(other + NOTICES) == other


def test_importing_our_data_modules_prints_nothing():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run([sys.executable, "-c", "import qwencoder_jax.data.tasks, tensorflow_datasets"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
