"""Gathering rows of a batch in blocks of whole examples, for the sparse decoders.

The masked-LM and feature-regression decoders can run on the masked rows
only. The rows are gathered within G equal blocks of examples along a
leading block axis rather than across the flattened batch: with the blocks
aligned to the batch's data-parallel shards, the gather and the decoder stay
on the devices that hold the rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def take_rows(x: jax.Array, indices: jax.Array) -> jax.Array:
  """Rows of `x` [B, L, ...] at `indices` [G, K] into each block's (B/G)*L rows.

  Returns:
    [G, K, ...]: block g's rows `indices[g]`, counted over its examples'
    L positions in order.
  """
  groups = indices.shape[0]
  x = x.reshape(groups, -1, *x.shape[2:])
  index = indices.reshape(*indices.shape, *([1] * (x.ndim - 2)))
  return jnp.take_along_axis(x, index, axis=1)
