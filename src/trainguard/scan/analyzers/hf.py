"""Hugging Face model folders: custom code that ``trust_remote_code=True`` would run."""

from __future__ import annotations

from collections.abc import Sequence

from trainguard.core.config import ScanConfig
from trainguard.core.findings import Finding


def check_directories(files: Sequence[str], config: ScanConfig) -> list[Finding]:
    """Folder-level findings over the scanned file list (placeholder: none yet)."""
    return []
