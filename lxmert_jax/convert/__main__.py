"""`python -m lxmert_jax.convert`: see `lxmert_jax.convert.hf.main`."""

from lxmert_jax.convert.hf import main

if __name__ == "__main__":
  main()
