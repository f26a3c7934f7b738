"""The symbolic pickle machine (never executes) and the inline-data hooks of joblib."""

from trainguard.scan.pickle.machine import PickleMachine, StreamResult

__all__ = ["PickleMachine", "StreamResult"]
