"""Startup hooks: code every interpreter of the environment runs before the job's own code.

``site.addpackage`` (CPython ``Lib/site.py``) executes each ``.pth`` line that starts with
``import`` followed by a space or tab, and adds every other non-comment line as a directory to
``sys.path``; afterwards ``site`` imports ``sitecustomize`` and ``usercustomize`` from anywhere on
``sys.path``. Only ``-S`` stops this; ``-I`` does not. The files are read here as text, never run.

Legitimate executable ``.pth`` files exist. They are allowed when a distribution that is known to
ship one owns the file (its RECORD lists it) and the file still has the hash its RECORD gives,
or when the file's sha256 is allow-listed in ``[env] allow_pth``.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from trainguard.envcheck.records import Distribution, normalize_name, read_regular

#: known-good executable .pth files: (owning distribution, file-name pattern, why)
KNOWN_PTH: tuple[tuple[str, str, str], ...] = (
    ("setuptools", "distutils-precedence.pth", "setuptools' distutils shim"),
    ("coverage", "a1_coverage.pth", "coverage.py's subprocess hook (COVERAGE_PROCESS_START)"),
    ("*", "*-nspkg.pth", "setuptools namespace-package shim"),
)
#: largest .pth file read (real ones are a few hundred bytes)
MAX_PTH_BYTES = 1 << 20
CUSTOMIZE = ("sitecustomize", "usercustomize")


@dataclass(frozen=True)
class PthFile:
    """A ``.pth`` file in a site directory, as site.py would read it."""

    path: Path
    #: lines site.py executes
    exec_lines: tuple[str, ...]
    #: directories site.py would add to sys.path (absolute, normalised)
    path_lines: tuple[str, ...]
    #: set when the file could not be read or was cut at MAX_PTH_BYTES
    problem: str | None = None


def read_pth(path: Path) -> PthFile:
    """Parse a .pth file the way ``site.addpackage`` does, without executing anything."""
    try:
        data = read_regular(path, MAX_PTH_BYTES + 1)
    except OSError as exc:
        return PthFile(path, (), (), f"cannot read: {exc.strerror or exc}")
    problem = f"larger than {MAX_PTH_BYTES} bytes; rest not read" if len(
        data) > MAX_PTH_BYTES else None
    # site.py decodes with utf-8-sig, falling back to the locale encoding (3.11: 'locale');
    # replacement keeps a hostile byte from hiding the rest of the file
    text = data[:MAX_PTH_BYTES].decode("utf-8-sig", "replace")
    execs: list[str] = []
    paths: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            continue
        if line.startswith(("import ", "import\t")):
            execs.append(line)
            continue
        if "\x00" in line:
            continue  # site.py's os.path.exists() is False for it: never added
        paths.append(os.path.normpath(os.path.join(path.parent, line.rstrip())))
    return PthFile(path, tuple(execs), tuple(paths), problem)


def known_pth_reason(pth: Path, owner: Distribution | None, record_ok: bool) -> str | None:
    """Why an executable .pth is known good, or None: owner + name pattern + RECORD hash."""
    if owner is None or not record_ok:
        return None
    name = pth.name
    if owner.editable and name.startswith("__editable__"):
        return f"editable install of {owner.name} (PEP 660)"
    for dist, pattern, why in KNOWN_PTH:
        if (dist == "*" or normalize_name(owner.name) == dist) and fnmatch.fnmatch(name, pattern):
            return why
    return None


def find_customize(dirs: list[Path]) -> list[Path]:
    """sitecustomize/usercustomize modules importable from ``dirs`` (any importable form)."""
    found: list[Path] = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except (OSError, ValueError):
            continue
        for n in names:
            stem = n.split(".", 1)[0]
            if stem not in CUSTOMIZE:
                continue
            p = d / n
            # a module (.py, sourceless .pyc, extension .so/.pyd) or a package directory
            if (n == stem and (p / "__init__.py").exists()) or (
                    n != stem and n.endswith((".py", ".pyc", ".so", ".pyd", ".pyw"))):
                found.append(p)
    return sorted(found)
