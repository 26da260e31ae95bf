"""realnvp: exact-likelihood density estimation with RealNVP normalizing flows.

Direction convention: ``forward`` maps data to latent, ``inverse`` latent to data; every
bijector returns ``(output, log_det)`` with a per-example ``(B,)`` log-det in nats.
"""

from .bijectors import bits_per_dim
from .models import Flow, RealNVP, VectorRealNVP
from .models.autoregressive import IAF, MAF, NSFAutoregressive, NSFCoupling
from .models.glow import Glow

__version__ = "0.1.0"

__all__ = ["Flow", "RealNVP", "VectorRealNVP", "bits_per_dim", "__version__"]
__all__ += ["Glow"]
__all__ += ["IAF", "MAF", "NSFAutoregressive", "NSFCoupling"]
