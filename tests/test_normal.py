"""``realnvp.normal``: the package's one Gaussian log-density, against ``torch.distributions``."""

from __future__ import annotations

import math

import torch

from realnvp.normal import normal_log_prob, standard_normal_log_prob


def test_normal_log_prob_equals_torch_distributions_with_broadcasting():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 1, generator=g, dtype=torch.float64)
    mean = torch.randn(3, 4, generator=g, dtype=torch.float64)
    log_std = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    want = torch.distributions.Normal(mean, log_std.exp()).log_prob(x)
    torch.testing.assert_close(normal_log_prob(x, mean, log_std), want)
    torch.testing.assert_close(normal_log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x))
    torch.testing.assert_close(normal_log_prob(x, log_std=math.log(2.0)),
                               torch.distributions.Normal(0.0, 2.0).log_prob(x))


def test_standard_normal_log_prob_sums_over_the_latent_in_float32_or_more():
    z = torch.randn(6, 7, dtype=torch.float16)
    got = standard_normal_log_prob(z)
    assert got.shape == (6,) and got.dtype == torch.float32
    want = torch.distributions.Normal(0.0, 1.0).log_prob(z.float()).sum(1)
    torch.testing.assert_close(got, want)
