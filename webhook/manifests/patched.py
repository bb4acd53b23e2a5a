"""The object an injection (or uninjection) makes: its patch applied to its source.

Outside the engine because applying a patch takes ``jsonpatch``, and only the
layers that show or inspect the object need it (previews, the CLI, ``check``);
``/mutate`` sends the patch and never builds the object.

The object is the caller's own: the engine's containers in the patch are
shared by every pod with the same settings and read-only (``webhook.engine.frozen``),
and ``jsonpatch`` (1.48 and later; pyproject says why) deep-copies the source
and every value it adds, so what comes back is plain, mutable and private.
"""

from __future__ import annotations

from typing import Any, Protocol

import jsonpatch

from webhook.engine import Op


class Patched(Protocol):
    """What applying needs of a result: ``InjectionResult`` and ``UninjectionResult`` both."""

    @property
    def source(self) -> dict[str, Any]: ...
    @property
    def patch(self) -> tuple[Op, ...]: ...


def patched(result: Patched) -> dict[str, Any]:
    """``result.patch`` applied to a deep copy of ``result.source``; the source itself if empty.

    A new object on every call: read it once and keep it.
    """
    if not result.patch:
        return result.source
    applied: dict[str, Any] = jsonpatch.apply_patch(result.source, list(result.patch))
    return applied
