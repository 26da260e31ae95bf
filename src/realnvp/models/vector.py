"""RealNVP for vectors (tabular data, 2-D toy densities)."""

from __future__ import annotations

from ..bijectors import BatchNorm, Bijector, HalfCouplings, Halves, Sequential
from ..nets import MLP
from ..nets.context import Conditioned, ContextSlot
from .flow import Flow
from .image import COUPLINGS


class VectorRealNVP(Flow):
    """Couplings on alternating halves of the features, with MLP s/t networks (weight-normalised
    unless ``weight_norm=False``) and (optionally) a :class:`~realnvp.bijectors.BatchNorm` after
    each coupling. ``(B, D)`` data, ``(B, D)`` latent; no preprocessing (standardise tabular data
    first). ``memory_saving=True``: see :meth:`~realnvp.Flow.memory_saving_`.

    ``batch_norm=False, weight_norm=False`` is the plain architecture of FrEIA, zuko and normflows
    (couplings and MLPs only), the fastest per step for small vector models; the defaults follow
    the paper's image model.

    ``context_features=k > 0``: the conditional flow ``p(x | c)`` for a ``(B, k)`` context that
    every s/t network takes beside its half of the features (see :mod:`realnvp.nets.context`)."""

    def __init__(
        self,
        dim: int,
        num_couplings: int = 8,
        hidden: int = 128,
        num_layers: int = 2,
        coupling: str = "affine",
        batch_norm: bool = True,
        bn_momentum: float = 0.1,
        validate_args: bool = True,
        memory_saving: bool = False,
        weight_norm: bool = True,
        context_features: int = 0,
    ):
        if dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 dimensions, got dim={dim}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {sorted(COUPLINGS)}, got {coupling!r}")
        affine = coupling == "affine"
        slot = ContextSlot(context_features) if context_features else None
        layers: list[Bijector] = []
        for i in range(num_couplings):
            mask = Halves(dim, flip=bool(i % 2))
            out = mask.out_features * (2 if affine else 1)
            followed_by_bn = batch_norm and i < num_couplings - 1
            net = MLP(mask.in_features + context_features, out, hidden=hidden, num_layers=num_layers,
                      out_bias=affine or not followed_by_bn, weight_norm=weight_norm)
            if slot is not None:
                net = Conditioned(net, slot)
            layers.append(COUPLINGS[coupling](mask, net))
            if followed_by_bn:
                layers.append(BatchNorm(dim, momentum=bn_momentum))
        chain = Sequential(*layers) if batch_norm else HalfCouplings(*layers)
        super().__init__(chain, event_shape=(dim,), validate_args=validate_args, context=slot)
        self.config = dict(
            dim=dim, num_couplings=num_couplings, hidden=hidden, num_layers=num_layers,
            coupling=coupling, batch_norm=batch_norm, bn_momentum=bn_momentum, weight_norm=weight_norm,
            context_features=context_features,
        )
        if memory_saving:
            self.memory_saving_(True)
