"""The registry of rule ids. Ids are stable and never reused; retired rules stay listed.

``docs/rules.md`` is generated from this table (``trainguard rules -f markdown``) and a test
checks that it is current.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainguard.core.findings import Finding, Location, Severity


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: Severity
    why: str
    remedy: str

    def finding(
        self,
        location: Location,
        evidence: str,
        *,
        severity: Severity | None = None,
        count: int = 1,
        **details: object,
    ) -> Finding:
        """Make a finding under this rule (severity may be raised or lowered per occurrence)."""
        return Finding(
            rule_id=self.id,
            severity=self.severity if severity is None else severity,
            title=self.title,
            location=location,
            evidence=evidence,
            remedy=self.remedy,
            count=count,
            details=dict(details),
        )


_C, _H, _M, _L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

_ALL = [
    # --- pickle ------------------------------------------------------------------------------
    Rule("TG-PKL-001", "Pickle imports a code-execution primitive", _C,
         "Unpickling resolves this global, which can run commands, evaluate code, load native "
         "code or reach the network. This is how malicious checkpoints take over a training job.",
         "Do not load this file. Obtain the model from a trusted source, preferably as "
         "safetensors."),
    Rule("TG-PKL-002", "Pickle calls a global that is not on the allow-list", _H,
         "Unpickling calls this function or class with attacker-chosen arguments. It is not a "
         "known safe constructor of tensors, arrays or containers.",
         "Load with weights_only=True or convert to safetensors; if the global is yours and "
         "trusted, add it to [scan.allow] globals in trainguard.toml."),
    Rule("TG-PKL-003", "Pickle instantiates a class that is not on the allow-list", _M,
         "Unpickling imports this class's module (running its import-time code) and creates an "
         "instance through __new__ and __setstate__ without calling __init__.",
         "If this is your own model class (a full-model torch.save), save a state_dict instead, "
         "or add the class to [scan.allow] globals."),
    Rule("TG-PKL-004", "Pickle imports a global that is not on the allow-list", _M,
         "Unpickling imports this module and looks up the name, running the module's import-time "
         "code, even if the object is never called.",
         "Verify where the file came from; add the global to [scan.allow] globals if it is "
         "trusted."),
    Rule("TG-PKL-005", "Pickle calls an object it built at load time", _H,
         "The callable is not a plain import but the result of another call or attribute lookup, "
         "a pattern used to hide the real target (getattr chains, operator gadgets).",
         "Do not load this file."),
    Rule("TG-PKL-006", "Pickle sets attributes on an imported module, class or function", _H,
         "BUILD applied to an imported object rewrites that object's attributes in the loading "
         "process: a monkeypatch smuggled inside data.",
         "Do not load this file."),
    Rule("TG-PKL-007", "Pickle stream is malformed", _M,
         "The stream could not be parsed to its end. Loaders execute opcodes as they read them, "
         "so whatever came before the break runs before the error (the 'nullifAI' technique), "
         "and scanners that give up on the error miss it.",
         "Treat the file as hostile unless its origin is known; re-save it from the source."),
    Rule("TG-PKL-008", "Data after the end of a pickle", _L,
         "Bytes follow the final STOP opcode. Loaders ignore them, but they can hide a second "
         "payload for a different loader.",
         "Re-save the file; investigate where the trailing bytes came from."),
    Rule("TG-PKL-009", "Pickle uses an unusual opcode for a model file", _L,
         "EXT1/EXT2/EXT4 extension registry lookups and PERSID text ids are not produced by "
         "PyTorch, NumPy or joblib and can reach globals indirectly.",
         "Re-save the file with the framework's own save function."),
    # --- training sabotage primitives -------------------------------------------------------------
    Rule("TG-SAB-001", "File reseeds or replaces random number generator state", _H,
         "Loading this file sets a global RNG seed or state (torch, numpy, random, CUDA), "
         "silently changing data order, dropout and initialisation of the job that loads it.",
         "Do not load this file into a training job; investigate who produced it."),
    Rule("TG-SAB-002", "File replaces an optimizer, module or framework attribute", _C,
         "Loading this file monkeypatches a training-critical object (torch.optim, torch.nn, "
         "torch global state), the way optimizer steps get flipped or weights perturbed from "
         "inside a job.",
         "Do not load this file; investigate who produced it."),
    Rule("TG-SAB-003", "File inserts a delay", _H,
         "Loading this file calls a sleep or wait primitive: a way to slow one rank and stall or "
         "time out a distributed job.",
         "Do not load this file into a training job."),
    Rule("TG-SAB-004", "File kills processes, sends signals or exits", _C,
         "Loading this file can kill ranks, send signals or exit the interpreter, ending "
         "multi-node runs.",
         "Do not load this file."),
    Rule("TG-SAB-005", "File changes global training settings", _H,
         "Loading this file changes process-wide framework settings (default dtype, grad mode, "
         "determinism, threads, weight initialisation).",
         "Do not load this file into a training job."),
    # --- containers and formats -------------------------------------------------------------
    Rule("TG-FMT-001", "File could not be parsed", _M,
         "The file looks like a model format but is malformed or truncated. A parse failure is "
         "never a pass: a loader may still execute part of it.",
         "Re-download or re-save the file; treat it as untrusted until it parses."),
    Rule("TG-FMT-002", "File is valid in two formats at once (polyglot)", _M,
         "Different loaders would read different content from the same bytes, a known way to "
         "show a scanner one thing and a loader another.",
         "Re-save the model in a single format."),
    Rule("TG-FMT-003", "Archive or compressed format cannot be inspected", _M,
         "The content is packed in a way this installation cannot read (missing optional codec, "
         "encryption, unsupported compression), so it was not scanned.",
         "Install the extra named in the evidence (e.g. trainguard[7z]) or unpack the file."),
    Rule("TG-ZIP-001", "Zip headers disagree", _M,
         "Local and central directory headers name different files, sizes or methods, or the CRC "
         "does not match. PyTorch trusts the central directory and ignores CRCs; scanners that "
         "read the local headers see other content.",
         "Re-save the checkpoint; treat it as tampered until explained."),
    Rule("TG-ZIP-002", "Zip member name is a path trick", _H,
         "Absolute paths, '..' components, duplicate names or control characters in member names "
         "can make extraction write outside the target or make loaders pick another member.",
         "Do not extract or load this archive."),
    Rule("TG-LIM-001", "Safety limit reached; content not fully inspected", _M,
         "Inspection stopped at a depth, size, member-count or work limit (zip bombs, deep "
         "nesting, huge pickles). What was not inspected cannot be called clean.",
         "Inspect the file in isolation or raise the limit in [scan.limits] if it is trusted."),
    Rule("TG-FS-001", "Symbolic link leaves the scanned tree", _M,
         "A link inside the scanned path points outside it; it was not followed. Loaders would "
         "follow it to content nobody reviewed.",
         "Replace the link with the file, or scan its target explicitly."),
    Rule("TG-NPY-001", "NumPy file holds an object array (pickle)", _L,
         "Object arrays are stored as pickles and need allow_pickle=True, which runs code on "
         "load. The embedded pickle was scanned; the file still needs an unsafe loader flag.",
         "Store numeric data only, or use safetensors."),
    Rule("TG-KER-001", "Keras model contains a Lambda layer (serialized code)", _H,
         "Lambda layers carry Python bytecode that runs on load (CVE-2024-3660; .h5 files ignore "
         "safe_mode, CVE-2025-9905).",
         "Replace Lambda layers with registered custom layers and load with safe_mode=True."),
    Rule("TG-KER-002", "Keras config references objects outside Keras", _M,
         "A layer, function or object is resolved from a module outside keras, so loading "
         "imports and calls that module's code (CVE-2025-1550).",
         "Check the module named; only load with the custom objects you trust passed explicitly."),
    Rule("TG-KER-003", "Keras config references a dangerous function", _C,
         "The config resolves a known code-execution or security-relevant function (for example "
         "keras.config.enable_unsafe_deserialization or os.system) during loading.",
         "Do not load this model."),
    Rule("TG-TF-001", "TensorFlow graph uses file-system or code-execution ops", _H,
         "Ops such as ReadFile, WriteFile, MatchingFiles or PyFunc touch the host or run Python "
         "when the graph executes.",
         "Review the graph; serve it in a sandbox or remove the ops."),
    Rule("TG-ONNX-001", "ONNX external data path escapes the model directory", _H,
         "External tensor data names an absolute path or '..', so loading reads (or with some "
         "tools writes) arbitrary files (CVE-2024-27318, CVE-2024-5187).",
         "Keep external data files beside the model and reference them by plain relative names."),
    Rule("TG-ONNX-002", "ONNX model uses custom operator domains", _L,
         "Nodes from non-standard domains need native libraries registered at load time.",
         "Make sure the custom-op library is trusted and pinned."),
    Rule("TG-TPL-001", "Chat template escapes the Jinja sandbox", _C,
         "The template reaches Python internals (dunder attributes, globals, os, import) and "
         "runs code when rendered by a loader without a sandbox (CVE-2024-34359).",
         "Replace the chat template with a reviewed one."),
    Rule("TG-TPL-002", "Chat template could not be parsed", _M,
         "The template is not valid Jinja; a loader may fail or behave unexpectedly.",
         "Replace the chat template with a reviewed one."),
    Rule("TG-ST-001", "safetensors header is invalid", _M,
         "The JSON header is malformed, too large, has overlapping or out-of-bounds tensors or "
         "unknown dtypes; loaders may reject the file or read the wrong bytes.",
         "Re-save the tensors with the safetensors library."),
    Rule("TG-HF-001", "Model folder requires trust_remote_code (custom code)", _H,
         "auto_map or custom Python files in the folder run arbitrary code when loaded with "
         "trust_remote_code=True.",
         "Review the code, pin the revision, or use a model that needs no remote code."),
]

def _capability_rules() -> list[Rule]:
    # One module per capability keeps each family's ids in one place (and edits apart).
    from trainguard.core.rules_env import RULES as ENV
    from trainguard.core.rules_guard import RULES as GUARD
    from trainguard.core.rules_integrity import RULES as INTEGRITY
    from trainguard.core.rules_ledger import RULES as LEDGER

    return [*INTEGRITY, *ENV, *GUARD, *LEDGER]


_ALL += _capability_rules()

RULES: dict[str, Rule] = {r.id: r for r in _ALL}
if len(RULES) != len(_ALL):  # pragma: no cover - guards against a reused id at import time
    raise RuntimeError("duplicate rule id in the registry")


def rule(rule_id: str) -> Rule:
    """The rule with this id (KeyError for an unknown id: a programming error)."""
    return RULES[rule_id]


def render_markdown(rules: list[Rule] | None = None) -> str:
    """docs/rules.md: every rule with severity, why it matters and the remedy."""
    lines = [
        "# Rules",
        "",
        "Every finding carries one of these stable ids. Ids are never reused. The severity shown",
        "is the default; some occurrences are raised or lowered (the finding says which).",
        "Generated by `trainguard rules -f markdown > docs/rules.md`; a test keeps it current.",
        "",
    ]
    for r in _ALL if rules is None else rules:
        lines += [
            f"## {r.id}: {r.title}",
            "",
            f"- severity: **{r.severity.label}**",
            f"- why: {r.why}",
            f"- remedy: {r.remedy}",
            "",
        ]
    return "\n".join(lines)
