"""Invertible layers. Every one returns ``(output, log_det)`` in both directions; see
:mod:`realnvp.bijectors.base` for the contract."""

from .autoregressive import MaskedAutoregressive
from .base import Bijector, Inverse, Sequential, sum_except_batch, zero_log_det
from .cnf import CNF, ODESolverError
from .coupling import AdditiveCoupling, AffineCoupling, HalfCouplings
from .elementwise import ElementwiseAffine
from .glow import (
    GlowAdditiveCoupling,
    GlowAffineCoupling,
    GlowNet,
    LearnedPrior,
    Shift,
    SplitPrior,
    ZeroConv2d,
)
from .linear import Invertible1x1Conv
from .masks import Checkerboard, Halves, Mask, Unmasked, checkerboard
from .multiscale import MultiScale
from .normalization import ActNorm, BatchNorm
from .planar import NoDensityDirection, Planar
from .preprocessing import Dequantize, Logit, bits_per_dim
from .radial import Radial
from .splines import SplineCoupling, rational_quadratic
from .squeeze import ChannelPermutation, Squeeze, checkerboard_colour_order

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNorm",
    "Bijector",
    "CNF",
    "ChannelPermutation",
    "Checkerboard",
    "Unmasked",
    "Dequantize",
    "ElementwiseAffine",
    "GlowAdditiveCoupling",
    "GlowAffineCoupling",
    "GlowNet",
    "HalfCouplings",
    "Halves",
    "Inverse",
    "Invertible1x1Conv",
    "LearnedPrior",
    "Logit",
    "MaskedAutoregressive",
    "Mask",
    "MultiScale",
    "NoDensityDirection",
    "Planar",
    "Radial",
    "ODESolverError",
    "Sequential",
    "SplineCoupling",
    "Shift",
    "SplitPrior",
    "Squeeze",
    "ZeroConv2d",
    "bits_per_dim",
    "checkerboard",
    "checkerboard_colour_order",
    "rational_quadratic",
    "sum_except_batch",
    "zero_log_det",
]
