"""FLOPs of a JAX function counted from its layer shapes (the convolutions and matmuls of
its jaxpr), independent of the backend that will run it.

Why not XLA's cost analysis of the compiled program: on GPU the convolutions become cuDNN
custom calls that the analysis does not count (it reported 1.0e11 FLOP for a ResNet-50
step whose usual count is ~6e12). The jaxpr is the same on every backend, so the count
is too.

Convention (the one MFU figures use): 2 FLOP per multiply-add of every convolution and
dot_general; element-wise work (BatchNorm, activations, the optimiser update) is not
counted. A gradient's convolutions are counted by their useful work: a transposed
convolution (the input gradient of a strided one, `lhs_dilation` > 1) skips the zeros
that the dilation inserts, so a training step counts ~3x its forward pass.

    flops.count(fn, *args)   # args may be arrays or jax.ShapeDtypeStruct
"""
from __future__ import annotations

import math

import jax


def count(fn, *args, **kwargs) -> float:
  """FLOPs of one call fn(*args, **kwargs): 2 x multiply-adds of its convolutions and
  matmuls, counted on its jaxpr (tracing only: nothing is compiled or run)."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return float(_jaxpr_flops(closed.jaxpr))


def _conv_macs(eqn) -> float:
  """Multiply-adds of one conv_general_dilated: output elements x kernel window x input
  features per group, less the zeros an lhs (input) dilation inserts."""
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  window = math.prod(rhs[d] for d in rhs_spec[2:])
  in_features = rhs[rhs_spec[1]]
  macs = math.prod(out) * window * in_features
  lhs_dilation = eqn.params.get('lhs_dilation') or ()
  return macs / math.prod(lhs_dilation) if lhs_dilation else macs


def _dot_macs(eqn) -> float:
  """Multiply-adds of one dot_general: output elements x contracted size."""
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _sub_jaxprs(eqn):
  """The jaxprs nested in an equation's parameters (jit, remat, custom_vjp, cond...)."""
  for value in eqn.params.values():
    values = value if isinstance(value, (list, tuple)) else (value,)
    for v in values:
      if hasattr(v, 'jaxpr') and hasattr(v.jaxpr, 'eqns'):  # ClosedJaxpr
        yield v.jaxpr
      elif hasattr(v, 'eqns'):  # Jaxpr
        yield v


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += 2 * _conv_macs(eqn)
    elif name == 'dot_general':
      total += 2 * _dot_macs(eqn)
    else:
      subs = [_jaxpr_flops(j) for j in _sub_jaxprs(eqn)]
      if not subs:
        continue
      if name == 'cond':  # one branch runs: count the dearest
        total += max(subs)
      elif name in ('scan', 'while'):  # scan: `length` iterations; a while loop: once
        total += sum(subs) * eqn.params.get('length', 1)
      else:
        total += sum(subs)
  return total
