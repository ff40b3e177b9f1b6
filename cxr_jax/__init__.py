"""cxr_jax: curriculum self-supervised pretraining and fine-tuning on chest X-rays.

`cxr_jax.load_model(DIR)` loads an exported model (cxr_jax/trained.py); it is imported
on first use so that `import cxr_jax` stays light (no JAX)."""


def __getattr__(name):
  if name == 'load_model':
    from cxr_jax.trained import load_model  # keeps `import cxr_jax` light
    return load_model
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
