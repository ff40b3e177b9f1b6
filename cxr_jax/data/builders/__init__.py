"""Dataset builders; importing this package registers every one of them with TFDS."""
from cxr_jax.data.builders import phantom  # noqa: F401
