"""Peer implementations for the benchmark, each behind the same small interface.

Image workloads
    ``chrischute``: a re-implementation, written here from its published structure, of the widely
    used PyTorch RealNVP reproduction (github.com/chrischute/real-nvp, ``models/real_nvp``): the
    same multi-scale layout (3 checkerboard couplings, squeeze, 3 channel-wise couplings, factor
    out; 4 checkerboard couplings at the last scale), the same s/t ResNet (in-norm, concat-ReLU,
    weight-normalised convolutions via ``nn.utils.weight_norm``, pre-activation residual blocks,
    1×1 skip convolutions), ``x * exp(s) + t`` written as ``(x + t) * exp(s)`` as it does, its NaN
    checks, its logit preprocessing and its loss. It has no batch-norm bijector between couplings
    (ours does, as the paper), so it has slightly fewer parameters; the table prints both counts.
    It is not a PyPI package: the label says "re-implementation".

    The PyPI libraries cannot express this architecture, and the table says so instead of timing
    something else: nflows' and FrEIA's coupling layers split channels only (no spatial checkerboard
    mask); zuko has vector flows only; normflows' checkerboard ``Split`` packs the half-image into
    ``(B, C, H, W/2)`` (a different s/t network input) and its ``MaskedAffineFlow`` takes two
    separate networks for s and t.

Vector workloads (RealNVP on 2-D / tabular data: 8 affine couplings on alternating halves, MLP
s/t networks with 2 hidden layers): ``nflows``, ``zuko``, ``FrEIA``, ``normflows``, with hidden
widths chosen so that parameter counts match ours (printed side by side).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# chrischute/real-nvp, re-implemented from its published structure
# --------------------------------------------------------------------------------------------


def _checkerboard_mask(height, width, reverse=False, device=None):
    mask = [[((i % 2) + j) % 2 for j in range(width)] for i in range(height)]
    mask = torch.tensor(mask, dtype=torch.float32, device=device)
    if reverse:
        mask = 1 - mask
    return mask.view(1, 1, height, width)


def _weight_norm(module):
    """``nn.utils.weight_norm`` as the original uses (deprecated in torch, still present)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.utils.weight_norm(module)


class _WNConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, padding, bias=True):
        super().__init__()
        self.conv = _weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding,
                                           bias=bias))

    def forward(self, x):
        return self.conv(x)


class _ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_norm = nn.BatchNorm2d(in_channels)
        self.in_conv = _WNConv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.out_norm = nn.BatchNorm2d(out_channels)
        self.out_conv = _WNConv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x):
        skip = x
        x = self.in_conv(F.relu(self.in_norm(x)))
        x = self.out_conv(F.relu(self.out_norm(x)))
        return x + skip


class _ResNet(nn.Module):
    def __init__(self, in_channels, mid_channels, out_channels, num_blocks, double_after_norm):
        super().__init__()
        self.in_norm = nn.BatchNorm2d(in_channels)
        self.double_after_norm = double_after_norm
        self.in_conv = _WNConv2d(2 * in_channels, mid_channels, 3, 1, bias=True)
        self.in_skip = _WNConv2d(mid_channels, mid_channels, 1, 0, bias=True)
        self.blocks = nn.ModuleList(_ResidualBlock(mid_channels, mid_channels) for _ in range(num_blocks))
        self.skips = nn.ModuleList(_WNConv2d(mid_channels, mid_channels, 1, 0, bias=True)
                                   for _ in range(num_blocks))
        self.out_norm = nn.BatchNorm2d(mid_channels)
        self.out_conv = _WNConv2d(mid_channels, out_channels, 1, 0, bias=True)

    def forward(self, x):
        x = self.in_norm(x)
        if self.double_after_norm:
            x = x * 2.0
        x = F.relu(torch.cat((x, -x), dim=1))
        x = self.in_conv(x)
        x_skip = self.in_skip(x)
        for block, skip in zip(self.blocks, self.skips, strict=True):
            x = block(x)
            x_skip = x_skip + skip(x)
        return self.out_conv(F.relu(self.out_norm(x_skip)))


class _Rescale(nn.Module):
    def __init__(self, num_channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels, 1, 1))

    def forward(self, x):
        return self.weight * x


