"""JSON documents that make a loader run code or render a template.

Recognised kinds (any other JSON is not a model file and counts as skipped):

- Hugging Face configs (model, generation, tokenizer, processor) and Trainer state. In them,
  ``auto_map`` / ``custom_pipelines`` name the ``module.Class`` that ``trust_remote_code=True``
  imports (TG-HF-001; ``org/repo--module.Class`` pulls code from another repository), and
  ``chat_template`` (a string, or a list of ``{"name", "template"}``, as in
  ``tokenizer_config.json`` and ``chat_template.json``) goes to the template checker.
- Keras ``config.json`` (inside ``.keras`` zips): checked by
  ``trainguard.scan.analyzers.keras.check_keras_config`` when that module is installed.

Parsing is bounded: the document must fit in ``[scan.limits] max_header_bytes``, and nesting
deeper than the parser's recursion limit is a TG-LIM-001 finding, not a crash. Documents over
1 MiB are parsed only if their text can hold one of the keys looked for.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, BinaryIO

from trainguard.core.errors import LimitExceeded
from trainguard.scan.analyzers.templates import check_template
from trainguard.scan.context import Blob, ScanContext

# keys that mark a Hugging Face model/generation/tokenizer/processor config or Trainer state
_HF_KEYS = frozenset({
    "model_type", "architectures", "transformers_version", "auto_map", "custom_pipelines",
    "tokenizer_class", "chat_template", "processor_class", "image_processor_type",
    "feature_extractor_type", "added_tokens_decoder", "model_max_length", "log_history",
    "best_model_checkpoint",
})
_MAX_REFS = 20
#: documents up to this size are always parsed; bigger ones (tokenizer.json, vocabularies) only if
#: they can hold a key looked for here
_ALWAYS_PARSE = 1 << 20
# The keys the checks here and the Keras checker look for, or a \u-escaped printable ASCII
# character (JSON can spell "auto_map" as "auto\u005fmap"; real tokenizer files do not escape
# printable ASCII), so skipping a document without them cannot miss a key.
_CHUNK = 16 << 20
_KEYS = (b'"auto_map"', b'"custom_pipelines"', b'"chat_template"', b'"class_name"')
_ESCAPED_ASCII = re.compile(rb"\\u00[2-7][0-9A-Fa-f]")


def _may_hold_keys(raw: bytes) -> bool:
    return any(k in raw for k in _KEYS) or _ESCAPED_ASCII.search(raw) is not None


def _stream_may_hold_keys(first: bytes, f: BinaryIO) -> bool:
    """:func:`_may_hold_keys` over a stream, chunk by chunk (keys may straddle chunks)."""
    overlap = max(len(k) for k in _KEYS)
    tail = b""
    chunk = first
    while chunk:
        if _may_hold_keys(tail + chunk):
            return True
        tail = chunk[-overlap:]
        chunk = f.read(_CHUNK)
    return False


KerasCheck = Callable[[ScanContext, Blob, Any], bool]
#: stands for a document too deeply nested to parse (its finding is already recorded)
TOO_DEEP: Any = object()


@functools.lru_cache(maxsize=1)
def _keras_check() -> KerasCheck | None:
    """The Keras config checker, if its module is present (it is optional here)."""
    try:
        from trainguard.scan.analyzers import keras
    except ImportError:
        return None
    check = getattr(keras, "check_keras_config", None)
    return check if callable(check) else None


def load_json(ctx: ScanContext, blob: Blob) -> tuple[bool, Any]:
    """(parsed, document): parsed is False when the bytes are not JSON text at all.

    The document is :data:`TOO_DEEP` when nesting stopped the parser (a finding is recorded).
    """
    limit = ctx.limits.max_header_bytes
    with blob.opener() as f:
        raw = f.read(limit + 1)
        if len(raw) > limit:
            # too big to parse: a finding only if it could hold a key a loader acts on (a huge
            # config.json hiding auto_map), else it is data (a JSON Lines dataset, a dump)
            if _stream_may_hold_keys(raw, f):
                raise LimitExceeded("max_header_bytes", limit, "JSON document")
            return False, None
    if len(raw) > _ALWAYS_PARSE and not _may_hold_keys(raw):
        return False, None  # big and no key anything here looks for: tokenizer.json, vocab
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False, None
    try:
        return True, json.loads(text)
    except RecursionError:
        # the C decoder stops at the interpreter's recursion limit (~1,000 levels): no config a
        # loader reads is nested that deep
        ctx.add("TG-LIM-001", blob, "JSON nested deeper than the parser's recursion limit; "
                "not inspected")
        return True, TOO_DEEP
    except ValueError:
        return False, None


def _references(value: Any) -> list[str]:
    """Every non-empty string inside an auto_map/custom_pipelines value (iteratively)."""
    refs: list[str] = []
    stack = [value]
    while stack and len(refs) < 10_000:
        v = stack.pop()
        if isinstance(v, str) and v:
            refs.append(v)
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return refs


def _describe_auto_map(value: Any) -> str:
    if isinstance(value, dict):
        items = []
        for auto_class, target in value.items():
            refs = _references(target)
            items.append(f"{auto_class} -> {', '.join(refs) if refs else '(none)'}")
    else:
        items = _references(value)
    text = "; ".join(items[:_MAX_REFS])
    if len(items) > _MAX_REFS:
        text += f"; and {len(items) - _MAX_REFS} more"
    return text


def check_hf_config(ctx: ScanContext, blob: Blob, doc: dict[str, Any]) -> bool:
    """TG-HF-001 for custom code references, template checks for chat templates."""
    if not _HF_KEYS & doc.keys():
        return False
    for key in ("auto_map", "custom_pipelines"):
        if key not in doc or not doc[key]:
            continue
        refs = _references(doc[key])
        remote = sorted({r.split("--", 1)[0] for r in refs if "--" in r})
        evidence = f"{key}: {_describe_auto_map(doc[key])}"
        if remote:
            evidence += f" (code from other repositories: {', '.join(remote)})"
        ctx.add("TG-HF-001", blob, evidence, references=refs[:100])
    template = doc.get("chat_template")
    if isinstance(template, str):
        check_template(ctx, blob, template, "chat_template")
    elif isinstance(template, list):
        for i, entry in enumerate(template):
            if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                name = entry.get("name", i)
                check_template(ctx, blob, entry["template"], f"chat_template[{name!r}]")
    elif isinstance(template, dict):
        for name, text in template.items():
            if isinstance(text, str):
                check_template(ctx, blob, text, f"chat_template[{name!r}]")
    return True


def analyze_json(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """Check recognised JSON configs; False (skipped) for other JSON and for non-JSON text."""
    parsed, doc = load_json(ctx, blob)
    if not parsed:
        return False
    if doc is TOO_DEEP:
        return True
    recognised = isinstance(doc, dict) and check_hf_config(ctx, blob, doc)
    keras = _keras_check()
    if keras is not None and keras(ctx, blob, doc):
        recognised = True
    if recognised:
        ctx.saw("json")
    return recognised
