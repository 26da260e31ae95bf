"""Flows as distributions: the paper's image model and a vector model."""

from .flow import Flow, standard_normal_log_prob
from .image import RealNVP
from .vector import VectorRealNVP

__all__ = ["Flow", "RealNVP", "VectorRealNVP", "standard_normal_log_prob"]
