"""The installed CuPy as the reference: which names exist, which arguments a call may
take, which dtype a ufunc or reduction returns, and where in gpucnn a call came from.

CuPy imports without a GPU, so every check here reads the real ``cupy`` module,
``cupy.ndarray`` and ``cupy.random.Generator``: their signatures from
``inspect.signature`` where CuPy exposes one, else from the first docstring line
(``maximum(x1, x2, /, out=None, *, casting='same_kind', dtype=None)``), and ufunc
and reduction result dtypes from CuPy's own type-resolution tables.

A violation is raised at the call and also appended to :data:`FINDINGS`, so a
test that swallowed the exception still fails (tests/conftest.py checks it).
"""
from __future__ import annotations

import ast
import inspect
import os
import re
import sys
from typing import NamedTuple

import cupy
import numpy as np
from cupy._core import _routines_math, _routines_statistics
from cupy._creation.basic import _new_like_order_and_strides

import gpucnn

CUPY_VERSION = cupy.__version__

# A CuPy ufunc takes its inputs (and outputs) positionally, and only these keywords.
UFUNC_KEYWORDS = frozenset({"out", "dtype", "casting"})

# Functions whose CuPy signature ends in **kwargs: the keywords CuPy actually reads
# (tests/test_standin_conformance.py checks this table against CuPy's source).
VAR_KEYWORDS = {
    "pad": frozenset({"constant_values", "end_values", "padder", "reflect_type", "stat_length"}),
}

# Reductions whose result dtype CuPy decides with a type table of its own.
REDUCTION_KERNELS = {
    "sum": _routines_math.sum_auto_dtype, "prod": _routines_math.prod_auto_dtype,
    "max": _routines_statistics.amax, "amax": _routines_statistics.amax,
    "min": _routines_statistics.amin, "amin": _routines_statistics.amin,
}
# ... and those whose result dtype is fixed (CuPy's argmax/argmin return int64 indices).
FIXED_RESULT_DTYPES = {"argmax": np.dtype(np.int64), "argmin": np.dtype(np.int64),
                       "any": np.dtype(bool), "all": np.dtype(bool)}


class Finding(NamedTuple):
    """One call that real CuPy would reject, or that behaves differently there."""

    call: str       # "cupy.block", "cupy.maximum(where=)", "cupy.ndarray.resize"
    location: str   # the calling gpucnn frame: "gpucnn/nn/layers/activations.py:17"
    message: str

    def __str__(self):
        return f"{self.location}: {self.message}"


FINDINGS: list[Finding] = []


class DeviceDisciplineError(TypeError):
    """A numpy function on a device array, host and device arrays mixed: CuPy raises
    TypeError in the same places (the stand-in is stricter: see tests/standin/__init__)."""


class CupyConformanceError(TypeError):
    """A call that CuPy's signature rejects (TypeError there too), or a result dtype
    that CuPy would compute differently."""


class CupyAttributeError(AttributeError):
    """A name that ``cupy`` or ``cupy.ndarray`` does not have (AttributeError there too)."""


class NotModeledError(NotImplementedError):
    """A CuPy feature the stand-in does not imitate: model it before gpucnn uses it."""


def violation(error_type, call: str, message: str) -> Exception:
    """Record a finding at the calling gpucnn frame; return the exception to raise."""
    location = caller_location()
    FINDINGS.append(Finding(call, location, message))
    return error_type(f"{location}: {message}")


# -- where a call came from -------------------------------------------------------------
_GPUCNN_DIR = os.path.dirname(os.path.abspath(gpucnn.__file__)) + os.sep
_REPO_DIR = os.path.dirname(_GPUCNN_DIR.rstrip(os.sep))
_STANDIN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


_BACKEND_SEAM = os.path.join(_GPUCNN_DIR, "backends", "backend.py")


def caller_location() -> str:
    """``path:line`` of the innermost gpucnn frame on the stack (the backend seam, which
    only forwards, skipped), else of the innermost frame outside the stand-in (a test
    calling xp directly)."""
    frame, fallback = sys._getframe(1), None
    while frame is not None:
        path = frame.f_code.co_filename
        if path == _BACKEND_SEAM:
            pass
        elif path.startswith(_GPUCNN_DIR):
            return f"{os.path.relpath(path, _REPO_DIR)}:{frame.f_lineno}"
        elif fallback is None and not path.startswith(_STANDIN_DIR) and os.sep + "numpy" + os.sep not in path:
            fallback = f"{os.path.relpath(path, _REPO_DIR)}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback or "<unknown>"


