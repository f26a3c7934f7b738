"""One analyzer per format, looked up by the format :func:`trainguard.artifacts.sniff.sniff` found.

An analyzer is ``(ctx, blob, depth, head) -> bool``: it adds findings to ``ctx`` and returns False
only when the bytes turn out not to be its format after all (then the file counts as skipped). It
raises :class:`MalformedInput`/:class:`LimitExceeded` for hostile input; the context turns those
into findings.
"""

from __future__ import annotations

from collections.abc import Callable

from trainguard.artifacts.sniff import Format
from trainguard.scan.analyzers.archives import (
    analyze_7z,
    analyze_compressed,
    analyze_tar,
    analyze_zip,
)
from trainguard.scan.analyzers.gguf import analyze_gguf
from trainguard.scan.analyzers.jsonfiles import analyze_json
from trainguard.scan.analyzers.keras import analyze_hdf5
from trainguard.scan.analyzers.numpy import analyze_npy
from trainguard.scan.analyzers.pickles import analyze_pickle
from trainguard.scan.analyzers.protobuf import analyze_protobuf
from trainguard.scan.analyzers.safetensors import analyze_safetensors
from trainguard.scan.context import Blob, ScanContext

Analyzer = Callable[[ScanContext, Blob, int, bytes], bool]

ANALYZERS: dict[Format, Analyzer] = {
    Format.PICKLE: analyze_pickle,
    Format.ZIP: analyze_zip,
    Format.TAR: analyze_tar,
    Format.SEVENZIP: analyze_7z,
    Format.GZIP: analyze_compressed,
    Format.BZ2: analyze_compressed,
    Format.XZ: analyze_compressed,
    Format.ZLIB: analyze_compressed,
    Format.LZ4: analyze_compressed,
    Format.NUMPY: analyze_npy,
    Format.SAFETENSORS: analyze_safetensors,
    Format.GGUF: analyze_gguf,
    Format.HDF5: analyze_hdf5,
    Format.PROTOBUF: analyze_protobuf,
    Format.JSON: analyze_json,
}
