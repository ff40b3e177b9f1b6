"""The arrays a run writes beside its checkpoints, each written atomically.

    save_weights / load_weights  {'params', 'batch_stats'} as flax msgpack (float32 numpy
                                 leaves): a finetune cell's selected weights (BEST_WEIGHTS),
                                 a trained segmenter's weights
    save_npz                     predictions, embeddings, attention arrays (.npz)

A bottom-layer module: the fine-tuning cells write these files, and the segmenter, the
exported model and the tools read them, without importing one another.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import serialization

from cxr_jax.train import workdir as workdir_lib

BEST_WEIGHTS = 'best.msgpack'  # a finetune cell's selected {'params', 'batch_stats'}


def save_weights(path: Path, variables):
  """{'params', 'batch_stats'} as flax msgpack (float32 numpy leaves), atomically."""
  tree = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32)
                                if np.asarray(x).dtype.kind in 'fV' else np.asarray(x),
                                jax.device_get(variables))
  with workdir_lib.atomic_open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(tree))


def load_weights(path: Path) -> dict:
  """What `save_weights` wrote (numpy leaves)."""
  return serialization.msgpack_restore(Path(path).read_bytes())


def save_npz(path: Path, **arrays):
  """np.savez_compressed, atomically; arrays of a float type numpy does not know
  (bfloat16 from a model.dtype='bfloat16' run, which np.savez would store as raw 2-byte
  voids) as float32."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  with workdir_lib.atomic_open(path, 'wb') as f:
    np.savez_compressed(f, **{k: v.astype(np.float32) if v.dtype.kind == 'V' else v
                              for k, v in arrays.items()})
