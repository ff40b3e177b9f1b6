"""python launch.py --config=configs/X.py --workdir=DIR [--config.a.b=v ...]: the launcher
of a checkout, kept for the documented commands; the command is `cxr_jax/cli/launch.py`
(`python -m cxr_jax.cli.launch`, `cxr-launch` once installed)."""
from cxr_jax.cli import launch

if __name__ == '__main__':
  launch.run()
