"""Plant a line into a gpucnn function, for tests that prove a violation is caught.

The edited function is compiled under its own file name and line numbers, so the
stand-in reports the planted call at the gpucnn line where it would stand.
"""
from __future__ import annotations

import inspect
import textwrap


def plant(monkeypatch, owner, name: str, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` in the source of ``owner.name`` (a function of a module
    or a method of a class), install the result with ``monkeypatch``; returns the
    ``path:line`` of the last line of ``new``, as the stand-in names it
    (``gpucnn/training/loops.py:135``)."""
    function = getattr(owner, name)
    lines, first_line = inspect.getsourcelines(function)
    source = textwrap.dedent("".join(lines))
    if source.count(old) != 1:
        raise ValueError(f"{old!r} occurs {source.count(old)} times in {name}, expected once")
    planted = source.replace(old, new)
    path = inspect.getsourcefile(function)
    code = compile("\n" * (first_line - 1) + planted, path, "exec")
    namespace: dict = {}
    exec(code, function.__globals__, namespace)  # noqa: S102 (test-only)
    monkeypatch.setattr(owner, name, namespace[name])
    line = first_line + planted[:planted.index(new) + len(new.rstrip())].count("\n")  # new's last line
    return f"gpucnn/{path.split('/gpucnn/', 1)[1]}:{line}"