# -- names --------------------------------------------------------------------------------
def cupy_attribute(owner, owner_name: str, name: str):
    """``getattr(owner, name)`` for a CuPy namespace, or a recorded violation."""
    try:
        return getattr(owner, name)
    except AttributeError:
        pass
    hint = ""
    if hasattr(np, name) or hasattr(np.ndarray, name):
        hint = f"; NumPy has {name} but CuPy {CUPY_VERSION} does not, so this fails on a GPU"
    raise violation(CupyAttributeError, f"{owner_name}.{name}",
                    f"{owner_name}.{name} does not exist in CuPy {CUPY_VERSION}{hint}")


# -- signatures ---------------------------------------------------------------------------
_SIGNATURES: dict = {}


class _Unset:
    """The default of every parameter read from a docstring (only binding matters)."""

    def __repr__(self):
        return "..."


_UNSET = _Unset()


def signature_of(cupy_object) -> inspect.Signature | None:
    """CuPy's signature of a function or method (``self`` dropped); None when neither
    inspect nor the docstring's first line gives one."""
    key = id(cupy_object)
    if key not in _SIGNATURES:
        try:
            signature = inspect.signature(cupy_object)
        except (TypeError, ValueError):
            signature = signature_from_doc(cupy_object.__doc__ or "")
        if signature is not None:
            params = list(signature.parameters.values())
            if params and params[0].name == "self":
                signature = signature.replace(parameters=params[1:])
        _SIGNATURES[key] = (cupy_object, signature)  # holding the object keeps id() unique
    return _SIGNATURES[key][1]


def _split_top_level(text: str) -> list[str]:
    """Split a parameter list at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def signature_from_doc(doc: str) -> inspect.Signature | None:
    """``name(a, b=1, /, *, c=None) -> type`` (CuPy's docstring convention, Cython
    argument types such as ``_ndarray_base b`` allowed) -> an inspect.Signature."""
    line = doc.strip().split("\n", 1)[0].replace("\\*", "*")
    match = re.match(r"^[\w.]+\((.*)\)\s*(->.*)?$", line)
    if match is None:
        return None
    params = []
    for part in _split_top_level(match.group(1)):
        name_and_default = part.split("=", 1)
        words = name_and_default[0].split()
        params.append(words[-1] + ("=None" if len(name_and_default) == 2 else ""))
    try:
        args = ast.parse(f"def f({', '.join(params)}): pass").body[0].args
    except SyntaxError:
        return None
    P = inspect.Parameter
    positional = [(a.arg, P.POSITIONAL_ONLY) for a in args.posonlyargs]
    positional += [(a.arg, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    first_default = len(positional) - len(args.defaults)
    parameters = [P(name, kind, default=_UNSET if i >= first_default else P.empty)
                  for i, (name, kind) in enumerate(positional)]
    if args.vararg:
        parameters.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    parameters += [P(a.arg, P.KEYWORD_ONLY, default=P.empty if d is None else _UNSET)
                   for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        parameters.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(parameters)


def check_call(call: str, cupy_object, args: tuple, kwargs: dict) -> None:
    """Raise (and record) when CuPy would refuse these arguments for ``cupy_object``."""
    if isinstance(cupy_object, cupy.ufunc):
        wrong = sorted(set(kwargs) - UFUNC_KEYWORDS)
        if wrong:
            raise violation(CupyConformanceError, f"{call}({', '.join(k + '=' for k in wrong)})",
                            f"{call}() got {', '.join(k + '=' for k in wrong)}: CuPy ufuncs take only "
                            "out=, dtype= and casting= (no where=, order=, subok=)")
        if not cupy_object.nin <= len(args) <= cupy_object.nargs:
            raise violation(CupyConformanceError, call,
                            f"{call}() takes {cupy_object.nin} inputs (+ {cupy_object.nout} "
                            f"optional outputs), got {len(args)} positional arguments")
        return
    signature = signature_of(cupy_object)
    if signature is None:
        raise violation(NotModeledError, call,
                        f"the stand-in cannot read CuPy's signature of {call}; add it to "
                        "tests/standin/cupy_api.py before gpucnn uses it")
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise violation(CupyConformanceError, call,
                        f"{call}{_show(signature)} refuses this call: {exc}") from None
    accepted = VAR_KEYWORDS.get(call.rsplit(".", 1)[-1])
    if accepted is not None:
        named = set(signature.parameters)
        wrong = sorted(set(kwargs) - named - accepted)
        if wrong:
            raise violation(CupyConformanceError, call,
                            f"{call}() does not read {', '.join(k + '=' for k in wrong)} in CuPy "
                            f"{CUPY_VERSION} (it reads {', '.join(sorted(accepted))})")


def _show(signature: inspect.Signature) -> str:
    return str(signature)


# -- result dtypes --------------------------------------------------------------------------
def _kind_score(scalar_type) -> int:
    """CuPy's _get_kind_score: bool < integer < inexact."""
    if issubclass(scalar_type, np.bool_):
        return 0
    if issubclass(scalar_type, (np.integer, int)):
        return 1
    if issubclass(scalar_type, (np.inexact, float, complex)):
        return 2
    return 3


