"""Ask another Python interpreter where its environment is, without running its site hooks.

The interpreter runs with ``-I -S`` (isolated mode, no ``site``): ``-I`` ignores ``PYTHON*``
variables and the working directory, ``-S`` keeps ``site.py`` from processing ``.pth`` files and
importing ``sitecustomize``/``usercustomize`` (``-I`` alone stops neither). The script imports only
standard-library modules. Under ``-S`` CPython 3.11 leaves ``sys.prefix`` at the base installation,
so the script finds ``pyvenv.cfg`` the way ``site.venv()`` does (PEP 405) and computes the site
directories for the venv prefix with ``site.getsitepackages(prefixes)``, which only builds paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError

#: the script run inside the target interpreter; prints one JSON document
PROBE_SCRIPT = r"""
import importlib.util, json, os, site, sys, sysconfig
exe = sys.executable
exe_dir = os.path.dirname(os.path.abspath(exe))
cands = [os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg")]
cfg = next((c for c in cands if os.path.isfile(c)), None)
conf = {}
if cfg:
    with open(cfg, encoding="utf-8", errors="replace") as f:
        for line in f.read(65536).splitlines():
            if "=" in line:
                k, _, v = line.partition("=")
                conf[k.strip().lower()] = v.strip()
prefix = os.path.dirname(cfg) if cfg else sys.prefix
system_site = conf.get("include-system-site-packages", "false").lower() == "true"
prefixes = [prefix] + ([sys.base_prefix] if cfg and system_site else [])
user_enabled = (not cfg or system_site) and bool(site.check_enableusersite())
print(json.dumps({
    "executable": exe,
    "version": sys.version,
    "version_info": list(sys.version_info[:3]),
    "implementation": sys.implementation.name,
    "cache_tag": sys.implementation.cache_tag,
    "magic": importlib.util.MAGIC_NUMBER.hex(),
    "prefix": prefix,
    "base_prefix": sys.base_prefix,
    "pyvenv_cfg": cfg,
    "pyvenv": conf,
    "site_dirs": site.getsitepackages(prefixes),
    "user_site": site.getusersitepackages(),
    "user_site_enabled": user_enabled,
    "stdlib": sysconfig.get_paths()["stdlib"],
    "scripts": sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})["scripts"],
    "sys_path": sys.path,
}))
"""

#: bound on what the probe may print (a hostile interpreter could print forever)
_MAX_OUTPUT = 1 << 20


@dataclass(frozen=True)
class Interpreter:
    """Where an interpreter's environment lives, as it reported it under ``-I -S``."""

    executable: str
    version: str
    version_info: tuple[int, int, int]
    implementation: str
    cache_tag: str
    #: ``importlib.util.MAGIC_NUMBER`` hex: the first 4 bytes of the .pyc files it writes
    magic: str
    prefix: str
    base_prefix: str
    site_dirs: tuple[str, ...]
    user_site: str
    user_site_enabled: bool
    stdlib: str
    scripts: str
    sys_path: tuple[str, ...]
    pyvenv_cfg: str | None = None
    pyvenv: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_venv(self) -> bool:
        return self.pyvenv_cfg is not None

    def existing_site_dirs(self) -> list[Path]:
        """Site directories that exist, each once, in import order (user site last)."""
        out: list[Path] = []
        seen: set[str] = set()
        cands = list(self.site_dirs) + ([self.user_site] if self.user_site_enabled else [])
        for d in cands:
            p = Path(d)
            # a venv's lib64 -> lib link (platlibdir "lib64" distributions) names the same
            # directory twice: walk it once
            real = os.path.realpath(p)
            if p.is_dir() and real not in seen:
                seen.add(real)
                out.append(p)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "executable": self.executable, "version": self.version,
            "version_info": list(self.version_info), "implementation": self.implementation,
            "cache_tag": self.cache_tag, "magic": self.magic, "prefix": self.prefix,
            "base_prefix": self.base_prefix, "site_dirs": list(self.site_dirs),
            "user_site": self.user_site, "user_site_enabled": self.user_site_enabled,
            "stdlib": self.stdlib, "scripts": self.scripts, "sys_path": list(self.sys_path),
            "pyvenv_cfg": self.pyvenv_cfg, "pyvenv": dict(self.pyvenv),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interpreter:
        """Inverse of :meth:`to_dict`; ValueError for a field of the wrong type."""
        def s(key: str) -> str:
            v = d.get(key)
            if not isinstance(v, str):
                raise ValueError(f"interpreter.{key} must be a string")
            return v

        def strs(key: str) -> tuple[str, ...]:
            v = d.get(key)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"interpreter.{key} must be a list of strings")
            return tuple(v)

        vi = d.get("version_info")
        if not (isinstance(vi, list) and len(vi) == 3 and all(isinstance(x, int) for x in vi)):
            raise ValueError("interpreter.version_info must be three integers")
        cfg = d.get("pyvenv_cfg")
        pyvenv = d.get("pyvenv") or {}
        if not isinstance(pyvenv, dict) or not all(isinstance(v, str) for v in pyvenv.values()):
            raise ValueError("interpreter.pyvenv must map strings to strings")
        return cls(
            executable=s("executable"), version=s("version"),
            version_info=(vi[0], vi[1], vi[2]), implementation=s("implementation"),
            cache_tag=s("cache_tag"), magic=s("magic"), prefix=s("prefix"),
            base_prefix=s("base_prefix"), site_dirs=strs("site_dirs"), user_site=s("user_site"),
            user_site_enabled=bool(d.get("user_site_enabled")), stdlib=s("stdlib"),
            scripts=s("scripts"), sys_path=strs("sys_path"),
            pyvenv_cfg=cfg if isinstance(cfg, str) else None, pyvenv=dict(pyvenv),
        )


