"""Dataset builders; importing this package registers them with TFDS."""
