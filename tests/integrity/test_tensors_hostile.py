"""Hostile checkpoints given to tensor_manifest: clean errors after bounded work, never a crash.

Each case is a file a saboteur controls: truncated zips, pickles declaring absurd shapes or
offsets, storage ids that lie, safetensors headers that lie, and structures built to blow up a
naive walk (deep nesting, shared references doubling at every level).
"""

from __future__ import annotations

import contextlib
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.checkpoints import dag_pickle, nested_lists_pickle, tensor_pickle, torch_zip
from trainguard.core.errors import InputError, LimitExceeded, MalformedInput
from trainguard.integrity.tensors import tensor_manifest

F4 = struct.pack("<4f", 1, 2, 3, 4)


def test_handmade_tensor_is_read(tmp_path: Path) -> None:
    m = tensor_manifest(torch_zip(tmp_path / "ok.pt", tensor_pickle(), {"0": F4}))
    assert m is not None
    assert m["tensors"]["w"]["nbytes"] == 16


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"shape": (1 << 40,), "stride": (1,)}, "views bytes"),          # absurd shape
    ({"offset": 1 << 50}, "views bytes"),                             # absurd offset
    ({"shape": (2, 2), "stride": (1 << 45, 1)}, "views bytes"),       # absurd stride
    ({"offset": -1}, "bad offset"),                                   # negative offset
    ({"stride": (-1,)}, "bad offset"),                                # negative stride
    ({"shape": (4, 4)}, "bad offset"),                                # rank mismatch
    ({"numel": 1 << 40}, "declares"),                                 # storage size lies
    ({"key": "7"}, "missing"),                                        # no such storage member
    ({"storage_cls": "EvilStorage"}, "unknown storage class"),
])
def test_lying_tensor_records(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    p = torch_zip(tmp_path / "bad.pt", tensor_pickle(**kwargs), {"0": F4})  # type: ignore[arg-type]
    with pytest.raises(MalformedInput, match=needle):
        tensor_manifest(p)


def test_zero_sized_tensor_at_any_offset_is_fine(tmp_path: Path) -> None:
    p = torch_zip(tmp_path / "z.pt", tensor_pickle(shape=(0,), offset=1 << 40), {"0": F4})
    m = tensor_manifest(p)
    assert m is not None
    assert m["tensors"]["w"]["nbytes"] == 0


def test_truncated_zip(tmp_path: Path) -> None:
    p = torch_zip(tmp_path / "t.pt", tensor_pickle(), {"0": F4 * 1000})
    data = p.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        p.write_bytes(data[:cut])
        # a zip without its central directory is no zip: either not a checkpoint or malformed
        with contextlib.suppress(MalformedInput):
            assert tensor_manifest(p) is None


def test_storage_member_runs_past_end_of_file(tmp_path: Path) -> None:
    """The central directory declares a 4,000-byte storage; the file holds 1,000 of them."""
    p = torch_zip(tmp_path / "t.pt", tensor_pickle(numel=1000, shape=(1000,)),
                  {"0": bytes(1000)})
    data = bytearray(p.read_bytes())
    cen = data.index(b"PK\x01\x02")
    while data[cen + 46: cen + 46 + 14] != b"archive/data/0":
        cen = data.index(b"PK\x01\x02", cen + 4)
    struct.pack_into("<II", data, cen + 20, 4000, 4000)  # compressed and uncompressed size
    p.write_bytes(bytes(data))
    with pytest.raises(MalformedInput):
        tensor_manifest(p)


def test_storage_member_without_local_header(tmp_path: Path) -> None:
    p = torch_zip(tmp_path / "t.pt", tensor_pickle(), {"0": F4})
    data = bytearray(p.read_bytes())
    cen = data.index(b"PK\x01\x02")
    while data[cen + 46: cen + 46 + 14] != b"archive/data/0":
        cen = data.index(b"PK\x01\x02", cen + 4)
    struct.pack_into("<I", data, cen + 42, 1)  # local header offset pointing at garbage
    p.write_bytes(bytes(data))
    with pytest.raises(MalformedInput, match="local header"):
        tensor_manifest(p)


def test_garbage_pickle(tmp_path: Path) -> None:
    p = torch_zip(tmp_path / "g.pt", b"\x80\x02\xff\xfe garbage", {})
    with pytest.raises(MalformedInput):
        tensor_manifest(p)


def test_deep_nesting_is_a_limit(tmp_path: Path) -> None:
    p = torch_zip(tmp_path / "d.pt", nested_lists_pickle(500), {})
    with pytest.raises(LimitExceeded, match="max_depth"):
        tensor_manifest(p)


def test_shared_reference_blowup_is_linear(tmp_path: Path) -> None:
    """2**60 paths through 60 memo references: each container is walked once."""
    p = torch_zip(tmp_path / "dag.pt", dag_pickle(60), {})
    m = tensor_manifest(p)
    assert m is not None
    assert m["scalars"]["1"] == {"same_as": "0"}
    assert len(m["scalars"]) < 200


def test_node_limit(tmp_path: Path) -> None:
    from trainguard.integrity.tensors import ManifestLimits

    p = torch_zip(tmp_path / "dag.pt", dag_pickle(60), {})
    with pytest.raises(LimitExceeded, match="max_nodes"):
        tensor_manifest(p, limits=ManifestLimits(max_nodes=50))


@pytest.mark.parametrize("header", [
    b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}',       # past the end
    b'{"w": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 16]}}',
    b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}',       # gap
    b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
    b'"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',        # duplicate
    b'{"w": {"dtype": "EVIL", "shape": [4], "data_offsets": [0, 16]}}',
    b'{"w": [1, 2]}',
    b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}',        # bad JSON
])
def test_safetensors_header_lies(tmp_path: Path, header: bytes) -> None:
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + F4)
    with pytest.raises(MalformedInput):
        tensor_manifest(p)


