"""Vector flows beyond RealNVP: masked autoregressive flows (MAF, IAF) and neural spline flows
(coupling and autoregressive). ``(B, D)`` data, ``(B, D)`` latent, no preprocessing (standardise
tabular data first), like :class:`~realnvp.VectorRealNVP`.

Which direction is cheap (see :class:`~realnvp.bijectors.MaskedAutoregressive`), per layer:

- :class:`MAF`, :class:`NSFAutoregressive`: ``log_prob`` one MADE pass, ``sample`` D passes.
- :class:`IAF`: ``sample`` and :meth:`~realnvp.Flow.rsample_and_log_prob` one MADE pass,
  ``log_prob`` D passes (differentiable: it can be trained on data, slowly for large D).
- :class:`NSFCoupling`: one network pass both ways.

The variable order changes between layers (``permutation``): ``'reverse'`` alternates the
identity order and its reverse (the MAF paper's choice), ``'random'`` draws one order per layer
from ``seed``. The orders are the MADEs' ``order`` buffers (and a coupling flow's permutations are
buffers too), so a checkpoint restores them exactly, whatever the seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bijectors import BatchNorm, Bijector, ChannelPermutation, Halves, Invertible1x1Conv, Sequential
from ..bijectors.autoregressive import DIRECTIONS, TRANSFORMERS, MaskedAutoregressive
from ..bijectors.splines import SplineCoupling
from ..nets import MLP
from ..nets.context import Conditioned, ContextSlot
from .flow import Flow
from .mog import MADEMoG

PERMUTATIONS = ("reverse", "random")
#: the linear maps :class:`NSFCoupling` can put before its couplings
LINEARS = (None, "lu")


def layer_orders(dim: int, num_layers: int, permutation: str, seed: int) -> list[Tensor]:
    """The MADE order of each layer (``order[d]``: feature ``d``'s rank, 1..D)."""
    if permutation not in PERMUTATIONS:
        raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    identity = torch.arange(1, dim + 1)
    if permutation == "reverse":
        return [identity if i % 2 == 0 else identity.flip(0) for i in range(num_layers)]
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(dim, generator=g) + 1 for _ in range(num_layers)]


class StoredPermutation(ChannelPermutation):
    """:class:`~realnvp.bijectors.ChannelPermutation` whose permutation is in the state dict."""

    def __init__(self, perm: list[int]):
        super().__init__(perm)
        self.register_buffer("perm", self.perm, persistent=True)
        self.register_buffer("inv", self.inv, persistent=True)


def _check_dims(dim: int, num_layers: int, least: int = 1) -> None:
    if dim < least:
        raise ValueError(f"this flow needs at least {least} dimension(s), got dim={dim}")
    if num_layers < 1:
        raise ValueError(f"a flow needs at least one layer, got num_layers={num_layers}")


def _with_batch_norms(layers: list[Bijector], dim: int, batch_norm: bool, momentum: float) -> Sequential:
    """The layers with a :class:`~realnvp.bijectors.BatchNorm` between consecutive ones (MAF §3.4)."""
    chain: list[Bijector] = []
    for i, layer in enumerate(layers):
        if batch_norm and i:
            chain.append(BatchNorm(dim, momentum=momentum))
        chain.append(layer)
    return Sequential(*chain)


