"""`python -m lxmert_jax.evaluation`: see `lxmert_jax.evaluation.cli`."""

import sys

from lxmert_jax.evaluation.cli import main

if __name__ == "__main__":
  sys.exit(main())
