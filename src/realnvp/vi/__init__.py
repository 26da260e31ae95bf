"""Normalizing flows for variational inference (Rezende & Mohamed, 2015).

- :mod:`.targets`: unnormalised targets ``log p̃(z)`` (R&M's U₁–U₄, banana, funnel, mixture, a
  Gaussian with a known normaliser) and :class:`checked`, the validation of any callable target.
- :mod:`.posteriors`: flows as posteriors ``q`` (:class:`PlanarFlow`, :class:`RadialFlow`, a
  diagonal Gaussian, and the package's IAF, RealNVP and spline flows) and :func:`build_posterior`.
- :mod:`.bounds`: the ELBO, the importance-weighted bound, KL(q‖p) from samples of ``q``.
- :mod:`.quadrature`: ``log Z`` of a 2-D target on a grid; pictures of ``q`` beside the target.

Fitting goes through the training loop: :func:`realnvp.training.variational.fit` and
``realnvp fit``.
"""

from .bounds import NoSamplingDirection, elbo, estimate, importance_weighted_bound, reverse_kl
from .posteriors import POSTERIORS, GaussianPosterior, PlanarFlow, RadialFlow, build_posterior
from .quadrature import log_normaliser, q_beside_target
from .targets import (
           TARGETS,
           U1,
           U2,
           U3,
           U4,
           Banana,
           Funnel,
           Gaussian,
           Mixture,
           Target,
           TargetError,
           checked,
           get_target,
)

__all__ = ["POSTERIORS", "TARGETS", "U1", "U2", "U3", "U4", "Banana", "Funnel", "Gaussian",
           "GaussianPosterior", "Mixture", "NoSamplingDirection", "PlanarFlow", "RadialFlow", "Target",
           "TargetError", "build_posterior", "checked", "elbo", "estimate", "get_target",
           "importance_weighted_bound", "log_normaliser", "q_beside_target", "reverse_kl"]
