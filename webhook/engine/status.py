"""The ``sidecar.mesh.io/status`` annotation: what one injection added, in compact JSON.

Written by ``inject``, read by ``decide`` (already injected?), ``uninject``
(what exactly to take out again) and ``check`` (is this sidecar outdated?)::

    {"version":"0.1.0","initContainers":["mesh-init","mesh-proxy"],"containers":[],
     "volumes":[],"annotations":["kubectl.kubernetes.io/default-container"],
     "digest":"sha256:..."}

* ``revision`` (only when not ``default``): the injector revision that
  injected the pod (docs/upgrade.md). Absent means ``default``: the
  revision-less install, and every injector before revisions existed;
* ``initContainers``, ``containers``, ``volumes``: the names added to each list.
  ``volumes`` is always empty today (the proxy's bootstrap is inline, nothing
  is mounted); it is part of the format so that a volume a later version adds
  is recorded, and so taken out by ``uninject``, from the start;
* ``annotations``: the annotations added besides this one (the default-container
  annotation only when the injector set it);
* ``digest``: ``containers_digest`` of the injected containers, equal for every
  pod injected with the same settings by the same injector build;
* ``wasNull`` / ``wasEmpty`` (only when needed): the pod members
  (``initContainers``, ``containers``, ``volumes``, ``metadata``,
  ``annotations``) that were ``null`` or empty before injection. A member the
  injector created is removed again by ``uninject`` once it is empty; these
  two say when it should become ``null`` or stay empty instead, which makes
  ``uninject(inject(x)) == x`` exact without recording anything for the
  usual pod;
* ``replaced`` (only when needed): the value this annotation had before
  injection, when the pod came with one that was not its own (metadata copied
  from an injected pod: the containers it lists are missing, so ``decide``
  injects again and the ``add`` overwrites it). ``uninject`` puts it back.

Annotations written by earlier builds lack ``annotations``, ``digest`` and the
shape lists; they read as empty (nothing but the listed containers and
volumes is removed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from webhook.contract.constants import DEFAULT_REVISION
from webhook.engine.json_text import canonical, compact, strict_loads

MEMBERS: Final = frozenset({"initContainers", "containers", "volumes", "metadata", "annotations"})
# The injector writes a few hundred bytes (more only with a ``replaced`` value,
# and never over this: ``inject`` refuses instead). A longer annotation is not
# one of ours, and is not worth parsing on every admission.
MAX_STATUS_CHARS: Final = 16 * 1024


class StatusError(ValueError):
    """The status annotation is not what the injector writes."""


def containers_digest(
    init_containers: Sequence[Mapping[str, Any]], containers: Sequence[Mapping[str, Any]]
) -> str:
    """``sha256:<hex>`` of the injected containers as canonical JSON (sorted keys, no spaces).

    Which list a container went to is part of it, so switching between native
    and classic mode changes the digest too.
    """
    text = canonical({"containers": list(containers), "initContainers": list(init_containers)})
    return "sha256:" + hashlib.sha256(text).hexdigest()


@dataclass(frozen=True, slots=True)
class InjectionStatus:
    """The decoded annotation; ``to_json`` writes it back in the injector's layout."""

    version: str
    revision: str = DEFAULT_REVISION
    init_containers: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    annotations: tuple[str, ...] = ()
    digest: str | None = None
    was_null: tuple[str, ...] = ()
    was_empty: tuple[str, ...] = ()
    replaced: str | None = None

    def to_json(self) -> str:
        """Compact JSON, keys in the documented order, the shape lists only when needed."""
        value: dict[str, Any] = {"version": self.version}
        if self.revision != DEFAULT_REVISION:
            value["revision"] = self.revision
        value |= {
            "initContainers": self.init_containers,
            "containers": self.containers,
            "volumes": self.volumes,
            "annotations": self.annotations,
        }
        if self.digest is not None:
            value["digest"] = self.digest
        if self.was_null:
            value["wasNull"] = self.was_null
        if self.was_empty:
            value["wasEmpty"] = self.was_empty
        if self.replaced is not None:
            value["replaced"] = self.replaced
        return compact(value)

    @classmethod
    def parse(cls, text: str) -> InjectionStatus:
        """Decode an annotation value; StatusError says what is wrong with it.

        The one reader of the format: ``decide`` and ``uninject`` agree on
        what counts as a status annotation because both call this.
        """
        if len(text) > MAX_STATUS_CHARS:
            raise StatusError(f"is longer than {MAX_STATUS_CHARS} characters")
        try:
            value = strict_loads(text)
        except ValueError:
            raise StatusError("is not JSON") from None
        if not isinstance(value, dict):
            raise StatusError("is not a JSON object")
        version = value.get("version")
        if not isinstance(version, str):
            raise StatusError("has no version")
        digest = value.get("digest")
        if digest is not None and not isinstance(digest, str):
            raise StatusError("has a digest that is not a string")
        replaced = value.get("replaced")
        if replaced is not None and not isinstance(replaced, str):
            raise StatusError("has a replaced value that is not a string")
        revision = value.get("revision", DEFAULT_REVISION)
        if not isinstance(revision, str) or not revision:
            raise StatusError("has a revision that is not a name")
        lists = {
            key: _names(value, key)
            for key in (
                "initContainers",
                "containers",
                "volumes",
                "annotations",
                "wasNull",
                "wasEmpty",
            )
        }
        for key in ("wasNull", "wasEmpty"):
            unknown = set(lists[key]) - MEMBERS
            if unknown:
                raise StatusError(f"names unknown members in {key}: {sorted(unknown)}")
        return cls(
            version=version,
            revision=revision,
            init_containers=lists["initContainers"],
            containers=lists["containers"],
            volumes=lists["volumes"],
            annotations=lists["annotations"],
            digest=digest,
            was_null=lists["wasNull"],
            was_empty=lists["wasEmpty"],
            replaced=replaced,
        )


def _names(value: dict[str, Any], key: str) -> tuple[str, ...]:
    items = value.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise StatusError(f"has a {key} that is not a list of names")
    # The injector never writes a name twice; uninject counts on that (a
    # duplicate would make it remove a whole map, or one key twice).
    if len(set(items)) != len(items):
        raise StatusError(f"names an item twice in {key}")
    return tuple(items)
