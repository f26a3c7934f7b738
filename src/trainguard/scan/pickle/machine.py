"""A symbolic pickle machine: reads protocols 0-5 opcode by opcode and never executes anything.

It mirrors CPython's ``pickle._Unpickler`` (Lib/pickle.py, Modules/_pickle.c) closely enough that
every global the real unpickler would resolve is seen, however its name was built (GLOBAL,
STACK_GLOBAL from any string or memo slot, INST, Python 2 names), and every place the real
unpickler would *call* something is recorded: REDUCE, OBJ, INST, NEWOBJ, NEWOBJ_EX, BUILD (which
calls ``__setstate__`` or sets attributes, also on imported modules and classes).

Values on the stack are symbolic: constants stay constants (large byte strings are kept as their
length and first bytes only), imports become :class:`Global`, call results become :class:`Call`.
Containers keep their members so that names and states can be followed through the memo.

What ran before a parse error is kept: loaders execute opcodes as they go, so a stream that breaks
after its payload (the "nullifAI" technique) has still run that payload.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Any

from trainguard.artifacts.reader import Reader
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.pickle.fold import (
    _GETATTR,
    _LOADERS,
    _RESOLVERS,
    _add_attrs,
    _computed,
    _fold_bytes,
    _fold_str,
    _legacy_module_class,
    _nested_candidate,
    _state_items,
    _state_keys,
)
from trainguard.scan.pickle.values import (
    _HEAD,
    _LINE_LIMIT,
    _NAME_LIMIT,
    _SMALL,
    NESTED_PICKLE_MAX,
    BigBytes,
    Call,
    DynamicCall,
    Global,
    GlobalUse,
    Opaque,
    PersistentRef,
    StreamResult,
    SymDict,
    SymList,
    SymSet,
    _decode_str,
    describe,
)

#: Inline data hooks: given the machine and the object BUILD was applied to, consume the raw bytes
#: a loader would read from the stream right after that BUILD (joblib arrays).
BuildHook = Callable[["PickleMachine", Call], None]


class PickleMachine:
    """Runs one pickle stream symbolically over a :class:`Reader`."""

    def __init__(
        self,
        reader: Reader,
        *,
        max_opcodes: int = 10_000_000,
        build_hooks: dict[str, BuildHook] | None = None,
        max_globals: int = 10_000,
    ) -> None:
        self.r = reader
        self.max_opcodes = max_opcodes
        self.max_globals = max_globals
        self.build_hooks = build_hooks or {}
        self.reset()
        self._dispatch = self._make_dispatch()

    def reset(self) -> None:
        """Forget the last stream and start the next one at the reader's position.

        For files of many pickles (legacy torch records, concatenated streams): rebuilding the
        opcode table costs more than running a small pickle, so callers reuse one machine.
        """
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        #: attribute values that BUILD or setattr stored on imported objects, by (module, dotted
        #: name): a later GLOBAL of that name reads the value back (modelscan issue #85)
        self._attrs: dict[tuple[str, str], Any] = {}
        # ids of the byte strings already in result.nested (the objects stay alive there)
        self._nested_ids: set[int] = set()
        self.result = StreamResult(start=self.r.tell())

    # ---------------------------------------------------------------- bookkeeping helpers
    def _use(self, g: object, use: str, offset: int, args: object = None) -> None:
        if not isinstance(g, Global):
            return
        key = (g.module, g.name)
        gu = self.result.globals.get(key)
        if gu is None:
            # five bytes of GLOBAL make a record (and later a finding): bound their number
            if len(self.result.globals) >= self.max_globals:
                raise LimitExceeded("max_pickle_globals", self.max_globals,
                                    "distinct globals imported by one pickle stream")
            gu = self.result.globals[key] = GlobalUse(g.module, g.name, offset)
        gu.uses.add(use)
        if use == "import":
            gu.count += 1
        if args is not None and len(gu.call_args) < 3:
            gu.call_args.append(describe(args))

    def _import(self, module: str, name: str, offset: int) -> object:
        """What GLOBAL/STACK_GLOBAL push: the import, or a value an earlier BUILD stored there."""
        g = Global(module, name, offset)
        self._use(g, "import", offset)
        return self._attrs.get((module, name), g)

    def _call(self, func: object, args: object, kind: str, offset: int) -> object:
        func = _legacy_module_class(func)
        if isinstance(func, Global):
            self._use(func, kind, offset, args)
            self._unwrap(func, args, offset)
            resolved = self._resolve(func, args, offset)
            if resolved is not None:
                return resolved
        else:
            self.result.dynamic_calls.append(DynamicCall(offset, describe(func), kind))
        return Call(func, args, kind, offset)

    def _resolve(self, func: Global, args: object, offset: int) -> object | None:
        """The global that a name-resolving call returns, when its arguments are constants.

        ``getattr(<global>, "attr")`` is the protocol 2-3 spelling of a dotted name, and
        ``pkgutil.resolve_name("os:system")`` / ``pydoc.locate("os.system")`` import by string
        (GHSA-vvpj-8cmc-gx39, GHSA-5hvc-6wx8-mvv4). Following them lets the policy judge the real
        target instead of an anonymous call result.
        """
        if not isinstance(args, tuple) or not args:
            return None
        name = func.qualname
        if name in _GETATTR and len(args) in (2, 3) and isinstance(args[0], Global):
            attr = _fold_str(args[1])
            if attr is not None:
                return self._import(args[0].module, f"{args[0].name}.{attr}", offset)
        elif name in _RESOLVERS:
            text = _fold_str(args[0])
            if text:
                module, sep, attr = text.partition(":") if ":" in text else text.partition(".")
                if module and sep and attr:
                    return self._import(module, attr, offset)
        return None

    def _unwrap(self, func: Global, args: object, offset: int) -> None:
        """Wrappers whose arguments name the real callee (copyreg, torch's rebuild helpers)."""
        name = func.qualname
        if not isinstance(args, tuple) or not args:
            return
        if name in ("copyreg._reconstructor", "copy_reg._reconstructor", "copyreg.__newobj__",
                    "copyreg.__newobj_ex__"):
            self._use(args[0], "construct", offset)
            # _reconstructor(cls, base, state) runs base.__new__(cls, state) and
            # base.__init__(obj, state) (Lib/copyreg.py): base is called with the state
            if name.endswith("_reconstructor") and len(args) > 1 and isinstance(args[1], Global) \
                    and args[1].qualname not in ("builtins.object", "__builtin__.object"):
                self._use(args[1], "call", offset)
        elif name in _LOADERS:
            # the bytes are unpickled or torch.load-ed by the loader: scan them as a file even
            # when they do not start like a modern pickle (protocol 0, legacy torch streams)
            data = _fold_bytes(args[0])
            if data is not None:
                if id(data) not in self._nested_ids:
                    self._nested_ids.add(id(data))
                    self.result.nested.append((offset, data))
            elif isinstance(args[0], BigBytes):
                self.result.dynamic_calls.append(DynamicCall(
                    offset, f"{name} of {args[0].length} bytes too large to inspect", "call"))
        elif name in ("torch._tensor._rebuild_from_type_v2", "torch._tensor._rebuild_from_type"):
            self._use(args[0], "call", offset)
            if len(args) > 1:
                self._use(args[1], "construct", offset)
        elif (name in ("builtins.setattr", "__builtin__.setattr") and len(args) >= 2
              and isinstance(args[0], Global) and isinstance(args[1], str)):
            # setattr(<imported>, "attr", value): an attribute set on an imported object
            self._use(args[0], "build", offset)
            gu = self.result.globals[(args[0].module, args[0].name)]
            _add_attrs(gu, [args[1]])
            if len(args) >= 3:
                self._attrs[(args[0].module, f"{args[0].name}.{args[1]}")] = args[2]

    def merge(self, sub: StreamResult) -> None:
        """Fold a stream that the loader reads from inside this one (joblib object arrays)."""
        res = self.result
        for key, gu in sub.globals.items():
            mine = res.globals.get(key)
            if mine is None:
                res.globals[key] = gu
            else:
                mine.uses |= gu.uses
                mine.count += gu.count
                _add_attrs(mine, gu.build_attrs)
        res.dynamic_calls.extend(sub.dynamic_calls)
        res.unusual.extend(sub.unusual)
        res.nested.extend(sub.nested)
        if sub.limit is not None:
            raise sub.limit
        if sub.error is not None:
            raise MalformedInput(f"inline pickle: {sub.error}", sub.error_offset)

    def _pop_mark(self) -> list[Any]:
        items = self.stack
        try:
            self.stack = self.metastack.pop()
        except IndexError:
            raise MalformedInput("MARK expected but the mark stack is empty") from None
        return items

    def _pop(self) -> Any:
        try:
            return self.stack.pop()
        except IndexError:
            raise MalformedInput("stack underflow") from None

    def _top(self) -> Any:
        try:
            return self.stack[-1]
        except IndexError:
            raise MalformedInput("stack underflow") from None

    def _const_bytes(self, n: int, offset: int) -> object:
        """Read a bytes constant of length ``n``: small ones whole, large ones skipped."""
        if n <= _SMALL:
            data = self.r.read(n)
        else:
            head = self.r.peek(_HEAD)
            if _nested_candidate(head) and n <= NESTED_PICKLE_MAX:
                data = self.r.read(n)
            else:
                self.r.skip(n)
                return BigBytes(n, head)
        if len(data) >= 4 and _nested_candidate(data):
            self._nested_ids.add(id(data))
            self.result.nested.append((offset, data))
        return data

    # ---------------------------------------------------------------- main loop
    def run(self) -> StreamResult:
        """Interpret until STOP, an error or a limit; never raises for bad input."""
        res = self.result
        r = self.r
        read = r.read
        dispatch = self._dispatch
        ops = 0
        offset = r.tell()
        try:
            while True:
                offset = r.tell()
                code = read(1)[0]
                ops += 1
                if ops > self.max_opcodes:
                    raise LimitExceeded("max_pickle_opcodes", self.max_opcodes)
                handler = dispatch.get(code)
                if handler is None:
                    raise MalformedInput(f"unknown opcode 0x{code:02x}", offset)
                if handler(offset):
                    break
        except MalformedInput as exc:
            res.error = exc.message
            res.error_offset = exc.offset if exc.offset is not None else offset
        except LimitExceeded as exc:
            res.limit = exc
            res.error_offset = offset
        except RecursionError:  # pragma: no cover - the machine is iterative; defence in depth
            res.error = "nesting too deep"
            res.error_offset = offset
        except Exception as exc:  # fail closed: a machine bug reads as a broken stream
            res.error = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
            res.error_offset = offset
        res.opcodes = ops
        res.end = r.tell()
        return res

    # ---------------------------------------------------------------- opcode handlers
    # Each returns True only for STOP. Names follow pickletools.opcodes.
    def _make_dispatch(self) -> dict[int, Callable[[int], bool | None]]:
        d: dict[int, Callable[[int], bool | None]] = {}
        r = self.r
        read = r.read
        unpack = struct.unpack
        push = self.stack.append  # rebound in handlers that replace self.stack

        def line() -> bytes:
            return r.readline(_LINE_LIMIT)[:-1]

        def name_line() -> str:
            return _decode_str(r.readline(_NAME_LIMIT)[:-1])

        def mark(_o: int) -> None:
            self.metastack.append(self.stack)
            self.stack = []

        def stop(_o: int) -> bool:
            self.result.value = self._pop()
            self.result.completed = True
            return True

        def pop(_o: int) -> None:
            if self.stack:
                self.stack.pop()
            else:
                self._pop_mark()

        def pop_mark(_o: int) -> None:
            self._pop_mark()

        def dup(_o: int) -> None:
            self.stack.append(self._top())

        def float_(_o: int) -> None:
            text = line()
            try:
                self.stack.append(float(text))
            except ValueError:
                raise MalformedInput("bad FLOAT literal", _o) from None

        def binfloat(_o: int) -> None:
            self.stack.append(unpack(">d", read(8))[0])

        def int_(_o: int) -> None:
            text = line()
            if text == b"00":
                self.stack.append(False)
            elif text == b"01":
                self.stack.append(True)
            else:
                try:
                    self.stack.append(int(text[:4300]) if len(text) <= 4300 else 0)
                except ValueError:
                    raise MalformedInput("bad INT literal", _o) from None

        def long_(_o: int) -> None:
            text = line()
            if text.endswith(b"L"):
                text = text[:-1]
            try:
                self.stack.append(int(text) if len(text) <= 4300 else 0)
            except ValueError:
                raise MalformedInput("bad LONG literal", _o) from None

        def binint(_o: int) -> None:
            self.stack.append(unpack("<i", read(4))[0])

        def binint1(_o: int) -> None:
            self.stack.append(read(1)[0])

        def binint2(_o: int) -> None:
            self.stack.append(unpack("<H", read(2))[0])

        def long1(_o: int) -> None:
            n = read(1)[0]
            self.stack.append(int.from_bytes(read(n), "little", signed=True))

        def long4(_o: int) -> None:
            n = unpack("<i", read(4))[0]
            if n < 0:
                raise MalformedInput("LONG4 negative length", _o)
            data = self._const_bytes(n, _o)
            self.stack.append(int.from_bytes(data, "little", signed=True)
                              if isinstance(data, bytes) and n <= 4096 else 0)

        def string(_o: int) -> None:
            data = line()
            if len(data) >= 2 and data[0] == data[-1] and data[:1] in (b'"', b"'"):
                data = data[1:-1]
            else:
                raise MalformedInput("STRING argument must be quoted", _o)
            try:
                self.stack.append(_decode_str(codecs.escape_decode(data)[0]))
            except (ValueError, MalformedInput):
                self.stack.append(data)

        def binstring(_o: int) -> None:
            n = unpack("<i", read(4))[0]
            if n < 0:
                raise MalformedInput("BINSTRING negative length", _o)
            self._push_text_or_bytes(n, _o)

        def short_binstring(_o: int) -> None:
            self._push_text_or_bytes(read(1)[0], _o)

        def unicode_(_o: int) -> None:
            try:
                self.stack.append(line().decode("raw-unicode-escape"))
            except UnicodeDecodeError:
                raise MalformedInput("bad UNICODE literal", _o) from None

        def binunicode(_o: int) -> None:
            self._push_unicode(unpack("<I", read(4))[0], _o)

        def short_binunicode(_o: int) -> None:
            self._push_unicode(read(1)[0], _o)

        def binunicode8(_o: int) -> None:
            self._push_unicode(unpack("<Q", read(8))[0], _o)

        def binbytes(_o: int) -> None:
            self.stack.append(self._const_bytes(unpack("<I", read(4))[0], _o))

        def short_binbytes(_o: int) -> None:
            self.stack.append(self._const_bytes(read(1)[0], _o))

        def binbytes8(_o: int) -> None:
            self.stack.append(self._const_bytes(unpack("<Q", read(8))[0], _o))

        def next_buffer(_o: int) -> None:
            self.stack.append(Opaque("out-of-band buffer"))

        def readonly_buffer(_o: int) -> None:
            self._top()

        def none(_o: int) -> None:
            self.stack.append(None)

        def newtrue(_o: int) -> None:
            self.stack.append(True)

        def newfalse(_o: int) -> None:
            self.stack.append(False)

        def append(_o: int) -> None:
            value = self._pop()
            target = self._top()
            if isinstance(target, list):
                target.append(value)
            else:
                self._container_call(target, "append", _o)

        def appends(_o: int) -> None:
            items = self._pop_mark()
            target = self._top()
            if isinstance(target, list):
                target.extend(items)
            else:
                self._container_call(target, "extend", _o)

        def list_(_o: int) -> None:
            items = self._pop_mark()
            self.stack.append(SymList(items))

        def empty_list(_o: int) -> None:
            self.stack.append(SymList())

        def tuple_(_o: int) -> None:
            items = self._pop_mark()
            self.stack.append(tuple(items))

        def empty_tuple(_o: int) -> None:
            self.stack.append(())

        def tuple1(_o: int) -> None:
            self.stack.append((self._pop(),))

        def tuple2(_o: int) -> None:
            b = self._pop()
            a = self._pop()
            self.stack.append((a, b))

        def tuple3(_o: int) -> None:
            c = self._pop()
            b = self._pop()
            a = self._pop()
            self.stack.append((a, b, c))

        def dict_(_o: int) -> None:
            items = self._pop_mark()
            dct = SymDict()
            dct.pairs = list(zip(items[0::2], items[1::2], strict=False))
            self.stack.append(dct)

        def empty_dict(_o: int) -> None:
            self.stack.append(SymDict())

        def setitem(_o: int) -> None:
            value = self._pop()
            key = self._pop()
            target = self._top()
            if isinstance(target, SymDict):
                target.pairs.append((key, value))
            else:
                self._container_call(target, "__setitem__", _o)

        def setitems(_o: int) -> None:
            items = self._pop_mark()
            target = self._top()
            if isinstance(target, SymDict):
                target.pairs.extend(zip(items[0::2], items[1::2], strict=False))
            else:
                self._container_call(target, "__setitem__", _o)

        def empty_set(_o: int) -> None:
            self.stack.append(SymSet())

        def additems(_o: int) -> None:
            items = self._pop_mark()
            target = self._top()
            if isinstance(target, SymSet):
                target.extend(items)
            else:
                self._container_call(target, "add", _o)

        def frozenset_(_o: int) -> None:
            items = self._pop_mark()  # first: it replaces self.stack
            self.stack.append(SymSet(items))

        def get(_o: int) -> None:
            try:
                idx = int(line())
            except ValueError:
                raise MalformedInput("bad GET index", _o) from None
            self._get(idx, _o)

        def binget(_o: int) -> None:
            self._get(read(1)[0], _o)

        def long_binget(_o: int) -> None:
            self._get(unpack("<I", read(4))[0], _o)

        def put(_o: int) -> None:
            try:
                idx = int(line())
            except ValueError:
                raise MalformedInput("bad PUT index", _o) from None
            if idx < 0:
                raise MalformedInput("negative PUT index", _o)
            self.memo[idx] = self._top()

        def binput(_o: int) -> None:
            self.memo[read(1)[0]] = self._top()

        def long_binput(_o: int) -> None:
            self.memo[unpack("<I", read(4))[0]] = self._top()

        def memoize(_o: int) -> None:
            self.memo[len(self.memo)] = self._top()

        def ext(n: int) -> Callable[[int], None]:
            fmt = {1: "<B", 2: "<H", 4: "<i"}[n]

            def handler(_o: int) -> None:
                code = unpack(fmt, read(n))[0]
                self.result.unusual.append((_o, f"EXT{n}"))
                # The extension registry maps codes to (module, name) at load time; unknowable here.
                g = Global("copyreg._extension_registry", f"code_{code}", _o)
                self._use(g, "import", _o)
                self.stack.append(g)

            return handler

        def global_(_o: int) -> None:
            module = name_line()
            name = name_line()
            self.stack.append(self._import(module, name, _o))

        def stack_global(_o: int) -> None:
            name = self._pop()
            module = self._pop()
            m, n = _fold_str(module), _fold_str(name)
            if m is not None and n is not None:
                # literal strings, or strings computed by calls with constant arguments
                self.stack.append(self._import(m, n, _o))
                return
            if _computed(module) or _computed(name):
                # The name is computed at load time (a call result, an attribute read back):
                # whatever it resolves to is imported. Record it and go on, never give up.
                what = f"global named at load time by {describe(module)} and {describe(name)}"
                self.result.dynamic_calls.append(DynamicCall(_o, what, "import"))
                self.stack.append(Call(Opaque(what), (module, name), "import", _o))
                return
            # constants of the wrong type: the loader fails here too (_pickle.c load_stack_global)
            raise MalformedInput(
                f"STACK_GLOBAL needs two strings, got {describe(module)} and {describe(name)}", _o
            )

        def reduce(_o: int) -> None:
            args = self._pop()
            func = self._pop()
            self.stack.append(self._call(func, args, "call", _o))

        def build(_o: int) -> None:
            state = self._pop()
            inst = self._top()
            if isinstance(inst, Global):
                # BUILD on an imported module/class/function: sets its attributes in the loader.
                self._use(inst, "build", _o)
                gu = self.result.globals[(inst.module, inst.name)]
                _add_attrs(gu, _state_keys(state))
                for key, value in _state_items(state):
                    self._attrs[(inst.module, f"{inst.name}.{key}")] = value
            elif isinstance(inst, Call):
                inst.state = state
                hook_name = inst.func.qualname if isinstance(inst.func, Global) else None
                hook = self.build_hooks.get(hook_name) if hook_name else None
                if hook is not None:
                    hook(self, inst)
            elif not isinstance(inst, (SymDict, SymList, SymSet, tuple)):
                # BUILD on a constant or persistent object: __setstate__ of an unknown type.
                self.result.dynamic_calls.append(DynamicCall(_o, f"{describe(inst)}.__setstate__",
                                                             "build"))

        def inst_(_o: int) -> None:
            module = name_line()
            name = name_line()
            args = self._pop_mark()
            g = Global(module, name, _o)
            self._use(g, "import", _o)
            self.stack.append(self._call(g, tuple(args), "call", _o))

        def obj(_o: int) -> None:
            items = self._pop_mark()
            if not items:
                raise MalformedInput("OBJ without a class", _o)
            self.stack.append(self._call(items[0], tuple(items[1:]), "call", _o))

        def newobj(_o: int) -> None:
            args = self._pop()
            cls = self._pop()
            self.stack.append(self._call(cls, args, "construct", _o))

        def newobj_ex(_o: int) -> None:
            kwargs = self._pop()
            args = self._pop()
            cls = self._pop()
            self.stack.append(self._call(cls, (args, kwargs), "construct", _o))

        def proto(_o: int) -> None:
            p = read(1)[0]
            if p > 5:
                raise MalformedInput(f"unsupported pickle protocol {p}", _o)
            self.result.protocol = p

        def frame(_o: int) -> None:
            (n,) = unpack("<Q", read(8))
            # _pickle.c load_frame reads the whole frame before running any of it: a frame
            # longer than what is left fails the load right here (streams of unknown size
            # cannot be checked without buffering the frame).
            left = r.remaining()
            if left is not None and n > left:
                raise MalformedInput(f"FRAME declares {n} bytes, {left} left", _o)

        def persid(_o: int) -> None:
            self.result.unusual.append((_o, "PERSID"))
            self.stack.append(PersistentRef(_decode_str(line())))

        def binpersid(_o: int) -> None:
            self.stack.append(PersistentRef(self._pop()))

        table: dict[bytes, Callable[[int], bool | None]] = {
            b"(": mark, b".": stop, b"G": binfloat, b"0": pop, b"1": pop_mark, b"2": dup,
            b"F": float_,
            b"I": int_, b"J": binint, b"K": binint1, b"M": binint2, b"L": long_,
            b"\x8a": long1, b"\x8b": long4, b"S": string, b"T": binstring, b"U": short_binstring,
            b"V": unicode_, b"X": binunicode, b"\x8c": short_binunicode, b"\x8d": binunicode8,
            b"B": binbytes, b"C": short_binbytes, b"\x8e": binbytes8, b"\x96": binbytes8,
            b"\x97": next_buffer, b"\x98": readonly_buffer, b"N": none, b"\x88": newtrue,
            b"\x89": newfalse, b"a": append, b"e": appends, b"l": list_, b"]": empty_list,
            b"t": tuple_, b")": empty_tuple, b"\x85": tuple1, b"\x86": tuple2, b"\x87": tuple3,
            b"d": dict_, b"}": empty_dict, b"s": setitem, b"u": setitems, b"\x8f": empty_set,
            b"\x90": additems, b"\x91": frozenset_, b"g": get, b"h": binget, b"j": long_binget,
            b"p": put, b"q": binput, b"r": long_binput, b"\x94": memoize, b"\x82": ext(1),
            b"\x83": ext(2), b"\x84": ext(4), b"c": global_, b"\x93": stack_global, b"R": reduce,
            b"b": build, b"i": inst_, b"o": obj, b"\x81": newobj, b"\x92": newobj_ex,
            b"\x80": proto, b"\x95": frame, b"P": persid, b"Q": binpersid,
        }
        del push
        for k, v in table.items():
            d[k[0]] = v
        return d

    def _push_text_or_bytes(self, n: int, offset: int) -> None:
        """Python 2 ``str``: bytes the loader decodes with the ``encoding`` argument."""
        data = self._const_bytes(n, offset)
        if isinstance(data, bytes):
            try:
                self.stack.append(data.decode("ascii"))
                return
            except UnicodeDecodeError:
                pass
        self.stack.append(data)

    def _push_unicode(self, n: int, offset: int) -> None:
        if n > _SMALL:
            self.r.skip(n)
            self.stack.append(Opaque(f"{n}-byte string"))
            return
        try:
            self.stack.append(_decode_str(self.r.read(n)))
        except UnicodeDecodeError:
            raise MalformedInput("invalid UTF-8 in string", offset) from None

    def _get(self, idx: int, offset: int) -> None:
        try:
            self.stack.append(self.memo[idx])
        except KeyError:
            raise MalformedInput(f"memo key {idx} read before it was written", offset) from None

    def _container_call(self, target: object, method: str, offset: int) -> None:
        """APPEND/SETITEM/ADDITEMS on a non-container call the target's own method."""
        if isinstance(target, Call) and isinstance(target.func, Global):
            # e.g. collections.OrderedDict().__setitem__: a method of what the global built
            return
        self.result.dynamic_calls.append(
            DynamicCall(offset, f"{describe(target)}.{method}", "call"))


