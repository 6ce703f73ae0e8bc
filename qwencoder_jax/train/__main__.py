"""`python -m qwencoder_jax.train --gin_file=... --gin.KEY=VALUE --workdir=...` (see cli.py)."""

import sys

from qwencoder_jax import allocator

if __name__ == "__main__":
    allocator.use_tcmalloc()  # before JAX is imported (qwencoder_jax/allocator.py)

from qwencoder_jax.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
