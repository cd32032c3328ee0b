"""Patch triton.language for the interpreter once per kernel launch, not once per call.

Under TRITON_INTERPRET=1 a kernel launch replaces the builtins of ``triton.language`` (and
``tl.core``, ``tl.math``, ``tl.tensor``) with interpreter versions and restores them when
the grid is done. Triton (3.6-3.9) also does that replacing again on every call of a
``@triton.jit`` device function inside the kernel, although the launch has already done it:
each call walks the modules with ``inspect.getmembers``. The top-k kernel's sorting network
calls small device functions tens of thousands of times per launch, so about half of its
interpreted time went there.

``install()`` wraps the interpreter's ``_patch_lang``: a call whose modules are already
patched by the running launch changes nothing; any other call patches as before; the
launch's restore (the only scope the interpreter restores) also forgets what was patched.
What a kernel computes is untouched: every builtin it calls is the interpreter's, exactly as
before. Where the interpreter has no ``_patch_lang`` (another Triton), nothing is installed
and the interpreter keeps its own behaviour.
"""

from __future__ import annotations

import inspect


class _Unchanged:
    """The scope of a call that had nothing left to patch."""

    def restore(self) -> None:
        pass


class _LaunchScope:
    """A real patch scope; restoring it also forgets which modules are patched."""

    def __init__(self, scope, patched: set[int]) -> None:
        self._scope, self._patched = scope, patched

    def restore(self) -> None:
        self._patched.clear()
        self._scope.restore()

    def __getattr__(self, name):
        return getattr(self._scope, name)


def install() -> bool:
    """Wrap the interpreter's ``_patch_lang``; True if it was wrapped (or already was),
    False without triton or without that function."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # triton is optional (the triton extra): its tests skip
        return False

    real = getattr(interpreter, "_patch_lang", None)
    if real is None:
        return False
    if getattr(real, "_l2rec_once_per_launch", False):
        return True
    tl = interpreter.tl
    patched: set[int] = set()  # ids of the language modules the running launch has patched
    langs_of: dict = {}  # function -> ids of the language modules in its globals

    def patch_lang(fn):
        langs = langs_of.get(fn)
        if langs is None:
            langs = langs_of[fn] = frozenset(id(v) for v in fn.__globals__.values()
                                             if inspect.ismodule(v) and (v is tl or v is tl.core))
        if langs and langs <= patched:
            return _Unchanged()
        scope = real(fn)
        patched.update(langs)
        return _LaunchScope(scope, patched)

    patch_lang._l2rec_once_per_launch = True
    interpreter._patch_lang = patch_lang
    return True
