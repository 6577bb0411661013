"""Networks: each takes [0, 1] pixels, normalises inside, and has a ``dropout`` knob."""

from robustlip.models.digits_cnn import DigitsCNN
from robustlip.models.normalize import Normalize

__all__ = ["DigitsCNN", "Normalize"]
