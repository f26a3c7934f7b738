"""One analyzer per format, looked up by the format :func:`trainguard.artifacts.sniff.sniff` found.

An analyzer is ``(ctx, blob, depth, head) -> bool``: it adds findings to ``ctx`` and returns False
only when the bytes turn out not to be its format after all (then the file counts as skipped). It
raises :class:`MalformedInput`/:class:`LimitExceeded` for hostile input; the context turns those
into findings.

Analyzer modules are imported on first use: a run over pickles never imports the Jinja, protobuf
or archive code, and start-up time is most of the time a one-file scan takes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from trainguard.artifacts.sniff import Format
from trainguard.scan.context import Blob, ScanContext

Analyzer = Callable[[ScanContext, Blob, int, bytes], bool]

#: format -> (module in this package, function)
REGISTRY: dict[Format, tuple[str, str]] = {
    Format.PICKLE: ("pickles", "analyze_pickle"),
    Format.ZIP: ("archives", "analyze_zip"),
    Format.TAR: ("archives", "analyze_tar"),
    Format.SEVENZIP: ("archives", "analyze_7z"),
    Format.GZIP: ("archives", "analyze_compressed"),
    Format.BZ2: ("archives", "analyze_compressed"),
    Format.XZ: ("archives", "analyze_compressed"),
    Format.ZLIB: ("archives", "analyze_compressed"),
    Format.LZ4: ("archives", "analyze_compressed"),
    Format.NUMPY: ("numpy", "analyze_npy"),
    Format.SAFETENSORS: ("safetensors", "analyze_safetensors"),
    Format.GGUF: ("gguf", "analyze_gguf"),
    Format.HDF5: ("keras", "analyze_hdf5"),
    Format.PROTOBUF: ("protobuf", "analyze_protobuf"),
    Format.JSON: ("jsonfiles", "analyze_json"),
}
_loaded: dict[Format, Analyzer] = {}


def get_analyzer(fmt: Format) -> Analyzer | None:
    """The analyzer for ``fmt`` (None for formats with nothing to execute), imported once."""
    analyzer = _loaded.get(fmt)
    if analyzer is None:
        entry = REGISTRY.get(fmt)
        if entry is None:
            return None
        module = importlib.import_module(f"{__name__}.{entry[0]}")
        analyzer = _loaded[fmt] = getattr(module, entry[1])
    return analyzer