class _AutoregressiveFlow(Flow):
    """A stack of :class:`~realnvp.bijectors.MaskedAutoregressive` layers in one direction."""

    direction: str

    def __init__(
        self,
        dim: int,
        num_layers: int = 5,
        hidden: int = 128,
        num_hidden_layers: int = 2,
        residual: bool = False,
        transformer: str = "affine",
        bins: int = 8,
        bound: float = 5.0,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        permutation: str = "reverse",
        seed: int = 0,
        validate_args: bool = True,
        context_features: int = 0,
        mog_components: int = 0,
    ):
        _check_dims(dim, num_layers)
        if transformer not in TRANSFORMERS:
            raise ValueError(f"transformer must be one of {TRANSFORMERS}, got {transformer!r}")
        assert self.direction in DIRECTIONS
        if isinstance(mog_components, bool) or not isinstance(mog_components, int) or mog_components < 0:
            raise ValueError(f"mog_components must be an integer >= 0, got {mog_components!r}")
        if mog_components and self.direction == "iaf":
            raise ValueError("an IAF samples through its base: a mixture base (mog_components) would "
                             "take its reparametrised samples away; use MAF")
        slot = ContextSlot(context_features) if context_features else None
        orders = layer_orders(dim, num_layers + 1, permutation, seed)  # the last: a MoG base's
        layers: list[Bijector] = [
            MaskedAutoregressive(dim, transformer, self.direction, hidden=hidden,
                                 num_layers=num_hidden_layers, residual=residual, order=order,
                                 bins=bins, bound=bound, context=slot)
            for order in orders[:num_layers]
        ]
        base = (MADEMoG(dim, mog_components, hidden=hidden, num_layers=num_hidden_layers, residual=residual,
                        order=orders[-1], context=slot) if mog_components else None)
        super().__init__(_with_batch_norms(layers, dim, batch_norm, bn_momentum), event_shape=(dim,),
                         validate_args=validate_args, context=slot, base=base)
        self.config = dict(
            dim=dim, num_layers=num_layers, hidden=hidden, num_hidden_layers=num_hidden_layers,
            residual=residual, transformer=transformer, bins=bins, bound=bound, batch_norm=batch_norm,
            bn_momentum=bn_momentum, permutation=permutation, seed=seed,
            context_features=context_features, mog_components=mog_components,
        )


class MAF(_AutoregressiveFlow):
    """Masked autoregressive flow (Papamakarios et al., 2017): the density is one MADE pass per
    layer, sampling D sequential passes per layer.

    ``MAF(dim, num_layers=5, hidden=128, num_hidden_layers=2, residual=False,
    transformer='affine', bins=8, bound=5.0, batch_norm=False, bn_momentum=0.1,
    permutation='reverse', seed=0, validate_args=True, context_features=0, mog_components=0)``:
    ``num_layers`` :class:`~realnvp.bijectors.MaskedAutoregressive` layers (``direction='maf'``)
    whose MADEs have ``num_hidden_layers`` hidden layers (or residual blocks, ``residual=True``) of
    width ``hidden``; ``batch_norm=True`` puts a :class:`~realnvp.bijectors.BatchNorm` between
    consecutive layers, as the paper does (§3.4). ``transformer='spline'`` (``bins`` bins on
    ``[−bound, bound]``) is :class:`NSFAutoregressive`. ``mog_components=C`` > 0 replaces the
    ``N(0, I)`` base by a :class:`~realnvp.models.mog.MADEMoG` of ``C`` Gaussians per conditional
    (the paper's "MAF MoG", C = 10; its MADE is as wide and deep as the layers', in the next
    order of the permutation): sampling stays D passes per layer plus the base's, and has no
    reparametrised form (no ``rsample``).
    """

    direction = "maf"


class IAF(_AutoregressiveFlow):
    """Inverse autoregressive flow (Kingma et al., 2016): sampling and the density of its own
    samples (:meth:`~realnvp.Flow.rsample_and_log_prob`) are one MADE pass per layer, the density
    of arbitrary data (:meth:`~realnvp.Flow.log_prob`) D sequential, differentiable passes per
    layer.

    The same arguments as :class:`MAF`; the layers' MADEs read the latent side
    (``direction='iaf'``).
    """

    direction = "iaf"


