"""Flows used as variational posteriors ``q``: sampled from, and scoring their own samples.

Every posterior is a :class:`~realnvp.Flow`; the objective only ever calls
:meth:`~realnvp.Flow.rsample_and_log_prob` (``z ~ N(0, I)`` pushed through the sampling direction,
the bijector's ``inverse``), so any bijector of the package is usable, and the layers that have no
density direction (:class:`~realnvp.bijectors.Planar`, :class:`~realnvp.bijectors.Radial`) too.

:func:`build_posterior` names them: ``gaussian`` (a learned diagonal Gaussian), ``planar`` and
``radial`` (R&M: ``length`` layers after a learned diagonal Gaussian base), ``iaf`` (one MADE pass
per layer when sampling), ``realnvp`` (affine couplings, no batch norm), ``nsf`` (spline
couplings).
"""

from __future__ import annotations

from ..bijectors import Sequential
from ..bijectors.elementwise import ElementwiseAffine
from ..bijectors.planar import Planar
from ..bijectors.radial import Radial
from ..models import IAF, NSFCoupling, VectorRealNVP
from ..models.flow import Flow

POSTERIORS = ("gaussian", "planar", "radial", "iaf", "realnvp", "nsf")


def _sampling_chain(layers) -> Sequential:
    """The layers in sampling order (latent first) as a data-to-latent :class:`Sequential`."""
    return Sequential(*reversed(list(layers)))


class GaussianPosterior(Flow):
    """``q = N(μ, diag σ²)`` with learned ``μ``, ``log σ`` (an invertible flow both ways)."""

    def __init__(self, dim: int):
        super().__init__(_sampling_chain([ElementwiseAffine(dim)]), event_shape=(dim,))
        self.config = dict(dim=dim)


class PlanarFlow(Flow):
    """``length`` :class:`~realnvp.bijectors.Planar` layers after a learned diagonal Gaussian
    base (R&M §4.1). ``log_prob`` raises :class:`~realnvp.bijectors.planar.NoDensityDirection`
    unless ``density_direction=True`` (a numerical inverse, layer by layer)."""

    def __init__(self, dim: int, length: int = 8, base: bool = True, density_direction: bool = False):
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        layers = ([ElementwiseAffine(dim)] if base else []) + \
            [Planar(dim, density_direction) for _ in range(length)]
        super().__init__(_sampling_chain(layers), event_shape=(dim,))
        self.config = dict(dim=dim, length=length, base=base, density_direction=density_direction)


class RadialFlow(Flow):
    """``length`` :class:`~realnvp.bijectors.Radial` layers after a learned diagonal Gaussian
    base; ``density_direction=True``: ``log_prob`` by the layers' closed-form inverses."""

    def __init__(self, dim: int, length: int = 8, base: bool = True, density_direction: bool = False):
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        layers = ([ElementwiseAffine(dim)] if base else []) + \
            [Radial(dim, density_direction) for _ in range(length)]
        super().__init__(_sampling_chain(layers), event_shape=(dim,))
        self.config = dict(dim=dim, length=length, base=base, density_direction=density_direction)


def build_posterior(kind: str, dim: int, length: int = 8, hidden: int = 64) -> Flow:
    """The posterior ``kind`` (one of :data:`POSTERIORS`) on ``dim`` features with ``length``
    layers (``gaussian`` has none; ``hidden``: the width of the IAF's MADEs and the couplings'
    networks)."""
    if kind not in POSTERIORS:
        raise ValueError(f"unknown posterior {kind!r}; choose one of {', '.join(POSTERIORS)}")
    if length < 1 and kind != "gaussian":
        raise ValueError(f"a {kind} posterior needs length >= 1, got {length}")
    if kind == "gaussian":
        return GaussianPosterior(dim)
    if kind == "planar":
        return PlanarFlow(dim, length)
    if kind == "radial":
        return RadialFlow(dim, length)
    if kind == "iaf":
        return IAF(dim, num_layers=length, hidden=hidden)
    if kind == "realnvp":
        return VectorRealNVP(dim, num_couplings=length, hidden=hidden, batch_norm=False, weight_norm=False)
    return NSFCoupling(dim, num_layers=length, hidden=hidden)
