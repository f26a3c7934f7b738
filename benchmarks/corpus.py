"""Build the benchmark corpus under benchmarks/.corpus/ with the project's own fixture builders.

Run it in the project venv (it needs torch, transformers, keras... to write real files)::

    .venv/bin/python benchmarks/corpus.py            # malicious + benign + the 1 GiB checkpoint
    .venv/bin/python benchmarks/corpus.py --no-big   # skip the 1 GiB checkpoint
    .venv/bin/python benchmarks/corpus.py --big-only # only the 1 GiB checkpoint (reused if present)

Layout written::

    .corpus/cases/malicious/...   tests/fixtures/payloads.py: malicious_corpus(dirpath)
    .corpus/cases/benign/...      tests/fixtures/benign.py:   benign_corpus(dirpath)
    .corpus/big/state_dict_1GiB.pt
    .corpus/manifest.json   [{"case", "kind", "path", "bytes", "description"}, ...]

The builders return ``(path, case_id, description)`` records; each record is one case of the
benchmark (a file, or a folder when the builder hands back a folder). If a builder module does not
exist yet, a small placeholder set written here stands in (marked ``placeholder`` in the manifest).
Nothing here ever loads what it writes; the malicious payloads are harmless (``true``, ``print``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / ".corpus"
BIG_NAME = "state_dict_1GiB.pt"
BIG_BYTES = 1 << 30

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------- builders
def _import_builder(module: str, name: str) -> Callable[[Path], Any] | None:
    """Import ``fixtures.<module>.<name>`` the way the tests do (tests/ on sys.path)."""
    for p in (ROOT / "tests", ROOT):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    try:
        mod = importlib.import_module(f"fixtures.{module}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"fixtures.{module}", "fixtures"):
            return None
        raise
    return getattr(mod, name, None)


def _records(built: Any, root: Path) -> list[tuple[Path, str, str]]:
    """Normalise a builder's return value to (path, case_id, description) records.

    Accepts the documented NamedTuples (``path``, ``case_id``, ``description``), plain tuples,
    bare paths, or nothing (then every top-level entry under ``root`` is a case).
    """
    out: list[tuple[Path, str, str]] = []
    items: Iterable[Any]
    if built is None:
        items = sorted(root.iterdir())
    elif isinstance(built, dict):
        items = [(v, k, "") if isinstance(v, (str, Path)) else v for k, v in built.items()]
    else:
        items = built
    for item in items:
        if isinstance(item, (str, Path)):
            path = Path(item)
            out.append((path, path.relative_to(root).as_posix(), ""))
            continue
        path = Path(getattr(item, "path", item[0]))
        case_id = str(getattr(item, "case_id", None) or (item[1] if len(item) > 1 else path.name))
        desc = getattr(item, "description", None)
        if desc is None:
            desc = item[2] if len(item) > 2 else ""
        out.append((path, case_id, str(desc)))
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------- placeholder corpus
class _Call:
    """A harmless ``callable(*args)`` at unpickling time (``__reduce__``)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


def _placeholder_malicious(root: Path) -> list[tuple[Path, str, str]]:
    """A few classic payloads, used only while tests/fixtures/payloads.py does not exist."""
    import io
    import zipfile

    import torch

    root.mkdir(parents=True, exist_ok=True)
    recs = []

    def add(name: str, data: bytes, desc: str) -> None:
        p = root / name
        p.write_bytes(data)
        recs.append((p, f"placeholder/{name}", desc))

    add("os_system.pkl", pickle.dumps(_Call(os.system, "true")), "os.system via REDUCE")
    add("eval.pkl", pickle.dumps(_Call(eval, "print('x')")), "builtins.eval")
    add("exec.bin", pickle.dumps(_Call(exec, "print('x')"), protocol=0), "protocol 0, .bin name")
    # torch zip whose data.pkl calls os.system before the state_dict
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4), "x": _Call(os.system, "true")}, buf)
    add("torch_os_system.pt", buf.getvalue(), "torch.save with an os.system reduce")
    # same bytes under a non-model extension
    add("torch_os_system.txt", buf.getvalue(), "torch zip named .txt")
    # plain zip wrapping a pickle
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("inner/model.pkl", pickle.dumps(_Call(os.system, "true")))
    add("wrapped.zip", zbuf.getvalue(), "zip around an os.system pickle")
    return recs


