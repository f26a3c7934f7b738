"""Static analysis of model files: finds code execution without executing or unpickling anything.

    >>> import pickle, tempfile, os
    >>> from trainguard.scan import scan_paths
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pkl")
    >>> with open(path, "wb") as f:
    ...     pickle.dump({"weights": [1.0, 2.0]}, f)
    >>> scan_paths([path]).findings
    []
"""

from trainguard.scan.engine import scan_file, scan_paths
from trainguard.scan.policy import Policy, Verdict

__all__ = ["Policy", "Verdict", "scan_file", "scan_paths"]
