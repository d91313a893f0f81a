"""Fused functional ops. One file per op: reference, Triton kernel, native bindings, autograd.

``softplus(z, zeta)``                                    — σ_ζ(z) = log(1 + exp(ζz))/ζ  (design notes §2.1)
``ee_head(z, weight, output_weight, gate_weight=None, gate_zeta=1.0)`` — the EE head, seed 000 eq. 3.4
"""
from gconv.ops.softplus import softplus, softplus_reference
from gconv.ops.ee_head import ee_head, ee_head_reference

__all__ = ["softplus", "softplus_reference", "ee_head", "ee_head_reference"]
