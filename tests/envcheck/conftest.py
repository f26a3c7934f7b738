"""Session-wide real environments (built once), copied per test so that tests can tamper."""

from __future__ import annotations

from pathlib import Path

import pytest

from envcheck.helpers import Env, make_venv, pip_install

#: small real packages: pure Python (six, idna, packaging), an executable .pth owner
#: (setuptools' distutils-precedence.pth) and coverage (a1_coverage.pth, a C extension)
PACKAGES = ("six", "idna", "packaging", "setuptools", "coverage")


@pytest.fixture(scope="session")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """pip install with .pyc compiled at install time (pip's default)."""
    root = tmp_path_factory.mktemp("envs") / "base"
    pip_install(make_venv(root), *PACKAGES)
    return Env(root)


@pytest.fixture(scope="session")
def nocompile_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """A uv-style install: no .pyc written at install time."""
    root = tmp_path_factory.mktemp("envs") / "nocompile"
    pip_install(make_venv(root), "--no-compile", "six", "idna")
    return Env(root)


@pytest.fixture(scope="session")
def editable_env(tmp_path_factory: pytest.TempPathFactory, base_env: Env) -> Env:
    """base_env plus ``pip install -e`` of a tiny flat-layout project (PEP 660 finder .pth)."""
    top = tmp_path_factory.mktemp("editable")
    proj = top / "tinyproj"
    (proj / "tinyproj").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinyproj"\nversion = "0.1"\n[tool.setuptools]\n'
        'packages = ["tinyproj"]\n')
    (proj / "tinyproj" / "__init__.py").write_text("VALUE = 1\n")
    env = base_env.copy(top / "env")
    pip_install(env.python, "--no-build-isolation", "--no-deps", "-e", str(proj))
    return env


@pytest.fixture
def env(base_env: Env, tmp_path: Path) -> Env:
    """A private copy of base_env to tamper with."""
    return base_env.copy(tmp_path / "env")
