"""`python -m lxmert_jax.data.prepare`: see `lxmert_jax.data.prepare.run`."""

import sys

from lxmert_jax.data.prepare.run import main

if __name__ == "__main__":
  sys.exit(main())
