"""Shared checks for bijectors: exact inverses and log-dets against autograd Jacobians."""

from __future__ import annotations

import torch
from torch import nn

from realnvp.bijectors import BatchNorm


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every parameter away from its (near-identity) initialisation, so that checks of the
    log-det are not checks of the identity map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p))
    return module


def jacobian_log_dets(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det ∂fn(x)_i/∂x_i|`` per example, the other examples held fixed: ``(B,)``.

    ``fn`` maps a whole batch to a batch; a per-example Jacobian is taken for each row in turn,
    so batch-dependent pieces (batch norm inside s/t networks) are included exactly.
    """
    out = []
    for i in range(x.shape[0]):
        def f(xi, i=i):
            xb = torch.cat((x[:i], xi.unsqueeze(0), x[i + 1 :]), dim=0)
            return fn(xb)[i].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i], vectorize=False)
        jac = jac.reshape(x[i].numel(), x[i].numel())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def freeze_batch_statistics(module: nn.Module, x: torch.Tensor) -> None:
    """Make every batch norm (the bijector ones and those inside s/t networks) apply, from now
    on, the statistics of the batch ``x`` as constants, and switch them to eval mode.

    In training mode an example's output depends on the rest of the batch through these
    statistics, so a per-example Jacobian is only defined once they are held fixed; the log-det
    is defined with them held fixed too ("the statistics actually used").
    """
    bijector_bns = [m for m in module.modules() if isinstance(m, BatchNorm)]
    torch_bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bijector_bns]
    for m in bijector_bns:
        m.momentum = 1.0
    stats = {}

    def record(m, inputs):
        var, mean = torch.var_mean(inputs[0], dim=[0, 2, 3], correction=0)
        stats[m] = (mean, var)

    hooks = [m.register_forward_pre_hook(record) for m in torch_bns]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    for m, mom in zip(bijector_bns, saved, strict=True):
        m.momentum = mom
        m.eval()
    for m in torch_bns:
        m.running_mean.copy_(stats[m][0])
        m.running_var.copy_(stats[m][1])
        m.eval()


def check_round_trip(layer, x: torch.Tensor, atol: float) -> None:
    y, log_det = layer(x)
    assert log_det.shape == (x.shape[0],)
    x_back, inv_log_det = layer.inverse(y)
    assert x_back.shape == x.shape
    err = (x_back - x).abs().max().item()
    assert err <= atol, f"round trip error {err:.3g} > {atol}"
    torch.testing.assert_close(inv_log_det, -log_det, atol=atol * 10, rtol=1e-4)


def check_log_det(layer, x: torch.Tensor, atol: float = 1e-6) -> None:
    """Compare the layer's log-det with the Jacobian's, in float64, in the layer's current mode.

    In training mode the log-det of the batch is computed first; then every batch norm is frozen
    at that batch's statistics (see :func:`freeze_batch_statistics`) for the Jacobian.
    """
    assert x.dtype == torch.float64
    training = layer.training
    with torch.no_grad():
        _, log_det = layer(x)
    if training:
        freeze_batch_statistics(layer, x)
    expected = jacobian_log_dets(lambda b: layer(b)[0], x)
    torch.testing.assert_close(log_det, expected, atol=atol, rtol=0)
    layer.train(training)
