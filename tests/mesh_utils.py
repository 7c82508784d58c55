"""Device meshes of the 8 fake CPU devices, by name, for the sharding tests."""

from __future__ import annotations

from typing import Mapping

import jax

from lxmert_jax.training import sharding as sharding_lib


def named_mesh(name: str, meshes: Mapping[str, Mapping[str, int]]) -> jax.sharding.Mesh:
  """`meshes[name]` over all devices, or "single": a one-device mesh (the reference)."""
  if name == "single":
    return sharding_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  return sharding_lib.make_mesh(meshes[name])