def resolve_python(python: str | os.PathLike[str] | None) -> Path:
    """The interpreter to inspect: ``python`` (a file, or a venv directory), else the active
    virtual environment (``$VIRTUAL_ENV``), else the interpreter running trainguard."""
    if python is None:
        venv = os.environ.get("VIRTUAL_ENV")
        if venv and (Path(venv) / "bin" / "python").exists():
            return Path(venv) / "bin" / "python"
        return Path(sys.executable)
    p = Path(python)
    if p.is_dir():
        for cand in (p / "bin" / "python", p / "bin" / "python3", p / "Scripts" / "python.exe"):
            if cand.exists():
                return cand
        raise InputError(f"{p} is a directory without bin/python",
                         remedy="pass the interpreter itself: --python ENV/bin/python")
    if not p.exists():
        raise InputError(f"interpreter {p} does not exist")
    return p


def probe(python: str | os.PathLike[str] | None = None, *, timeout: float = 60.0) -> Interpreter:
    """Run ``python -I -S -c PROBE_SCRIPT`` and parse what it reports (never imports packages)."""
    exe = resolve_python(python)
    # The environment is emptied of PYTHON* by -I already; LD_PRELOAD could still inject code
    # into the probe process, so it is dropped too (it is recorded separately as a variable).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("LD_PRELOAD", "LD_AUDIT")}
    try:
        proc = subprocess.run(  # noqa: S603 - the interpreter the user named, fixed script
            [str(exe), "-I", "-S", "-c", PROBE_SCRIPT], capture_output=True, timeout=timeout,
            env=env, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"cannot run interpreter {exe}: {exc}",
                         remedy="--python must name a Python executable that runs here") from None
    if proc.returncode != 0 or len(proc.stdout) > _MAX_OUTPUT:
        tail = proc.stderr.decode("utf-8", "replace")[-400:]
        raise InputError(f"interpreter {exe} failed the probe (exit {proc.returncode}): {tail}")
    try:
        data = json.loads(proc.stdout)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return Interpreter.from_dict(data)
    except ValueError as exc:
        raise InputError(f"interpreter {exe} printed an unusable probe result: {exc}") from None
