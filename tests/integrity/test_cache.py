"""The digest cache: keyed on (dev, inode, size, ctime_ns), never fooled by mtime, never trusted
when any key field differs, safe to lose, refused when others could have written it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from trainguard.integrity import cache as cache_mod
from trainguard.integrity.cache import DigestCache, StatKey, default_path
from trainguard.integrity.hashing import digest_files


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # files in tests are seconds old at most; the racy-write rule is tested on its own below
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)


def _sha(p: Path) -> bytes:
    return hashlib.sha256(p.read_bytes()).digest()


def test_hit_after_record_and_save_load(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    c = DigestCache.open(tmp_path / "c" / "digests.bin")
    time.sleep(0.01)
    assert c.digest(f) == _sha(f)
    assert c.misses == 1
    assert c.digest(f) == _sha(f)
    assert c.hits == 1
    c.save()
    assert (tmp_path / "c" / "digests.bin").stat().st_mode & 0o777 == 0o600
    c2 = DigestCache.open(tmp_path / "c" / "digests.bin")
    assert len(c2) == 1
    assert c2.digest(f) == _sha(f)
    assert c2.hits == 1


def test_rewrite_with_restored_mtime_is_not_trusted(tmp_path: Path) -> None:
    """Same size, same mtime (reset with utime): ctime still moved, so the file is re-hashed."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"A" * 4096)
    c = DigestCache(None)
    time.sleep(0.01)
    old = c.digest(f)
    st = f.stat()
    time.sleep(0.02)  # past the filesystem's timestamp tick
    f.write_bytes(b"B" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns
    assert f.stat().st_size == st.st_size
    new = c.digest(f)
    assert new != old
    assert new == _sha(f)
    assert c.hits == 0
    assert c.misses == 2


def test_chmod_changes_ctime_and_invalidates(tmp_path: Path) -> None:
    f = tmp_path / "m.bin"
    f.write_bytes(b"m" * 10)
    c = DigestCache(None)
    c.digest(f)
    time.sleep(0.02)
    f.chmod(0o640)
    c.digest(f)
    assert c.hits == 0
    assert c.misses == 2


def test_any_key_field_differing_is_a_miss(tmp_path: Path) -> None:
    f = tmp_path / "k.bin"
    f.write_bytes(b"k" * 10)
    c = DigestCache(None)
    c.digest(f)
    st = f.stat()
    assert c.lookup(st, "sha256") == _sha(f)
    assert c.lookup(st, "sha512") is None
    for field in ("st_size", "st_ctime_ns"):
        fake = _FakeStat(st, **{field: getattr(st, field) + 1})
        assert c.lookup(fake, "sha256") is None  # type: ignore[arg-type]
    other_ino = _FakeStat(st, st_ino=st.st_ino + 1)
    assert c.lookup(other_ino, "sha256") is None  # type: ignore[arg-type]
    other_dev = _FakeStat(st, st_dev=st.st_dev + 1)
    assert c.lookup(other_dev, "sha256") is None  # type: ignore[arg-type]
    assert StatKey.of(st) == StatKey(st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


class _FakeStat:
    def __init__(self, st: os.stat_result, **over: int) -> None:
        for k in ("st_dev", "st_ino", "st_size", "st_ctime_ns", "st_mtime_ns"):
            setattr(self, k, over.get(k, getattr(st, k)))


def test_racy_files_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file changed within RACY_NS before hashing could change again within one tick."""
    monkeypatch.setattr(cache_mod, "RACY_NS", 3600 * 10**9)
    f = tmp_path / "r.bin"
    f.write_bytes(b"r")
    c = DigestCache(None)
    c.digest(f)
    c.digest(f)
    assert c.hits == 0
    assert len(c) == 0


def test_write_during_hashing_is_not_recorded(tmp_path: Path) -> None:
    f = tmp_path / "d.bin"
    f.write_bytes(b"d" * 100)
    c = DigestCache(None)
    before = f.stat()
    time.sleep(0.02)
    f.write_bytes(b"e" * 100)
    assert not c.record(before, f.stat(), "sha256", b"\0" * 32, time.time_ns())
    assert len(c) == 0


def test_digest_files_uses_cache(tmp_path: Path) -> None:
    files = [tmp_path / f"f{i}" for i in range(50)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * (i * 100))
    c = DigestCache(tmp_path / "cache.bin")
    time.sleep(0.01)
    first = digest_files(files, cache=c, workers=2)
    assert c.misses == 50
    time.sleep(0.02)
    files[7].write_bytes(b"changed" * 10)
    second = digest_files(files, cache=c, workers=2)
    assert c.hits == 49
    assert c.misses == 51
    assert second[files[7]] == _sha(files[7]) != first[files[7]]
    assert all(second[f] == _sha(f) for f in files)


@pytest.mark.parametrize("content", [b"", b"garbage", b"TGDC\x01\n\xff\xff\xff\xff",
                                     b"TGDC\x01\n\x05\x00\x00\x00short"])
def test_corrupt_cache_file_is_empty(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "c.bin"
    p.write_bytes(content)
    p.chmod(0o600)
    assert len(DigestCache.open(p)) == 0


def test_cache_writable_by_others_is_not_read(tmp_path: Path) -> None:
    f = tmp_path / "a"
    f.write_bytes(b"a")
    p = tmp_path / "c.bin"
    c = DigestCache(p)
    time.sleep(0.01)
    c.digest(f)
    c.save()
    assert len(DigestCache.open(p)) == 1
    p.chmod(0o666)
    assert len(DigestCache.open(p)) == 0


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINGUARD_CACHE_DIR", str(tmp_path))
    assert default_path() == tmp_path / "digests-v1.bin"
    monkeypatch.delenv("TRAINGUARD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "trainguard" / "digests-v1.bin"


def test_manifest_cache(tmp_path: Path) -> None:
    """Tensor manifests are cached under the same key rules; None (not a checkpoint) too."""
    import struct

    from trainguard.integrity.tensors import tensor_manifest

    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    st = tmp_path / "m.safetensors"
    st.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\x80?")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    c = DigestCache(tmp_path / "c.bin")
    time.sleep(0.01)
    first = tensor_manifest(st, cache=c)
    assert first is not None
    assert tensor_manifest(txt, cache=c) is None
    assert c.misses == 2
    assert tensor_manifest(st, cache=c) == first
    assert tensor_manifest(txt, cache=c) is None
    assert c.hits == 2
    c.save()
    c2 = DigestCache.open(tmp_path / "c.bin")
    assert tensor_manifest(st, cache=c2) == first
    assert c2.hits == 1
    time.sleep(0.02)
    st.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0@")
    second = tensor_manifest(st, cache=c2)
    assert second is not None
    assert second["tensors"]["w"]["digest"] != first["tensors"]["w"]["digest"]
