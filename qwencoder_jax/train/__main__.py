"""`python -m qwencoder_jax.train --gin_file=... --gin.KEY=VALUE --workdir=...` (see cli.py)."""

import sys

from qwencoder_jax.train.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
