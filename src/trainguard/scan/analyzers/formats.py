"""Metadata formats: safetensors, GGUF, HDF5 (Keras .h5), protobuf (ONNX, TF SavedModel), JSON.

Each format lives in its own module (keras.py holds HDF5, protobuf.py protobuf); they are
re-exported here for older imports.
"""

from __future__ import annotations

from trainguard.scan.analyzers.gguf import analyze_gguf
from trainguard.scan.analyzers.jsonfiles import analyze_json
from trainguard.scan.analyzers.keras import analyze_hdf5
from trainguard.scan.analyzers.protobuf import analyze_protobuf
from trainguard.scan.analyzers.safetensors import analyze_safetensors

__all__ = [
    "analyze_gguf", "analyze_hdf5", "analyze_json", "analyze_protobuf", "analyze_safetensors",
]