class NSFAutoregressive(_AutoregressiveFlow):
    """Autoregressive neural spline flow (Durkan et al., 2019, §3.3): the density is one MADE pass
    per layer, sampling D sequential passes per layer.

    :class:`MAF` with rational-quadratic spline transformers (``bins`` bins on
    ``[−bound, bound]``, identity outside); the same arguments but ``transformer``.
    """

    direction = "maf"

    def __init__(
        self,
        dim: int,
        num_layers: int = 5,
        hidden: int = 128,
        num_hidden_layers: int = 2,
        residual: bool = False,
        bins: int = 8,
        bound: float = 5.0,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        permutation: str = "reverse",
        seed: int = 0,
        validate_args: bool = True,
        context_features: int = 0,
        mog_components: int = 0,
    ):
        super().__init__(dim, num_layers, hidden, num_hidden_layers, residual, "spline", bins, bound,
                         batch_norm, bn_momentum, permutation, seed, validate_args, context_features,
                         mog_components)
        del self.config["transformer"]


class NSFCoupling(Flow):
    """Coupling neural spline flow (Durkan et al., 2019, §3.2, "RQ-NSF (C)"): the density and
    sampling are both one network pass per layer.

    ``num_layers`` :class:`~realnvp.bijectors.SplineCoupling` layers on alternating halves of the
    features, MLP conditioners (``num_hidden_layers`` hidden layers of width ``hidden``, plain
    linear layers unless ``weight_norm=True``). ``permutation='random'`` puts a random
    permutation of the features (drawn from ``seed``, kept as a buffer) before every coupling but
    the first; ``None``: none. ``linear='lu'``: an LU-parametrised invertible linear map of the
    features (:class:`~realnvp.bijectors.Invertible1x1Conv` on ``(B, D)``, a random rotation at
    the start, drawn from ``seed``) before every coupling, the NSF reference code's
    ``create_linear_transform`` (each coupling then splits a learned mixture of the features,
    not two fixed halves); ``None``: none. ``batch_norm=True``: a
    :class:`~realnvp.bijectors.BatchNorm` between consecutive couplings.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 8,
        hidden: int = 128,
        num_hidden_layers: int = 2,
        bins: int = 8,
        bound: float = 5.0,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        permutation: str | None = None,
        seed: int = 0,
        weight_norm: bool = False,
        validate_args: bool = True,
        context_features: int = 0,
        linear: str | None = None,
    ):
        _check_dims(dim, num_layers, least=2)
        if permutation not in (None, "random"):
            raise ValueError(f"permutation must be None or 'random', got {permutation!r}")
        if linear not in LINEARS:
            raise ValueError(f"linear must be one of {LINEARS}, got {linear!r}")
        g = torch.Generator().manual_seed(seed)
        slot = ContextSlot(context_features) if context_features else None
        layers: list[Bijector] = []
        for i in range(num_layers):
            if permutation == "random" and i:
                layers.append(StoredPermutation(torch.randperm(dim, generator=g).tolist()))
            if linear == "lu":
                layers.append(Invertible1x1Conv(dim, generator=g, lu=True))
            mask = Halves(dim, flip=bool(i % 2))
            net = MLP(mask.in_features + context_features, mask.out_features * (3 * bins - 1),
                      hidden=hidden, num_layers=num_hidden_layers, weight_norm=weight_norm)
            if slot is not None:
                net = Conditioned(net, slot)
            layers.append(SplineCoupling(mask, net, bins=bins, bound=bound))
        chain: list[Bijector] = []
        for layer in layers:
            if batch_norm and isinstance(layer, SplineCoupling) and chain:
                chain.append(BatchNorm(dim, momentum=bn_momentum))
            chain.append(layer)
        super().__init__(Sequential(*chain), event_shape=(dim,), validate_args=validate_args,
                         context=slot)
        self.config = dict(
            dim=dim, num_layers=num_layers, hidden=hidden, num_hidden_layers=num_hidden_layers, bins=bins,
            bound=bound, batch_norm=batch_norm, bn_momentum=bn_momentum, permutation=permutation, seed=seed,
            weight_norm=weight_norm, context_features=context_features, linear=linear,
        )
