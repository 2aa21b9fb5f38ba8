"""Networks built from cells: importing this package registers them all (one import line per file)."""
from .base import Prediction, Predictor
from .codec import FrameCodec
from .composite import CompositeModel
from .presets import PredRNNv2
from .stack import RecurrentStack
