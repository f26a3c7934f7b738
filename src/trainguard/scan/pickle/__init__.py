"""The symbolic pickle machine (never executes) and the inline-data hooks of joblib."""

from trainguard.scan.pickle.machine import PickleMachine
from trainguard.scan.pickle.values import StreamResult

__all__ = ["PickleMachine", "StreamResult"]
