"""Metadata formats: safetensors, GGUF, HDF5 (Keras .h5), protobuf (ONNX, TF SavedModel), JSON.

Placeholder entry points; each analyzer lives in its own module once written.
"""

from __future__ import annotations

from trainguard.scan.context import Blob, ScanContext


def analyze_safetensors(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    return False


def analyze_gguf(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    return False


def analyze_hdf5(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    return False


def analyze_protobuf(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    return False


def analyze_json(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    return False
