"""`python -m lxmert_jax.convert`: see `lxmert_jax.convert.cli`."""

from lxmert_jax.convert.cli import main

if __name__ == "__main__":
  main()
