"""Prepare a dataset once: from the folder a user downloaded to validated ArrayRecord files.

  python -m cxr_jax.cli.prepare --dataset=covid_qu_ex --config=infection \\
      --manual_dir=~/data/COVID-QU-Ex --data_dir=~/tensorflow_datasets [--size=256] \\
      [--skip_bad_files] [--workers=8] [--option=split_seed=1 ...]

(`cxr-prepare ...` once installed.) The library, what training configs that name a real
dataset call on first use, is `cxr_jax.data.prepare.prepare`. A validation, overlap or
usage error is printed as one line `error: ...` and the exit code is 1 (`--verbose`: the
traceback too).
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
import traceback
from typing import Any, Optional, Sequence

import tensorflow_datasets as tfds

from cxr_jax.data.prepare import prepare


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare word such as zeros or PA.


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m cxr_jax.cli.prepare',
      description='Validate a downloaded chest X-ray dataset and write it as TFDS '
      'ArrayRecord files.')
  parser.add_argument('--dataset', required=True, help='e.g. covid_qu_ex, chexpert_cxr')
  parser.add_argument('--manual_dir', help='the folder you downloaded and unpacked')
  parser.add_argument('--data_dir', default=os.path.expanduser('~/tensorflow_datasets'),
                      help='where prepared datasets live (default: %(default)s)')
  parser.add_argument('--config', help='builder config to start from (e.g. infection)')
  parser.add_argument('--size', type=int, help='storage size in pixels (default 256)')
  parser.add_argument('--skip_bad_files', action='store_true',
                      help='leave out missing/unreadable files (listed in the metadata)')
  parser.add_argument('--workers', type=int, default=0,
                      help='decoding processes (0: min(8, CPUs); 1: in-process)')
  parser.add_argument('--option', action='append', default=[], metavar='KEY=VALUE',
                      help='any other builder option, e.g. --option=uncertainty=zeros')
  parser.add_argument('--verbose', action='store_true',
                      help="print an error's traceback too (else its message alone)")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  overrides = {}
  if args.size is not None:
    overrides['size'] = args.size
  if args.skip_bad_files:
    overrides['skip_bad_files'] = True
  for item in args.option:
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'--option expects KEY=VALUE, got {item!r}')
    overrides[key.strip()] = _parse_value(value.strip())
  # TFDS's own bars count examples without a total; ours (per split) show an ETA.
  tfds.disable_progress_bar()
  start = time.time()
  try:
    builder = prepare(args.dataset, args.data_dir, manual_dir=args.manual_dir,
                      config=args.config, workers=args.workers, **overrides)
  except ValueError as e:  # Validation, overlap and usage errors: message, no traceback.
    if args.verbose:
      traceback.print_exc()
    print(f'error: {e}', file=sys.stderr)
    return 1
  info = builder.info
  print(f'{builder.name}/{builder.builder_config.name} ready in {builder.data_dir} '
        f'({time.time() - start:.0f} s)')
  for split, split_info in info.splits.items():
    print(f'  {split}: {split_info.num_examples} examples')
  skipped = info.metadata.get('skipped_files', []) if info.metadata else []
  if skipped:
    print(f'  skipped {len(skipped)} bad file(s); listed in builder.info.metadata'
          "['skipped_files']")
  return 0


if __name__ == '__main__':
  sys.exit(main())
