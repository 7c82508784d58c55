"""lxmert_jax: LXMERT (Tan & Bansal, 2019) in JAX/Flax."""