def _placeholder_benign(root: Path) -> list[tuple[Path, str, str]]:
    """A few ordinary files, used only while tests/fixtures/benign.py does not exist."""
    import numpy as np
    import torch

    root.mkdir(parents=True, exist_ok=True)
    recs = []
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    p = root / "state_dict.pt"
    torch.save(model.state_dict(), p)
    recs.append((p, "placeholder/state_dict.pt", "torch state_dict"))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8)).sum().backward()
    opt.step()
    p = root / "optimizer.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, p)
    recs.append((p, "placeholder/optimizer.pt", "model + AdamW state"))
    p = root / "array.npy"
    np.save(p, np.arange(10, dtype=np.float32))
    recs.append((p, "placeholder/array.npy", "numpy float array"))
    return recs


# ---------------------------------------------------------------------------- big file
def build_big(dirpath: Path = CORPUS / "big") -> Path:
    """Write (once) a 1 GiB ``torch.save`` state_dict: 128 float32 tensors of 2048x1024."""
    path = dirpath / BIG_NAME
    if path.exists() and path.stat().st_size >= BIG_BYTES:
        return path
    import torch

    dirpath.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    n = BIG_BYTES // (2048 * 1024 * 4)
    state = {f"layers.{i}.weight": torch.randn(2048, 1024, generator=gen) for i in range(n)}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


# -------------------------------------------------------------------------------- main
def build(kinds: Iterable[str], force_placeholder: bool = False) -> list[dict[str, Any]]:
    """Build the requested kinds afresh; return the manifest entries."""
    entries: list[dict[str, Any]] = []
    specs = {"malicious": ("payloads", "malicious_corpus", _placeholder_malicious),
             "benign": ("benign", "benign_corpus", _placeholder_benign)}
    for kind in kinds:
        module, func, placeholder = specs[kind]
        root = CORPUS / "cases" / kind
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        builder = None if force_placeholder else _import_builder(module, func)
        t0 = time.perf_counter()
        if builder is None:
            print(f"[corpus] tests/fixtures/{module}.py:{func} missing: placeholder {kind} set",
                  file=sys.stderr)
            recs, source = placeholder(root), "placeholder"
        else:
            recs, source = _records(builder(root), root), f"tests/fixtures/{module}.py:{func}"
        print(f"[corpus] {kind}: {len(recs)} cases from {source} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for path, case_id, desc in recs:
            entries.append({
                "case": case_id, "kind": kind,
                "path": path.resolve().relative_to(CORPUS).as_posix(),
                "bytes": _size(path), "description": desc, "source": source,
            })
    return entries


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--no-big", action="store_true", help="skip the 1 GiB checkpoint")
    ap.add_argument("--big-only", action="store_true", help="only the 1 GiB checkpoint")
    ap.add_argument("--placeholder", action="store_true",
                    help="use the small built-in sets, not tests/fixtures (harness development)")
    args = ap.parse_args(argv)
    if not args.big_only:
        entries = build(["malicious", "benign"], args.placeholder)
        seen: set[str] = set()
        for e in entries:  # case ids must be unique: they key the results
            if e["case"] in seen:
                e["case"] = f"{e['kind']}/{e['case']}"
            seen.add(e["case"])
        (CORPUS / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")
        print(f"[corpus] manifest: {len(entries)} cases -> {CORPUS / 'manifest.json'}",
              file=sys.stderr)
    if not args.no_big:
        t0 = time.perf_counter()
        path = build_big()
        print(f"[corpus] big: {path} ({path.stat().st_size} bytes, "
              f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
