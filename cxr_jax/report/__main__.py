"""python -m cxr_jax.report --workdir=W: the command `cxr_jax.cli.report`, by its old name."""
from cxr_jax.cli import report

report.main()
