"""Hashing: equal to hashlib on every size (0 bytes, chunk boundaries), shards equal to the
reference model_signing's, parallel results in input order, errors surface."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trainguard.integrity import hashing
from trainguard.integrity.hashing import (
    CHUNK,
    digest_files,
    digest_shards,
    file_digest,
    range_digests,
    shard_digests,
    shard_ranges,
)

SIZES = [0, 1, 2047, 2048, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17]


def _write(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(os.urandom(size) if seed else bytes((i * 31 + size) % 251
                                                       for i in range(size)))
    return path


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("algo", ["sha256", "sha512", "blake2b"])
def test_file_digest_equals_hashlib(tmp_path: Path, size: int, algo: str) -> None:
    p = _write(tmp_path / "f", size, seed=1)
    assert file_digest(p, algo) == hashlib.new(algo, p.read_bytes()).digest()


def test_blake3(tmp_path: Path) -> None:
    blake3 = pytest.importorskip("blake3")
    p = _write(tmp_path / "f", CHUNK + 5, seed=1)
    assert file_digest(p, "blake3") == blake3.blake3(p.read_bytes()).digest()


def test_offset_length_and_fd(tmp_path: Path) -> None:
    p = _write(tmp_path / "f", 3 * CHUNK, seed=1)
    data = p.read_bytes()
    for off, n in [(0, 0), (5, 10), (CHUNK - 3, 7), (100, 2 * CHUNK + 1)]:
        assert file_digest(p, offset=off, length=n) == hashlib.sha256(data[off:off + n]).digest()
    fd = os.open(p, os.O_RDONLY)
    try:
        assert file_digest(Path("ignored"), fd=fd) == hashlib.sha256(data).digest()
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="shrank"):
        file_digest(p, offset=len(data) - 1, length=10)


def test_unknown_algorithm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        file_digest(_write(tmp_path / "f", 1), "md5")
    with pytest.raises(ValueError, match="unsupported"):
        digest_files([], "md5")


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_digest_files_many_small_and_some_large(tmp_path: Path, workers: int) -> None:
    paths = [_write(tmp_path / f"s{i}", i * 37) for i in range(300)]
    paths += [_write(tmp_path / f"l{i}", CHUNK * 2 + i, seed=1) for i in range(3)]
    seen: list[tuple[Path, int]] = []
    got = digest_files(paths, workers=workers, progress=lambda p, n: seen.append((p, n)))
    assert list(got) == paths  # input order kept
    for p in paths:
        assert got[p] == hashlib.sha256(p.read_bytes()).digest()
    assert sorted(seen) == sorted((p, p.stat().st_size) for p in paths)


def test_digest_files_error_propagates(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"s{i}", 10) for i in range(20)] + [tmp_path / "missing"]
    with pytest.raises(FileNotFoundError):
        digest_files(paths, workers=2)


@pytest.mark.parametrize(("size", "shard"), [(0, 10), (1, 10), (10, 10), (11, 10), (95, 7),
                                             (CHUNK * 2 + 3, CHUNK)])
def test_shards_equal_hashlib(tmp_path: Path, size: int, shard: int) -> None:
    p = _write(tmp_path / "f", size, seed=1)
    data = p.read_bytes()
    ranges = shard_ranges(size, shard)
    assert sum(e - s for s, e in ranges) == size
    got = shard_digests(p, shard, workers=2)
    assert [(s, e) for s, e, _ in got] == ranges
    for s, e, d in got:
        assert d == hashlib.sha256(data[s:e]).digest()


def test_shards_equal_reference_model_signing(tmp_path: Path) -> None:
    """The OMS ``shards`` serialization as model_signing 1.x computes it."""
    io_mod = pytest.importorskip("model_signing._hashing.io")
    from model_signing._hashing import memory

    p = _write(tmp_path / "f", 1000, seed=1)
    shard = 300
    ours = shard_digests(p, shard, workers=2)
    for s, e, d in ours:
        ref = io_mod.ShardedFileHasher(p, memory.SHA256(), start=s, end=e, shard_size=shard)
        assert ref.compute().digest_value == d
    # the reference's shard endpoints (file_shard._endpoints): same split
    from model_signing._serialization import file_shard

    ends = list(file_shard._endpoints(shard, 1000))
    assert [e for _, e, _ in ours] == ends


def test_digest_shards_many_files(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"f{i}", 1000 * i + 1, seed=1) for i in range(5)]
    got = digest_shards(paths, 512, workers=2)
    for p in paths:
        data = p.read_bytes()
        assert [d for _, _, d in got[p]] == [
            hashlib.sha256(data[s:s + 512]).digest() for s in range(0, len(data), 512)]


def test_shard_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        shard_ranges(10, 0)


def test_range_digests(tmp_path: Path) -> None:
    p = _write(tmp_path / "f", 5000, seed=1)
    data = p.read_bytes()
    ranges = [(100, 200), (0, 5000), (150, 160), (4000, 4000)]
    for workers in (1, 2):
        got = range_digests(p, ranges, workers=workers)
        assert got == [hashlib.sha256(data[s:e]).digest() for s, e in ranges]
    with pytest.raises(ValueError, match="outside"):
        range_digests(p, [(0, 5001)])


def test_threads_do_not_share_buffers(tmp_path: Path) -> None:
    """Each thread reuses its own buffer: concurrent large files never mix bytes."""
    paths = [_write(tmp_path / f"l{i}", CHUNK * 3 + i * 1000, seed=1) for i in range(6)]
    got = digest_files(paths, workers=3)
    assert all(got[p] == hashlib.sha256(p.read_bytes()).digest() for p in paths)
    assert hashing.CHUNK == CHUNK


# ----------------------------------------------------------------------------- non-regular files


def _no_hang(fn: object) -> BaseException | object:
    """Run ``fn`` in a thread and return its result or exception; fail if it never returns
    (a FIFO opened without O_NONBLOCK waits for a writer forever)."""
    import threading

    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["v"] = fn()  # type: ignore[operator]
        except BaseException as exc:
            out["v"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "blocked on a FIFO"
    return out["v"]


def test_fifo_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    for call in (lambda: file_digest(fifo), lambda: shard_digests(fifo, 10),
                 lambda: range_digests(fifo, [(0, 1)]),
                 lambda: digest_files([_write(tmp_path / "ok", 5), fifo], workers=2),
                 lambda: digest_files([fifo], sizes={fifo: 0})):
        got = _no_hang(call)
        assert isinstance(got, hashing.NotRegularFileError), got
        assert isinstance(got, OSError)
        assert "not a regular file" in str(got)
        assert str(fifo) in str(got)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(hashing.NotRegularFileError):
        file_digest(tmp_path)


def test_symlinks_followed_by_default_and_refused_on_request(tmp_path: Path) -> None:
    real = _write(tmp_path / "real.bin", 1000)
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    want = hashlib.sha256(real.read_bytes()).digest()
    assert file_digest(link) == want
    assert digest_files([link])[link] == want
    with pytest.raises(OSError):
        file_digest(link, follow_symlinks=False)
    with pytest.raises(OSError):
        digest_files([link], follow_symlinks=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link2 = tmp_path / "link2"
    link2.symlink_to(fifo)  # a link to a FIFO is still refused when followed
    assert isinstance(_no_hang(lambda: file_digest(link2)), hashing.NotRegularFileError)


def test_digest_files_with_sizes_does_not_stat(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [_write(tmp_path / f"f{i}", i * 1000) for i in range(10)]
    sizes = {p: p.stat().st_size for p in paths}
    calls: list[object] = []
    real_stat = os.stat
    monkeypatch.setattr(hashing.os, "stat", lambda *a, **k: calls.append(a) or real_stat(*a, **k))
    seen: list[tuple[Path, int]] = []
    got = digest_files(paths, workers=2, sizes=sizes, progress=lambda p, n: seen.append((p, n)))
    assert calls == []
    assert list(got) == paths
    assert all(got[p] == hashlib.sha256(p.read_bytes()).digest() for p in paths)
    assert sorted(seen) == sorted(sizes.items())
