"""Fixtures shared by all test directories.

pytest puts this directory on ``sys.path`` (rootdir conftest, ``prepend`` import mode), so tests
import the builders under tests/fixtures/ as ``fixtures.<module>``.
"""

from __future__ import annotations

import pytest

from fixtures.benign import CorpusCache


@pytest.fixture(scope="session")
def benign_corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusCache:
    """The benign corpus (tests/fixtures/benign.py), each group built once per session on use."""
    return CorpusCache(tmp_path_factory.mktemp("benign"))