class _CouplingLayer(nn.Module):
    def __init__(self, in_channels, mid_channels, num_blocks, checkerboard, reverse_mask):
        super().__init__()
        self.checkerboard, self.reverse_mask = checkerboard, reverse_mask
        if not checkerboard:
            in_channels //= 2
        self.st_net = _ResNet(in_channels, mid_channels, 2 * in_channels, num_blocks, checkerboard)
        self.rescale = _weight_norm(_Rescale(in_channels))

    def forward(self, x, sldj, reverse=False):
        if self.checkerboard:
            b = _checkerboard_mask(x.size(2), x.size(3), self.reverse_mask, device=x.device)
            x_b = x * b
            s, t = self.st_net(x_b).chunk(2, dim=1)
            s = self.rescale(torch.tanh(s))
            s, t = s * (1 - b), t * (1 - b)
            if reverse:
                inv_exp_s = s.mul(-1).exp()
                if torch.isnan(inv_exp_s).any():
                    raise RuntimeError("Scale factor has NaN entries")
                x = x * inv_exp_s - t
            else:
                exp_s = s.exp()
                if torch.isnan(exp_s).any():
                    raise RuntimeError("Scale factor has NaN entries")
                x = (x + t) * exp_s
                sldj = sldj + s.reshape(s.size(0), -1).sum(-1)
        else:
            if self.reverse_mask:
                x_id, x_change = x.chunk(2, dim=1)
            else:
                x_change, x_id = x.chunk(2, dim=1)
            s, t = self.st_net(x_id).chunk(2, dim=1)
            s = self.rescale(torch.tanh(s))
            if reverse:
                inv_exp_s = s.mul(-1).exp()
                if torch.isnan(inv_exp_s).any():
                    raise RuntimeError("Scale factor has NaN entries")
                x_change = x_change * inv_exp_s - t
            else:
                exp_s = s.exp()
                if torch.isnan(exp_s).any():
                    raise RuntimeError("Scale factor has NaN entries")
                x_change = (x_change + t) * exp_s
                sldj = sldj + s.reshape(s.size(0), -1).sum(-1)
            x = torch.cat((x_id, x_change) if self.reverse_mask else (x_change, x_id), dim=1)
        return x, sldj


