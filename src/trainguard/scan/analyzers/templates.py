"""Chat templates (Jinja2): find sandbox escapes by parsing, never rendering.

Loaders render the chat template shipped with a model (GGUF ``tokenizer.chat_template``,
``tokenizer_config.json``, ``chat_template.jinja``). llama-cpp-python rendered it in a plain
``jinja2.Environment`` (CVE-2024-34359), where ``().__class__.__base__.__subclasses__()`` and
``cycler.__init__.__globals__.os`` reach Python internals and run commands. Even a sandboxed
environment only helps if every loader uses one, so the template itself is judged.

The template is parsed with :meth:`jinja2.Environment.parse` (lexer and parser only: nothing is
compiled or rendered) and the syntax tree is walked. String expressions whose value is fixed
(``'__cla' ~ 'ss__'``, ``'\\x5f\\x5f'``, ``'__ssalc__'|reverse``, ``'_' * 2``) are evaluated
statically, so building a dunder name out of pieces does not hide it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainguard.core.findings import Finding, Location, Severity
from trainguard.core.rules import rule

if TYPE_CHECKING:
    from trainguard.scan.context import Blob, ScanContext

#: larger templates are not analyzed (real chat templates are a few KiB; the biggest seen ~40 KiB)
MAX_TEMPLATE_CHARS = 1 << 20
#: longest string the static evaluator builds (``'a' * 10**9`` must not allocate)
_MAX_STATIC_STR = 1 << 16
#: characters the static evaluator builds per template, all values together
_STATIC_BUDGET = 1 << 24
#: longest list the static evaluator keeps
_MAX_LIST = 256
#: evidence items listed per finding
_MAX_ITEMS = 8

# Python's own dunders are lower case (``__class__``, ``__globals__``); a private name-mangled
# attribute looks like ``_TemplateReference__context``. Upper-case sentinels ('__EMPTY__') are not.
_DUNDER = re.compile(r"__[a-z][a-z0-9_]*__|_[A-Z][A-Za-z0-9]*__[a-z]\w*")
# A piece of one: '__cla' ~ 'ss__'
_FRAGMENT = re.compile(r"^__(?:[a-z]|$)|[a-z0-9]__$")
# Attributes jinja2.sandbox refuses besides ``_``-prefixed ones (is_internal_attribute).
_UNSAFE_ATTRS = frozenset({
    "mro", "func_globals", "func_code", "func_closure", "func_defaults", "gi_frame", "gi_code",
    "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "ag_await",
    "tb_frame", "tb_next", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "co_code",
    "im_func", "im_self", "im_class",
})
# Attribute names that only appear on the way to running a command or code.
_EXEC_ATTRS = frozenset({
    "os", "sys", "subprocess", "builtins", "popen", "system", "spawnl", "spawnlp", "spawnv",
    "spawnvp", "execl", "execlp", "execv", "execve", "execvp", "posix_spawn", "eval", "exec",
    "compile", "import_module", "load_module", "exec_module", "getoutput", "getstatusoutput",
    "check_output", "check_call", "Popen", "run_path", "run_module",
})
# Subscripts fall back to getattr in Jinja (``x['os']``); 'system' is a common dict key in chat
# templates (role names), so it is left out here.
_EXEC_KEYS = _EXEC_ATTRS - {"system"}
# Names a chat template never needs: Python builtins and modules, and the objects SSTI payloads
# start from in Flask/Jinja apps (``self`` is Jinja's TemplateReference).
_DANGEROUS_NAMES = frozenset({
    "os", "sys", "subprocess", "builtins", "__builtins__", "__import__", "importlib", "eval",
    "exec", "compile", "open", "getattr", "setattr", "delattr", "globals", "locals", "vars",
    "popen", "self", "config", "request", "url_for", "get_flashed_messages",
})
# Jinja's default globals (and the ones Hugging Face adds): calling them is fine, reaching into
# their attributes (``lipsum.__globals__``, ``cycler.__init__``) is the classic escape.
_GLOBAL_CALLABLES = frozenset({
    "cycler", "joiner", "lipsum", "namespace", "range", "dict", "raise_exception",
    "strftime_now",
})
# Filters that look attributes up by a name given as data.
_ATTRIBUTE_FILTERS = frozenset({
    "map", "selectattr", "rejectattr", "sort", "groupby", "sum", "unique", "min", "max", "join",
})


@dataclass(frozen=True)
class TemplateIssue:
    """One problem found in a template."""

    rule_id: str
    severity: Severity
    what: str
    line: int | None = None

    def text(self) -> str:
        return f"{self.what} (line {self.line})" if self.line else self.what


def inspect_template(text: str) -> list[TemplateIssue]:
    """Issues in one Jinja2 template source (parsed, never rendered); empty when it is clean."""
    if len(text) > MAX_TEMPLATE_CHARS:
        return [TemplateIssue("TG-LIM-001", Severity.MEDIUM,
                              f"template of {len(text)} characters is larger than "
                              f"{MAX_TEMPLATE_CHARS}; not analyzed")]
    import jinja2

    try:
        tree = _environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        issues = [TemplateIssue("TG-TPL-002", Severity.MEDIUM, f"syntax error: {exc.message}",
                                exc.lineno)]
        return issues + _lexical_fallback(text)
    except RecursionError:
        return [TemplateIssue("TG-TPL-002", Severity.MEDIUM, "expressions nested too deeply to "
                              "parse"), *_lexical_fallback(text)]
    except Exception as exc:  # any other parser failure on hostile text is a finding too
        return [TemplateIssue("TG-TPL-002", Severity.MEDIUM, f"parser error "
                              f"{type(exc).__name__}: {str(exc)[:120]}"), *_lexical_fallback(text)]
    return _Walker().run(tree)


def template_findings(text: str, location: Location, where: str) -> list[Finding]:
    """Findings for the template ``text`` found at ``location`` (``where`` names the field)."""
    by_rule: dict[str, list[TemplateIssue]] = {}
    for issue in inspect_template(text):
        by_rule.setdefault(issue.rule_id, []).append(issue)
    findings = []
    for rule_id, issues in by_rule.items():
        items = list(dict.fromkeys(i.text() for i in issues))
        shown = "; ".join(items[:_MAX_ITEMS])
        if len(items) > _MAX_ITEMS:
            shown += f"; and {len(items) - _MAX_ITEMS} more"
        findings.append(rule(rule_id).finding(
            location, f"{where}: {shown}", severity=max(i.severity for i in issues),
            count=len(items), template_field=where))
    return findings


def check_template(ctx: ScanContext, blob: Blob, text: str, where: str,
                   offset: int | None = None) -> None:
    """Add findings for a template found inside ``blob`` to the scan context ``ctx``."""
    ctx.findings.extend(template_findings(text, ctx.location(blob, offset), where))


# --------------------------------------------------------------------------------------- parsing
@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """A sandboxed environment with the extensions Hugging Face enables for chat templates.

    Built once, on first use, so jinja2 is imported only when a template is seen.
    """
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' AssistantTracker)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    # transformers renders with trim_blocks/lstrip_blocks and the loopcontrols extension
    # (``{% break %}``); ``do`` is accepted too so templates written for other loaders parse.
    return ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, jinja2.ext.do, GenerationTag],
    )


def _lexical_fallback(text: str) -> list[TemplateIssue]:
    """For a template that does not parse here (another loader may accept it): dunder names."""
    names = sorted({m.group(0) for m in _DUNDER.finditer(text)})
    if not names:
        return []
    return [TemplateIssue("TG-TPL-001", Severity.HIGH,
                          f"unparsable template mentions Python internals {', '.join(names[:8])}")]


# --------------------------------------------------------------------------------------- walking
_UNKNOWN: Any = object()


def _short(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


class _Walker:
    """Walks a Jinja2 syntax tree once, evaluating constant strings and collecting issues."""

    def __init__(self) -> None:
        self.issues: list[TemplateIssue] = []
        self.values: dict[int, Any] = {}  # id(node) -> static value or _UNKNOWN
        self.computed: set[int] = set()  # nodes whose string value is built at render time
        self.symbols: dict[str, Any] = {}  # {% set name = const %}
        self.computed_names: set[str] = set()
        self.stored: set[str] = set()
        self.budget = _STATIC_BUDGET  # characters the static evaluator may still build

    def flag(self, what: str, node: Any, severity: Severity = Severity.CRITICAL) -> None:
        self.issues.append(TemplateIssue("TG-TPL-001", severity, what,
                                         getattr(node, "lineno", None)))

    def run(self, tree: Any) -> list[TemplateIssue]:
        from jinja2 import nodes

        order = list(_postorder(tree))
        for n, _ in order:
            if isinstance(n, nodes.NSRef) or (
                isinstance(n, nodes.Name) and n.ctx in ("store", "param")
            ):
                self.stored.add(n.name)
        for node, parent in order:
            self.visit(node, parent)
        return self.issues

    # ---------------------------------------------------------------- per node
    def visit(self, node: Any, parent: Any) -> None:
        from jinja2 import nodes

        value = self.evaluate(node)
        self.values[id(node)] = value
        if isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            self.flag(f"{type(node).__name__.lower()} of another template (reads files through "
                      "the loader)", node, Severity.HIGH)
        elif isinstance(node, nodes.Name):
            if node.ctx == "load" and node.name in _DANGEROUS_NAMES and (
                node.name not in self.stored
            ):
                self.flag(f"uses {node.name!r}", node)
        elif isinstance(node, nodes.NSRef):
            self.check_attr_name(node.attr, node, "namespace attribute")
        elif isinstance(node, nodes.Getattr):
            self.check_attr_name(node.attr, node, "attribute")
            self.check_global_root(node)
            if node.attr == "format_map" or (
                node.attr == "format" and not isinstance(self.values.get(id(node.node)), str)
            ):
                self.flag(f".{node.attr}() on a string built at render time (format fields "
                          "can read attributes)", node, Severity.HIGH)
        elif isinstance(node, nodes.Getitem):
            key = self.values.get(id(node.arg), _UNKNOWN)
            if isinstance(key, str):
                if _DUNDER.search(key) or key in _UNSAFE_ATTRS or key in _EXEC_KEYS:
                    self.flag(f"subscript [{_short(key)}] (falls back to attribute lookup)", node)
            elif id(node.arg) in self.computed:
                self.flag("subscript with a key built at render time (can name any attribute)",
                          node, Severity.HIGH)
            self.check_global_root(node)
        elif isinstance(node, nodes.Filter):
            self.check_filter(node)
        # constant strings naming Python internals anywhere except plain output
        if (
            value is not _UNKNOWN
            and not isinstance(node, nodes.TemplateData)
            and not isinstance(parent, nodes.Output)
        ):
            for s in _strings(value):
                m = _DUNDER.search(s)
                if m:
                    self.flag(f"string {_short(s)} names Python internals", node)
                    break
                if isinstance(node, nodes.Const) and _FRAGMENT.search(s):
                    self.flag(f"string {_short(s)} looks like a piece of a dunder name", node,
                              Severity.HIGH)
                    break

    def check_attr_name(self, name: str, node: Any, what: str) -> None:
        if name.startswith("_") or name in _UNSAFE_ATTRS or name in _EXEC_ATTRS:
            self.flag(f"{what} {name!r}", node)

    def check_global_root(self, node: Any) -> None:
        from jinja2 import nodes

        root = node.node
        if isinstance(root, nodes.Name) and root.name in _GLOBAL_CALLABLES and (
            root.name not in self.stored
        ):
            self.flag(f"reaches into the Jinja global {root.name!r}", node)

    def check_filter(self, node: Any) -> None:
        name = node.name
        args = list(node.args)
        kwargs = {k.key: k.value for k in node.kwargs}
        names: list[Any] = []
        if name == "attr":
            names = args[:1]
        elif name in _ATTRIBUTE_FILTERS:
            if "attribute" in kwargs:
                names.append(kwargs["attribute"])
            if name in ("selectattr", "rejectattr") and args:
                names.append(args[0])
            if name == "map" and args and self.values.get(id(args[0])) == "attr":
                names.extend(args[1:2])
        if name in ("attr", "map") and (node.dyn_args is not None or node.dyn_kwargs is not None):
            self.flag(f"|{name} with unpacked arguments", node, Severity.HIGH)
        for arg in names:
            value = self.values.get(id(arg), _UNKNOWN)
            if not isinstance(value, str):
                self.flag(f"|{name} looks up an attribute named at render time", node,
                          Severity.HIGH)
                continue
            for part in value.split("."):
                self.check_attr_name(part, node, f"|{name} attribute")

    # ---------------------------------------------------------------- static evaluation
    def evaluate(self, node: Any) -> Any:
        """The value of ``node`` if it is fixed by the template text alone, else _UNKNOWN."""
        from jinja2 import nodes

        if isinstance(node, (nodes.Const, nodes.TemplateData)):
            value = node.data if isinstance(node, nodes.TemplateData) else node.value
            return value if _size(value) is not None else _UNKNOWN
        if isinstance(node, nodes.Name):
            if node.ctx == "load":
                if node.name in self.computed_names:
                    self.computed.add(id(node))
                return self.symbols.get(node.name, _UNKNOWN)
            return _UNKNOWN
        if isinstance(node, nodes.Assign):
            self.record_assign(node.target, node.node)
            return _UNKNOWN
        self.mark_computed(node)
        if self.budget <= 0:
            return _UNKNOWN
        try:
            value = self.compute(node)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError, MemoryError):
            return _UNKNOWN
        size = _size(value)
        if size is None:
            return _UNKNOWN
        self.budget -= size
        return value

    def mark_computed(self, node: Any) -> None:
        """Remember nodes whose string value is assembled at render time (``a ~ b``, ``|join``)."""
        from jinja2 import nodes

        kids = [id(c) for c in node.iter_child_nodes()]
        assembled = isinstance(node, nodes.Concat) or (
            isinstance(node, nodes.Filter) and node.name in _STRING_FILTERS
        ) or (
            isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr)
            and node.node.attr in _STRING_METHODS
        )
        arithmetic_on_text = isinstance(node, (nodes.Add, nodes.Mul, nodes.Mod)) and any(
            k in self.computed or isinstance(self.values.get(k), str) for k in kids
        )
        if assembled or arithmetic_on_text:
            self.computed.add(id(node))

    def compute(self, node: Any) -> Any:
        from jinja2 import nodes

        v = self.values.get
        if isinstance(node, (nodes.List, nodes.Tuple)):
            return [v(id(i), _UNKNOWN) for i in node.items]
        if isinstance(node, nodes.Concat):
            parts = [v(id(n), _UNKNOWN) for n in node.nodes]
            if _UNKNOWN in parts or sum(_size(p) or 0 for p in parts) > _MAX_STATIC_STR:
                return _UNKNOWN
            return "".join(_jinja_str(p) for p in parts)
        if isinstance(node, (nodes.Add, nodes.Mul, nodes.Mod)):
            return _binop(type(node).__name__, v(id(node.left), _UNKNOWN),
                          v(id(node.right), _UNKNOWN))
        if isinstance(node, nodes.Getitem):
            return _index(v(id(node.node), _UNKNOWN), node.arg, v)
        if isinstance(node, nodes.Filter) and node.node is not None:
            if node.kwargs or node.dyn_args or node.dyn_kwargs:
                return _UNKNOWN
            return _apply(node.name, v(id(node.node), _UNKNOWN),
                          [v(id(a), _UNKNOWN) for a in node.args])
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            if node.kwargs or node.dyn_args or node.dyn_kwargs:
                return _UNKNOWN
            receiver = v(id(node.node.node), _UNKNOWN)
            if not isinstance(receiver, str) or node.node.attr not in _STRING_METHODS:
                return _UNKNOWN
            return _apply("." + node.node.attr, receiver, [v(id(a), _UNKNOWN) for a in node.args])
        return _UNKNOWN

    def record_assign(self, target: Any, expr: Any) -> None:
        from jinja2 import nodes

        if isinstance(target, nodes.Name):
            self.symbols[target.name] = self.values.get(id(expr), _UNKNOWN)
            if id(expr) in self.computed:
                self.computed_names.add(target.name)


def _postorder(tree: Any) -> Iterator[tuple[Any, Any]]:
    """(node, parent) pairs, children before parents, in source order (no recursion)."""
    stack: list[tuple[Any, Any, bool]] = [(tree, None, False)]
    while stack:
        node, parent, expanded = stack.pop()
        if expanded:
            yield node, parent
            continue
        stack.append((node, parent, True))
        for child in reversed(list(node.iter_child_nodes())):
            stack.append((child, node, False))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str)]
    return []


def _jinja_str(v: Any) -> str:
    return "" if v is None else str(v)


def _size(v: Any) -> int | None:
    """Characters a static value holds; None for values the evaluator does not keep."""
    if v is _UNKNOWN:
        return None
    if v is None or isinstance(v, (bool, float)):
        return 0
    if isinstance(v, int):
        return 0 if abs(v) < 1 << 64 else None
    if isinstance(v, str):
        return len(v) if len(v) <= _MAX_STATIC_STR else None
    if isinstance(v, list):
        # flat, short lists of scalars only: enough for ['__', 'class', '__']|join
        if len(v) > _MAX_LIST or any(isinstance(x, list) for x in v):
            return None
        total = sum(_size(x) or 0 for x in v)
        return total if total <= _MAX_STATIC_STR else None
    return None


def _fits(n: int) -> bool:
    return 0 <= n <= _MAX_STATIC_STR


# Format fields that read attributes or items ('{0.__class__}', '{0[x]}') are never evaluated
# here (that would run attribute lookups in this process); big widths would allocate.
_FIELD_ACCESS = re.compile(r"\{[^{}]*[.\[][^{}]*\}")
_BIG_WIDTH = re.compile(r"\d{4,}|\*")


def _safe_format(fmt: Any) -> bool:
    return isinstance(fmt, str) and not _BIG_WIDTH.search(fmt) and not _FIELD_ACCESS.search(fmt)


def _binop(op: str, left: Any, right: Any) -> Any:
    if left is _UNKNOWN or right is _UNKNOWN:
        return _UNKNOWN
    if op == "Add":
        if isinstance(left, str) and isinstance(right, str) and _fits(len(left) + len(right)):
            return left + right
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            return left + right
        return _UNKNOWN
    if op == "Mul":
        seq, n = (left, right) if isinstance(left, str) else (right, left)
        if isinstance(seq, str) and isinstance(n, int) and _fits(len(seq) * max(n, 0)):
            return seq * n
        return _UNKNOWN
    # Mod: printf-style formatting, as Jinja's ``%`` operator and ``|format`` filter do
    if _safe_format(left) and not isinstance(right, dict):
        return left % (tuple(right) if isinstance(right, list) else right)
    return _UNKNOWN


def _index(container: Any, arg: Any, v: Callable[..., Any]) -> Any:
    from jinja2 import nodes

    if not isinstance(container, (str, list)):
        return _UNKNOWN
    if isinstance(arg, nodes.Slice):
        parts = (arg.start, arg.stop, arg.step)
        bounds = [None if p is None else v(id(p), _UNKNOWN) for p in parts]
        if not all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds):
            return _UNKNOWN
        return container[slice(*bounds)]
    key = v(id(arg), _UNKNOWN)
    return container[key] if isinstance(key, int) and not isinstance(key, bool) else _UNKNOWN


def _apply(name: str, value: Any, args: list[Any]) -> Any:
    """A pure string filter or method on static values, bounded; _UNKNOWN when not modelled."""
    if value is _UNKNOWN or _UNKNOWN in args:
        return _UNKNOWN
    if name in ("format", ".format"):
        if not _safe_format(value):
            return _UNKNOWN
        if name == ".format":
            return value.format(*args)
        return value % tuple(args)
    if name in ("join", ".join"):
        seq, sep = (value, args[0] if args else "") if name == "join" else (args[0], value)
        if not isinstance(seq, (list, str)) or not isinstance(sep, str):
            return _UNKNOWN
        parts = [_jinja_str(x) for x in seq]
        if not _fits(sum(map(len, parts)) + len(sep) * len(parts)):
            return _UNKNOWN
        return sep.join(parts)
    if name in ("replace", ".replace"):
        if len(args) < 2 or not isinstance(value, str):
            return _UNKNOWN
        old, new = str(args[0]), str(args[1])
        hits = len(value) + 1 if not old else value.count(old)
        if not _fits(len(value) + hits * len(new)):
            return _UNKNOWN
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        return value.replace(old, new, count)
    fn = _SIMPLE.get(name.lstrip("."))
    if fn is None:
        return _UNKNOWN
    return fn(value, *args)


def _seq(fn: Callable[[Any], Any]) -> Callable[..., Any]:
    def apply(value: Any, *args: Any) -> Any:
        return fn(value) if isinstance(value, (str, list)) and value and not args else _UNKNOWN
    return apply


def _text(fn: Callable[..., Any]) -> Callable[..., Any]:
    def apply(value: Any, *args: Any) -> Any:
        if not isinstance(value, str) or not all(isinstance(a, str) for a in args):
            return _UNKNOWN
        return fn(value, *args)
    return apply


_SIMPLE: dict[str, Callable[..., Any]] = {
    "lower": _text(str.lower),
    "upper": _text(str.upper),
    "title": _text(str.title),
    "capitalize": _text(str.capitalize),
    "swapcase": _text(str.swapcase),
    "casefold": _text(str.casefold),
    "trim": _text(str.strip),
    "strip": _text(str.strip),
    "lstrip": _text(str.lstrip),
    "rstrip": _text(str.rstrip),
    "removeprefix": _text(str.removeprefix),
    "removesuffix": _text(str.removesuffix),
    "string": lambda v, *a: _jinja_str(v) if not a and not isinstance(v, list) else _UNKNOWN,
    "reverse": _seq(lambda s: s[::-1]),
    "first": _seq(lambda s: s[0]),
    "last": _seq(lambda s: s[-1]),
    "list": _seq(list),
}
#: filters and str methods whose result is a string assembled from their input
_STRING_FILTERS = frozenset({"format", "join", "replace", *_SIMPLE})
_STRING_METHODS = frozenset({
    "format", "join", "replace", "lower", "upper", "strip", "lstrip", "rstrip", "title",
    "capitalize", "swapcase", "removeprefix", "removesuffix", "casefold",
})
