"""Networks built from cells: importing this package registers them all."""
from .base import Prediction, Predictor
from .codec import FrameCodec
from .stack import RecurrentStack

__all__ = ["FrameCodec", "Prediction", "Predictor", "RecurrentStack"]
from .composite import CompositeModel  # noqa: F401  (registers 'composite')
