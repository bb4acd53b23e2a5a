"""Read-only dicts and lists for what the engine builds once and hands to every pod.

The containers for one combination of settings are built once and shared by
every admission with those settings (``inject.CACHE``). Shared and mutable
would let one consumer that edits a result poison every later pod; copying
them per admission would cost more than the rest of the admission
(docs/engine.md, "Caches", has the figures). These subclasses cost nothing
per admission (freezing is once per cache entry): they are still ``dict``
and ``list`` to ``isinstance``, JSON encoders (the standard library's and
orjson both write subclasses as they write dicts and lists) and ``==``, but
refuse to change, and ``copy.deepcopy`` (which ``jsonpatch`` applies to every
value it inserts, in ``webhook.manifests.patched``) turns them back into
plain, private, mutable ones.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn

_MESSAGE = (
    "the injected containers are shared by every pod with the same settings and are "
    "read-only; copy.deepcopy() them (or apply the patch: webhook.manifests.patched) "
    "to change them"
)


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError(_MESSAGE)


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses every change; ``deepcopy`` gives a plain one."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    """A ``list`` that refuses every change; ``deepcopy`` gives a plain one."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(value, memo) for value in self]

    def __copy__(self) -> list[Any]:
        return list(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """A read-only deep copy of JSON-like data (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return FrozenList(freeze(item) for item in value)
    return value
