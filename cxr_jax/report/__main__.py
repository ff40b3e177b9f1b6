"""python -m cxr_jax.report --workdir=W [--n_boot=1000] [--seed=0]"""
from cxr_jax.report import main

main()