def operand_type(value):
    """(dtype, weak type) of one ufunc operand as CuPy sees it: arrays and NumPy scalars
    are strong; Python int/float/complex are weak (NEP 50), Python bool is strong."""
    if isinstance(value, bool):
        return np.dtype(bool), False
    if isinstance(value, (int, float, complex)):
        return np.dtype(type(value)) if not isinstance(value, int) else np.dtype(np.int64), type(value)
    return np.dtype(value.dtype), False


def cupy_ufunc_result_dtypes(cupy_ufunc, operands) -> tuple | None:
    """The output dtypes CuPy's type resolution gives ``cupy_ufunc`` for these inputs
    (``(dtype, weak)`` pairs from :func:`operand_type`); None when CuPy has no loop."""
    in_types = tuple(dtype for dtype, _ in operands)
    weaks = tuple(weak for _, weak in operands)
    if any(weaks):
        array_kind = max((_kind_score(t.type) for t, w in operands if not w), default=-1)
        scalar_kind = max((_kind_score(w) for _, w in operands if w), default=-1)
        use_weak = array_kind != -1 and scalar_kind != -1 and array_kind >= scalar_kind
        if not use_weak:
            weaks = (False,) * len(operands)
    else:
        weaks = None
    op = cupy_ufunc._ops._guess_routine_from_in_types(in_types, weaks)
    return None if op is None else tuple(np.dtype(t) for t in op.out_types)


def cupy_reduction_dtype(name: str, in_dtype) -> np.dtype | None:
    """The result dtype of CuPy's reduction ``name`` over an array of ``in_dtype``
    (None for a reduction this table does not know)."""
    in_dtype = np.dtype(in_dtype)
    if name in FIXED_RESULT_DTYPES:
        return FIXED_RESULT_DTYPES[name]
    if name == "mean":  # float stays, anything else averages in float64 (cupy._statistics)
        return in_dtype if in_dtype.kind in "fc" else np.dtype(np.float64)
    kernel = REDUCTION_KERNELS.get(name)
    if kernel is None:
        return None
    op = kernel._ops._guess_routine_from_in_types((in_dtype,))
    return None if op is None else np.dtype(op.out_types[0])


# -- layouts --------------------------------------------------------------------------------
def cupy_like_strides(prototype: np.ndarray, dtype, order: str = "K", shape=None) -> tuple:
    """The strides CuPy's ``empty_like``/``zeros_like``/``full_like`` give a new array like
    ``prototype``: CuPy's own NumPy-mimicking rule (_new_like_order_and_strides), run on
    the host with no GPU."""
    dtype = np.dtype(dtype)
    order_char, strides, _ = _new_like_order_and_strides(prototype, dtype, order, shape, get_memptr=False)
    if strides is not None:
        return tuple(strides)
    shape = tuple(prototype.shape if shape is None else np.atleast_1d(shape))
    axes = range(len(shape)) if order_char == "F" else reversed(range(len(shape)))
    strides, step = [0] * len(shape), dtype.itemsize
    for axis in axes:  # C: last axis fastest; F: first axis fastest
        strides[axis] = step
        step *= max(shape[axis], 1)
    return tuple(strides)
