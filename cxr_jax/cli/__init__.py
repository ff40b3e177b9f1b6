"""The user's commands, each `python -m cxr_jax.cli.<name>` (and a `cxr-<name>` console
script once installed, setup.cfg):

  launch       runs an experiment (config file or installed config, --workdir)
  sweep        a grid of config overrides, each point its own run, one table
  order_tasks  orders a curriculum of pretext tasks by a short, equal budget each
  report       (re)writes a workdir's report.md
  export       writes a self-contained model folder from a finished run
  predict      a model folder's (or a workdir's) predictions for images, a folder or a CSV
  embed        a finished stage's (or fine-tuning cell's) embeddings of a dataset split
  segment      trains the lung segmenter that config.explain.masks='segmenter:...' reads
  prepare      prepares a dataset (TFDS) from its download
  convert      converts a torchvision/timm ImageNet checkpoint to a flax encoder
  phantom      the phantom dataset's contact sheet

Nothing below this package imports it; the run's own modules (experiment, pretraining,
finetuning, configuration) stay at the package's top.
"""
