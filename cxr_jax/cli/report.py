"""(Re)writes a workdir's report from its files alone (no data, no training code):

    python -m cxr_jax.cli.report --workdir=W [--n_boot=1000] [--seed=0]

(also `python -m cxr_jax.report ...`, `cxr-report ...` once installed). W/report.md is
printed and written with W/report.html and W/figures/; what it reads and its statistics:
`cxr_jax/report/__init__.py`.
"""
import argparse

from cxr_jax.report import write_report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--n_boot', type=int, default=1000,
                      help='bootstrap resamples for CIs and paired tests (0: none)')
  parser.add_argument('--seed', type=int, default=0, help='bootstrap seed')
  args = parser.parse_args(argv)
  print(write_report(args.workdir, n_boot=args.n_boot, seed=args.seed).read_text())


if __name__ == '__main__':
  main()
