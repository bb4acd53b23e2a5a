"""The ASGI callables' types, as the ASGI specification defines them.

Written out here (they are Starlette's ``starlette.types`` too) so that the
modules that speak bare ASGI -- ``/mutate``, the body reader, the answers --
need no web framework: only ``webhook.service.app`` imports one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
