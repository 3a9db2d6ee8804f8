"""Read the CIFAR "python version" files without executing pickle code.

CIFAR-10/100 batches are pickles of a dict of lists, strings and one uint8 numpy
array. ``pickle.load`` on a downloaded file runs whatever the file says; this module
walks the opcodes with :func:`pickletools.genops` (which only parses) and interprets the
few that the format uses. The only globals accepted are the numpy array and dtype
reconstructors (and ``_codecs.encode``, which Python 3 protocol-2 pickles use for
bytes); they are never imported or called, just recognised and emulated with
``np.frombuffer``. Everything else is refused with :class:`SourceError`.
"""

from __future__ import annotations

import pickletools
import re
from typing import Any

import numpy as np

from shardprune.errors import SourceError

_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_NDARRAY = {("numpy", "ndarray")}
_DTYPE = {("numpy", "dtype")}
_CODECS = {("_codecs", "encode")}
_ALLOWED = _RECONSTRUCT | _FROMBUFFER | _NDARRAY | _DTYPE | _CODECS
#: Plain numeric dtypes only: no objects, no structured records.
_DTYPE_SPEC = re.compile(r"^[<>|=]?[biuf][1248]$")


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.key = (module, name)


class _Dtype:
    def __init__(self, spec: str) -> None:
        if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
            raise SourceError(f"pickle names dtype {spec!r}; only plain numeric dtypes are accepted")
        self.spec = spec
        self.byteorder = "|"

    def resolve(self) -> np.dtype[Any]:
        dtype = np.dtype(self.spec)
        if self.byteorder == "<":
            return dtype.newbyteorder("<")
        if self.byteorder == ">":
            return dtype.newbyteorder(">")
        return dtype


class _Array:
    def __init__(self) -> None:
        self.value: np.ndarray | None = None


class _Mark:
    pass


_MARK = _Mark()


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        # Python 2 ``str`` arrives as latin-1 text; its bytes are what numpy wrote.
        return value.encode("latin-1")
    raise SourceError(f"pickle holds {type(value).__name__} where array bytes were expected")


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _Array):
        if obj.value is None:
            raise SourceError("pickle holds an array that was never filled")
        return obj.value
    if isinstance(obj, _Dtype):
        return obj.resolve()
    if isinstance(obj, dict):
        return {_resolve(k): _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    if isinstance(obj, (_Global, _Mark)):
        raise SourceError("pickle leaves a bare global or mark in its result")
    return obj


def _reduce(func: Any, args: Any) -> Any:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise SourceError("pickle calls something other than an allowed numpy reconstructor")
    if func.key in _RECONSTRUCT:
        return _Array()
    if func.key in _DTYPE:
        return _Dtype(args[0] if args else "")
    if func.key in _CODECS:
        if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
            raise SourceError("pickle uses _codecs.encode other than for latin-1 bytes")
        return args[0].encode("latin-1")
    if func.key in _FROMBUFFER:
        buf, dtype, shape, order = args
        dt = dtype.resolve() if isinstance(dtype, _Dtype) else None
        if dt is None:
            raise SourceError("pickle builds an array without a dtype")
        return np.frombuffer(_as_bytes(buf), dtype=dt).reshape(shape, order="F" if order == "F" else "C")
    raise SourceError(f"pickle calls {'.'.join(func.key)}, which this format never uses")


def _build(obj: Any, state: Any) -> None:
    if isinstance(obj, _Dtype):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise SourceError(f"pickle gives dtype state {state!r}")
        obj.byteorder = state[1]
        return
    if isinstance(obj, _Array):
        if not isinstance(state, tuple) or len(state) != 5:
            raise SourceError("pickle gives an array state that is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype):
            raise SourceError("pickle gives an array without a numeric dtype")
        dt = dtype.resolve()
        data = _as_bytes(raw)
        shape = tuple(int(s) for s in shape)
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise SourceError(f"pickled array holds {len(data)} bytes, not enough for {dt} {shape}")
        obj.value = np.frombuffer(data, dtype=dt).reshape(shape, order="F" if fortran else "C")
        return
    raise SourceError("pickle sets state on an object this format never has")


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise SourceError("pickle is malformed: no MARK on the stack")


def safe_loads(data: bytes, where: str = "pickle") -> Any:
    """Interpret a pickle of dicts, lists, strings, numbers and numpy arrays.

    Python 2 strings come back as ``bytes`` (like ``pickle.load(encoding="bytes")``).

    Raises:
        SourceError: the pickle uses anything outside that vocabulary, or is malformed.
    """
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, opt_arg, _ in pickletools.genops(data):
            arg: Any = opt_arg
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise SourceError("pickle is malformed: STOP with a stack that is not one value")
                return _resolve(stack[0])
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_DICT",):
                stack.append({})
            elif name in ("EMPTY_LIST",):
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("DICT", "LIST", "TUPLE"):
                items = _pop_mark(stack)
                if name == "DICT":
                    stack.append(dict(zip(items[::2], items[1::2])))
                else:
                    stack.append(items if name == "LIST" else tuple(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items = stack[-k:]
                del stack[-k:]
                stack.append(tuple(items))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = _pop_mark(stack)
                stack[-1].extend(items)
            elif name == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = _pop_mark(stack)
                stack[-1].update(zip(items[::2], items[1::2]))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"):
                stack.append(arg)
            elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                stack.append(_as_bytes(arg))
            elif name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
                stack.append(bytes(arg))
            elif name in ("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
                stack.append(str(arg))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(arg)])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                else:
                    attr = stack.pop()
                    module = stack.pop()
                if (module, attr) not in _ALLOWED:
                    raise SourceError(f"pickle references {module}.{attr}; this format only uses numpy arrays")
                stack.append(_Global(module, attr))
            elif name == "REDUCE":
                args = stack.pop()
                func = stack.pop()
                stack.append(_reduce(func, args))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state)
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                _pop_mark(stack)
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                raise SourceError(f"pickle opcode {name} is not part of the CIFAR format")
    except SourceError as exc:
        raise SourceError(f"{where}: {exc}") from exc
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise SourceError(f"{where} is not a valid CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    raise SourceError(f"{where} ends without a STOP opcode; the file is truncated")
