"""Verify-before-load: ``trainguard.load(path)`` loads exactly the bytes it verified.

Steps, all on one in-memory copy of the file (so nothing can change between check and use):

1. open the file once (regular files only: no FIFO, device or socket) and read all of its bytes
   (bounded by ``max_bytes``); a file that grows while being read is refused;
2. verify them: :func:`trainguard.integrity.verify.verify` with ``files=[rel]`` (partial
   verification of just this file) and ``contents={rel: bytes}``, so the digest compared with the
   signed manifest is the digest of these bytes, under the signature's own hash type and
   serialization (``files`` or ``shards``); signer identity and trust policy are checked there;
3. scan them: trainguard's scanner runs over the same bytes in memory (a :class:`Blob` over
   ``io.BytesIO``; no temporary file, nothing re-opened by name); a finding at or above
   ``fail_on`` (``[scan] fail_on``, default medium) refuses the file;
4. load them: ``torch.load(io.BytesIO(data), weights_only=True)`` for PyTorch files,
   ``safetensors.torch.load(data)`` for safetensors.

Refusals raise :class:`TamperError` (bytes differ from what was signed, with the changed tensors),
:class:`PolicyError` (authentic but not trusted for this project or role),
:class:`VerificationError` (signature unusable, signer unknown) or :class:`UnsafeContent` (scan
findings). A missing signature is a refusal too (``InputError``): there is no unverified mode.

Which signature: ``signature=`` names the OMS bundle; by default it is ``<model>.sig`` beside the
signed model, where the model is ``model=`` if given, else the file itself when ``<file>.sig``
exists, else the file's directory (a signed checkpoint folder).

Example::

    import trainguard
    state = trainguard.load("ckpt/step-1000/model.pt")   # ckpt/step-1000.sig, [trust] policy
    model.load_state_dict(state)
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import (
    InputError,
    LimitExceeded,
    MalformedInput,
    PolicyError,
    UsageError,
)
from trainguard.core.findings import Finding, Severity

if TYPE_CHECKING:
    from trainguard.core.config import ScanConfig
    from trainguard.integrity.trust import TrustPolicy
    from trainguard.integrity.verify import VerifyResult

#: default largest file loaded (the whole file is held in memory)
MAX_BYTES = 64 << 30

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)


class UnsafeContent(PolicyError):
    """The verified bytes hold something the scanner refuses (code execution, malformed data)."""

    remedy = "inspect the findings with `trainguard scan`; never load such a file"

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


def read_exact(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """All bytes of a regular file, read once through one descriptor."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file (FIFO, device or socket); not read")
        if st.st_size > max_bytes:
            raise LimitExceeded("max_bytes", max_bytes, f"{path} is {st.st_size} bytes")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size)
            if len(data) != st.st_size or f.read(1):
                raise InputError(f"{path}: changed size while being read; not loaded")
    finally:
        os.close(fd)
    return data


def locate(path: Path, signature: str | os.PathLike[str] | None,
           model: str | os.PathLike[str] | None) -> tuple[Path, str, Path]:
    """(signed model path, this file's path relative to it, signature path)."""
    from trainguard.integrity.signing import default_signature_path

    if model is not None:
        root = Path(model)
        if root.resolve() == path.resolve():
            rel = "."
        else:
            try:
                rel = path.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                raise UsageError(f"{path} is not inside the signed model {root}") from None
    elif signature is None and default_signature_path(path).is_file():
        root, rel = path, "."
    else:
        root, rel = path.parent, path.name
    sig = Path(signature) if signature is not None else default_signature_path(root)
    return root, rel, sig


def scan_bytes(data: bytes, display: str, config: ScanConfig) -> list[Finding]:
    """Findings of trainguard's scanner over bytes held in memory."""
    from trainguard.scan.context import Blob, ScanContext
    from trainguard.scan.policy import Policy

    ctx = ScanContext(config, Policy(config.allow_globals), display)
    try:
        ctx.scan(Blob.from_bytes(display, None, data), 0, data[:4096])
        return ctx.finish()
    finally:
        ctx.close()


def load(path: str | os.PathLike[str], *, signature: str | os.PathLike[str] | None = None,
         policy: TrustPolicy | None = None, map_location: Any = "cpu",
         model: str | os.PathLike[str] | None = None, project: str | None = None,
         scan_config: ScanConfig | None = None, max_bytes: int = MAX_BYTES,
         verified: list[VerifyResult] | None = None, safe_globals: Sequence[Any] = ()) -> Any:
    """Verify, scan, then load a checkpoint from the verified bytes (see the module docstring).

    ``policy`` defaults to ``[trust]`` of the discovered trainguard.toml, ``scan_config`` to its
    ``[scan]`` table. ``verified``, if given, receives the :class:`VerifyResult`.
    ``safe_globals`` extends torch's ``weights_only`` allow-list (``torch.serialization.
    safe_globals``), e.g. the numpy types of a saved ``numpy.random.get_state()``; torch's own
    refusal becomes :class:`UnsafeContent`.
    """
    from trainguard.artifacts.sniff import Format, sniff
    from trainguard.integrity.verify import verify

    p = Path(path)
    data = read_exact(p, max_bytes)
    root, rel, sig = locate(p, signature, model)
    # (2) the digest checked against the signed manifest is computed from `data`
    result = verify(root, sig, policy=policy, files=[rel], contents={rel: data}, project=project)
    if verified is not None:
        verified.append(result)
    result.raise_for_failure()
    # (3) scan the same bytes
    if scan_config is None:
        from trainguard.core.config import load_config

        scan_config = load_config().scan
    findings = scan_bytes(data, str(p), scan_config)
    bad = [f for f in findings if f.severity >= scan_config.fail_on]
    if bad:
        worst = max(bad, key=lambda f: f.severity)
        raise UnsafeContent(f"{p}: {len(bad)} finding(s) at or above "
                            f"{Severity(scan_config.fail_on).label}; first: {worst.rule_id} "
                            f"{worst.evidence}", bad)
    # (4) load the same bytes
    fmt = sniff(data[:4096], len(data))
    if fmt is Format.SAFETENSORS:
        from safetensors.torch import load as st_load

        tensors = st_load(data)
        if str(map_location) != "cpu":
            tensors = {k: v.to(map_location) for k, v in tensors.items()}
        return tensors
    if fmt in (Format.ZIP, Format.PICKLE):
        import pickle

        import torch

        try:
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(io.BytesIO(data), map_location=map_location,
                                  weights_only=True)
        except pickle.UnpicklingError as exc:
            detail = next((ln.strip() for ln in str(exc).splitlines()
                           if "WeightsUnpickler error" in ln), str(exc).splitlines()[0])
            raise UnsafeContent(f"{p}: torch.load(weights_only=True) refused it: {detail}",
                                []) from None
        except Exception as exc:
            # verified and scanned, yet torch cannot read it (truncated zip, a bare pickle that
            # is no checkpoint): an input error, whatever exception type torch chose
            raise MalformedInput(f"{p}: torch.load failed: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from None
    raise UsageError(f"{p}: not a PyTorch or safetensors checkpoint ({fmt.value}); "
                     "trainguard.load only loads those")