def _squeeze_2x2(x, reverse=False, alt_order=False):
    if alt_order:
        n, c, h, w = x.size()
        if reverse:
            c //= 4
        squeeze_matrix = torch.tensor([[[[1., 0.], [0., 0.]]], [[[0., 0.], [0., 1.]]],
                                       [[[0., 1.], [0., 0.]]], [[[0., 0.], [1., 0.]]]],
                                      dtype=x.dtype, device=x.device)
        perm_weight = torch.zeros((4 * c, c, 2, 2), dtype=x.dtype, device=x.device)
        for c_idx in range(c):
            slice_0 = slice(c_idx * 4, (c_idx + 1) * 4)
            slice_1 = slice(c_idx, c_idx + 1)
            perm_weight[slice_0, slice_1, :, :] = squeeze_matrix
        shuffle_channels = torch.tensor([c_idx * 4 for c_idx in range(c)]
                                        + [c_idx * 4 + 1 for c_idx in range(c)]
                                        + [c_idx * 4 + 2 for c_idx in range(c)]
                                        + [c_idx * 4 + 3 for c_idx in range(c)])
        perm_weight = perm_weight[shuffle_channels, :, :, :]
        if reverse:
            x = F.conv_transpose2d(x, perm_weight, stride=2)
        else:
            x = F.conv2d(x, perm_weight, stride=2)
    else:
        b, c, h, w = x.size()
        x = x.permute(0, 2, 3, 1)
        if reverse:
            x = x.view(b, h, w, c // 4, 2, 2).permute(0, 1, 4, 2, 5, 3)
            x = x.contiguous().view(b, 2 * h, 2 * w, c // 4)
        else:
            x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
            x = x.contiguous().view(b, h // 2, w // 2, c * 4)
        x = x.permute(0, 3, 1, 2)
    return x


class _RealNVPScale(nn.Module):
    def __init__(self, scale_idx, num_scales, in_channels, mid_channels, num_blocks):
        super().__init__()
        self.is_last_block = scale_idx == num_scales - 1
        self.in_couplings = nn.ModuleList(
            _CouplingLayer(in_channels, mid_channels, num_blocks, True, bool(i % 2)) for i in range(3))
        if self.is_last_block:
            self.in_couplings.append(_CouplingLayer(in_channels, mid_channels, num_blocks, True, True))
        else:
            self.out_couplings = nn.ModuleList(
                _CouplingLayer(4 * in_channels, 2 * mid_channels, num_blocks, False, bool(i % 2))
                for i in range(3))
            self.next_block = _RealNVPScale(scale_idx + 1, num_scales, 2 * in_channels,
                                            2 * mid_channels, num_blocks)

    def forward(self, x, sldj, reverse=False):
        if reverse:
            if not self.is_last_block:
                x = _squeeze_2x2(x, reverse=False, alt_order=True)
                x, x_split = x.chunk(2, dim=1)
                x, sldj = self.next_block(x, sldj, reverse)
                x = torch.cat((x, x_split), dim=1)
                x = _squeeze_2x2(x, reverse=True, alt_order=True)
                x = _squeeze_2x2(x, reverse=False)
                for coupling in reversed(self.out_couplings):
                    x, sldj = coupling(x, sldj, reverse)
                x = _squeeze_2x2(x, reverse=True)
            for coupling in reversed(self.in_couplings):
                x, sldj = coupling(x, sldj, reverse)
        else:
            for coupling in self.in_couplings:
                x, sldj = coupling(x, sldj, reverse)
            if not self.is_last_block:
                x = _squeeze_2x2(x, reverse=False)
                for coupling in self.out_couplings:
                    x, sldj = coupling(x, sldj, reverse)
                x = _squeeze_2x2(x, reverse=True)
                x = _squeeze_2x2(x, reverse=False, alt_order=True)
                x, x_split = x.chunk(2, dim=1)
                x, sldj = self.next_block(x, sldj, reverse)
                x = torch.cat((x, x_split), dim=1)
                x = _squeeze_2x2(x, reverse=True, alt_order=True)
        return x, sldj


class ChrischuteRealNVP(nn.Module):
    """RealNVP as in chrischute/real-nvp (``RealNVP(num_scales, in_channels, mid_channels,
    num_blocks)``), with its preprocessing (dequantized input in [0, 1] → logit with
    ``data_constraint`` 0.9) and its loss (:meth:`nll`, nats per image incl. the 256-level term)."""

    def __init__(self, num_scales=2, in_channels=3, mid_channels=64, num_blocks=8, num_levels=256):
        super().__init__()
        self.register_buffer("data_constraint", torch.tensor([0.9], dtype=torch.float32))
        self.num_levels = num_levels
        self.flows = _RealNVPScale(0, num_scales, in_channels, mid_channels, num_blocks)

    def _pre_process(self, x):
        y = (2 * x - 1) * self.data_constraint
        y = (y + 1) / 2
        y = y.log() - (1.0 - y).log()
        ldj = F.softplus(y) + F.softplus(-y) - F.softplus(
            (1.0 - self.data_constraint).log() - self.data_constraint.log())
        return y, ldj.flatten(1).sum(-1)

    def forward(self, x, reverse=False):
        sldj = None
        if not reverse:
            x, sldj = self._pre_process(x)
        else:
            sldj = torch.zeros(x.size(0), device=x.device)
        x, sldj = self.flows(x, sldj, reverse)
        return x, sldj

    def nll(self, x):
        z, sldj = self(x)
        prior_ll = -0.5 * (z ** 2 + math.log(2 * math.pi))
        prior_ll = prior_ll.flatten(1).sum(-1) - math.log(self.num_levels) * z[0].numel()
        return -(prior_ll + sldj)

    @torch.no_grad()
    def sample(self, n, shape):
        z = torch.randn((n, *shape), device=next(self.parameters()).device)
        x, _ = self(z, reverse=True)
        return torch.sigmoid(x)


# --------------------------------------------------------------------------------------------
# Vector flows from PyPI libraries
# --------------------------------------------------------------------------------------------


def nflows_realnvp(dim, num_couplings, hidden, batch_norm=True):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import AffineCouplingTransform, BatchNorm, CompositeTransform

    class Net(nn.Module):  # nflows' MLP does not take the coupling's context argument
        def __init__(self, cin, cout):
            super().__init__()
            self.mlp = MLP((cin,), (cout,), hidden_sizes=[hidden, hidden])

        def forward(self, x, context=None):
            return self.mlp(x)

    layers = []
    for i in range(num_couplings):
        mask = torch.zeros(dim)
        k = dim // 2
        if i % 2:
            mask[:k] = 1
        else:
            mask[k:] = 1
        layers.append(AffineCouplingTransform(mask, Net))
        if batch_norm and i < num_couplings - 1:
            layers.append(BatchNorm(dim))
    return Flow(CompositeTransform(layers), StandardNormal((dim,)))


def zuko_realnvp(dim, num_couplings, hidden):
    import zuko

    return zuko.flows.RealNVP(dim, transforms=num_couplings, hidden_features=(hidden, hidden))


def freia_realnvp(dim, num_couplings, hidden):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(cin, cout):
        return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, cout))

    inn = Ff.SequenceINN(dim)
    for _ in range(num_couplings // 2):  # a GLOW coupling block is two couplings, one per half
        inn.append(Fm.GLOWCouplingBlock, subnet_constructor=subnet, clamp=2.0)
    return inn


def normflows_realnvp(dim, num_couplings, hidden):
    import normflows as nf

    flows = []
    for _ in range(num_couplings):
        # its channel split gives the first (conditioning) half ceil(d/2) features
        param_map = nf.nets.MLP([dim - dim // 2, hidden, hidden, 2 * (dim // 2)], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(param_map), nf.flows.Permute(dim, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
