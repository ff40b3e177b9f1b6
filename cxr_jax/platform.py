"""Process-level setup, done once before JAX touches a device: multi-process runtime."""
from __future__ import annotations

import os


def setup(coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None) -> None:
  """Initialises `jax.distributed` when this is one process of a multi-process run
  (flags given, or the usual JAX_COORDINATOR_ADDRESS environment variable set)."""
  if coordinator_address or 'JAX_COORDINATOR_ADDRESS' in os.environ:
    import jax
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