def test_safetensors_like_non_object_header_is_not_a_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 9) + b"[1, 2, 3]" + F4)
    assert tensor_manifest(p) is None


def test_safetensors_header_length_past_end(tmp_path: Path) -> None:
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 40) + b'{"' + b" " * 100)
    assert tensor_manifest(p) is None  # a header longer than the file: not safetensors at all


def test_not_a_regular_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError):
        tensor_manifest(fifo)
    with pytest.raises(InputError):
        tensor_manifest(tmp_path / "missing.pt")


@pytest.mark.torch
@pytest.mark.slow
def test_mutated_real_checkpoints_fail_cleanly(tmp_path: Path) -> None:
    """Random byte mutations of a real checkpoint: a manifest, None, or a trainguard error."""
    pytest.importorskip("torch")
    from fixtures.checkpoints import save_torch, train_state

    src = save_torch(train_state(), tmp_path / "src.pt").read_bytes()
    rnd = random.Random(3)
    p = tmp_path / "m.pt"
    for _ in range(150):
        data = bytearray(src)
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        p.write_bytes(bytes(data))
        with contextlib.suppress(MalformedInput, LimitExceeded):
            tensor_manifest(p)


# --------------------------------------------------------------------------- properties
_PREFIXES = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95",
             b"\x20\x00\x00\x00\x00\x00\x00\x00{"]
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(prefix=st.sampled_from(_PREFIXES), body=st.binary(max_size=400))
def test_any_bytes_give_a_manifest_none_or_a_clean_error(tmp_path: Path, prefix: bytes,
                                                           body: bytes) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(prefix + body)
    try:
        m = tensor_manifest(p)
    except (MalformedInput, LimitExceeded):
        return
    if m is not None:
        import json

        json.dumps(m, allow_nan=False)  # always JSON: it goes into a signed statement


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(data=st.data())
def test_handmade_tensor_records_never_escape(tmp_path: Path, data: st.DataObject) -> None:
    """Any offset/shape/stride/numel: a manifest whose spans lie inside the storage, or an error."""
    rank = data.draw(st.integers(0, 3))
    big = st.integers(0, 1 << 40)
    kwargs = {
        "numel": data.draw(st.integers(0, 8) | big),
        "offset": data.draw(st.integers(0, 8) | big),
        "shape": tuple(data.draw(st.lists(st.integers(0, 5) | big, min_size=rank, max_size=rank))),
        "stride": tuple(data.draw(st.lists(st.integers(0, 5) | big, min_size=rank, max_size=rank))),
    }
    pkl = tensor_pickle(**kwargs)  # type: ignore[arg-type]
    p = torch_zip(tmp_path / "h.pt", pkl, {"0": bytes(32)})
    try:
        m = tensor_manifest(p)
    except MalformedInput:
        return
    assert m is not None
    assert 0 <= m["tensors"]["w"]["nbytes"] <= 32
