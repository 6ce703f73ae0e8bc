"""TensorFlow, imported once without its native startup notices.

Importing TensorFlow 2.21 on a CPU host writes informational lines from its two native libraries straight to file
descriptor 2, before absl logging exists, so `TF_CPP_MIN_LOG_LEVEL` cannot hide them: "WARNING: All log messages
before absl::InitializeLog() is called are written to STDERR", the oneDNN notice, "Could not find cuda drivers", the
CPU-instructions notice. They are not problems (TensorFlow only reads and writes TFRecords here), yet a normal run
would print a WARNING line. This module imports TensorFlow with descriptor 2 captured and writes back every line
except those known notices, so anything else TensorFlow says (a real error) still shows. Import `tensorflow` from
here (or import this module) before seqio or tensorflow_datasets, which import TensorFlow themselves.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

STARTUP_NOTICES = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def without_startup_notices(text: str) -> str:
    """`text` without the lines that are TensorFlow's known startup notices."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(notice.match(line.rstrip("\n")) for notice in STARTUP_NOTICES))


def _import_quietly():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # the one place the process imports it first (see the module docstring)
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            sys.stderr.write(without_startup_notices(captured.read().decode("utf-8", errors="replace")))
            sys.stderr.flush()
    return tensorflow


tensorflow = _import_quietly()
