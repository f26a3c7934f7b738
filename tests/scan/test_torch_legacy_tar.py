"""The legacy tar checkpoint format of torch < 0.4, which ``torch.load`` still reads.

Its ``storages`` and ``tensors`` members interleave pickles with raw tensor bytes, so a scanner that
reads them as a plain sequence of pickles stops at the first raw block and misses a payload in a
later record, while ``torch.load`` runs every record's pickle.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from collections import OrderedDict
from pathlib import Path

import pytest

from trainguard.core.config import ScanConfig
from trainguard.scan.engine import scan_paths

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class _Payload:
    """Harmless stand-in for a malicious record: reduces to os.system('true'); never loaded."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("true",))


_SENTINEL = object()


class _RefPickler(pickle.Pickler):
    def persistent_id(self, obj):  # type: ignore[no-untyped-def]
        return "1" if obj is _SENTINEL else None


def _legacy_tar(path: Path, storage_records: list[object]) -> None:
    storages = io.BytesIO()
    storages.write(pickle.dumps(len(storage_records), protocol=2))
    for rec in storage_records:
        storages.write(pickle.dumps(rec, protocol=2))
        storages.write(struct.pack("<q", 4))
        storages.write(struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
    storages.write(pickle.dumps([], protocol=2))
    tensors = io.BytesIO()
    tensors.write(pickle.dumps(1, protocol=2))
    tensors.write(pickle.dumps((1, 0, torch.FloatTensor), protocol=2))
    tensors.write(struct.pack("<i", 1) + b"\0" * 4 + struct.pack("<qqq", 4, 1, 0))
    main = io.BytesIO()
    _RefPickler(main, protocol=2).dump(OrderedDict(w=_SENTINEL))
    sys_info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2)
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("sys_info", sys_info), ("pickle", main.getvalue()),
                           ("storages", storages.getvalue()), ("tensors", tensors.getvalue())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_benign_legacy_tar_is_real_and_clean(tmp_path: Path) -> None:
    path = tmp_path / "old_checkpoint.t7"
    _legacy_tar(path, [(0, "cpu", torch.FloatStorage)])
    # The fixture is benign, so loading it proves it is the format torch really reads.
    loaded = torch.load(path, weights_only=False)
    assert loaded["w"].tolist() == [1.0, 2.0, 3.0, 4.0]
    report = scan_paths([str(path)], ScanConfig())
    assert report.findings == []
    assert "torch-legacy-tar" in report.files[0].formats


def test_payload_in_a_later_storage_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "poisoned.t7"
    _legacy_tar(path, [(0, "cpu", torch.FloatStorage), (2, "cpu", _Payload())])
    report = scan_paths([str(path)], ScanConfig())
    hits = [f for f in report.findings if f.rule_id == "TG-PKL-001"]
    assert hits, report.findings
    assert hits[0].location.member == "storages"
