"""Data parallelism over all devices of all processes: one mesh axis, 'data'.

Batches are sharded along their first axis, parameters and optimizer state replicated.
Because a jit-compiled step sees the *global* batch, every reduction over the batch axis
(BatchNorm statistics, contrastive negatives) spans all devices without collectives
written by hand.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batches -> global jax arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
  """Puts a pytree (params, optimizer state...) on every device."""
  return jax.device_put(tree, replicated(mesh))
