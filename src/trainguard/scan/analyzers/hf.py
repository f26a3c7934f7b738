"""Hugging Face model folders: custom code that ``trust_remote_code=True`` would run.

A folder holding ``config.json`` (or a tokenizer/processor config) is a model folder that
``from_pretrained`` can load. With ``trust_remote_code=True`` transformers imports the modules that
``auto_map`` names from that folder (``modeling_*.py``, ``configuration_*.py``,
``tokenization_*.py`` and whatever they import relatively), so every Python file there is code the
loader may run: reported once per folder (TG-HF-001). transformers also loads
``chat_template.jinja`` and ``additional_chat_templates/*.jinja`` by name; those go to the template
checker.

Hugging Face cache repositories (``models--org--name/``) keep content in ``blobs/`` under hash
names and the real names as links in ``snapshots/<revision>/``; the snapshot names are read here
(names only, links must stay inside the repository) so a scan of the cache finds the same folders.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from trainguard.core.config import ScanConfig
from trainguard.core.findings import Finding, Location
from trainguard.core.rules import rule

#: files that make a folder loadable with from_pretrained
MODEL_MARKERS = frozenset({
    "config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
})
_CACHE_PREFIXES = ("models--", "datasets--", "spaces--")
_MAX_LISTED = 20


def _repo_root(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.name.startswith(_CACHE_PREFIXES):
            return p
    return None


def _snapshot_files(repo: Path, budget: int) -> Iterator[Path]:
    """Files under ``repo/snapshots`` whose targets stay inside the repository (names only)."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir() or snapshots.is_symlink():
        return
    real_repo = repo.resolve()
    for dirpath, dirnames, filenames in os.walk(snapshots, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            budget -= 1
            if budget < 0:
                return
            p = Path(dirpath) / name
            try:
                p.resolve().relative_to(real_repo)
            except (ValueError, OSError, RuntimeError):
                continue  # a link leaving the repository: the engine reports it when walked
            yield p


def _is_template_file(p: Path) -> bool:
    return p.name == "chat_template.jinja" or (
        p.suffix == ".jinja" and p.parent.name == "additional_chat_templates"
    )


def _read_text(p: Path, limit: int) -> str | None:
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return None
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    return data.decode("utf-8", "replace")


def check_directories(files: Sequence[str], config: ScanConfig) -> list[Finding]:
    """Folder-level findings over the scanned file list: custom code, chat template files."""
    paths = [Path(f) for f in files]
    seen = set(paths)
    repos = {r for r in (_repo_root(p) for p in paths) if r is not None}
    for repo in sorted(repos):
        for p in _snapshot_files(repo, config.limits.max_files):
            if p not in seen:
                seen.add(p)
                paths.append(p)
    names: dict[Path, set[str]] = {}
    for p in paths:
        names.setdefault(p.parent, set()).add(p.name)
    model_dirs = {d for d, n in names.items() if n & MODEL_MARKERS}

    findings: list[Finding] = []
    code: dict[Path, list[str]] = {}
    for p in paths:
        if p.suffix != ".py":
            continue
        owner = next((d for d in (p.parent, *p.parent.parents) if d in model_dirs), None)
        if owner is not None:
            code.setdefault(owner, []).append(p.relative_to(owner).as_posix())
    for folder in sorted(code):
        py = sorted(code[folder])
        listed = ", ".join(py[:_MAX_LISTED]) + (
            f", and {len(py) - _MAX_LISTED} more" if len(py) > _MAX_LISTED else "")
        findings.append(rule("TG-HF-001").finding(
            Location(str(folder)),
            f"{len(py)} Python file(s) that trust_remote_code=True can import: {listed}",
            files=py[:100]))

    for p in sorted(p for p in paths if _is_template_file(p)):
        text = _read_text(p, config.limits.max_header_bytes)
        if text is not None:
            from trainguard.scan.analyzers.templates import template_findings  # only if needed

            findings.extend(template_findings(text, Location(str(p)), p.name))
    return findings
