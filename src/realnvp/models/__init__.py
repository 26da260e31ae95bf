"""Flows as distributions: the paper's image model and a vector model."""

from .autoregressive import IAF, MAF, NSFAutoregressive, NSFCoupling
from .ffjord import FFJORD, FFJORDImage
from .flow import Flow, standard_normal_log_prob
from .glow import Glow
from .image import RealNVP
from .vector import VectorRealNVP

__all__ = ["Flow", "Glow", "RealNVP", "VectorRealNVP", "standard_normal_log_prob"]
__all__ += ["IAF", "MAF", "NSFAutoregressive", "NSFCoupling"]
__all__ += ["FFJORD", "FFJORDImage"]
