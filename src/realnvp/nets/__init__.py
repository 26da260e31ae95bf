"""Networks that compute a coupling's scale and shift."""

from .made import MADE, MaskedLinear
from .mlp import MLP
from .odefunc import ConcatSquashConvNet, ConcatSquashMLP
from .resnet import ResidualBlock, ResNet
from .weightnorm import WNConv2d, WNLinear, weight_norm_magnitudes

__all__ = ["MLP", "ResNet", "ResidualBlock", "WNConv2d", "WNLinear", "weight_norm_magnitudes"]
__all__ += ["MADE", "MaskedLinear"]
__all__ += ["ConcatSquashConvNet", "ConcatSquashMLP"]
