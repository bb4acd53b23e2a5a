"""``sidecar-injector tag set|remove|list``: the CLI shell over ``webhook.ops.tags``.

Its own module so that ``commands`` stays one screen per command: the parser
is added by :func:`add_parser`, the work done by :func:`run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webhook.engine.values import escape_controls

HELP = "point a movable revision name at a revision (set, remove, list), in a live cluster"


def add_parser(
    commands: Any, *, revision: Callable[[str], str], timeout: Callable[[str], float]
) -> None:
    """The ``tag`` command and its three subcommands, under ``commands``."""
    tag = commands.add_parser(
        "tag",
        help=HELP,
        description="A tag is one more sidecar.mesh.io/rev value that a revision's selectors "
        "answer to: every namespace (and pod) labelled with it is served by the revision it "
        "points at, and moving it moves them all without touching them (docs/upgrade.md).",
    )
    actions = tag.add_subparsers(dest="tag_action", required=True, parser_class=type(tag))
    set_ = actions.add_parser("set", help="point TAG at revision NAME (moving it if it is set)")
    set_.add_argument("tag", metavar="TAG")
    set_.add_argument("--revision", required=True, type=revision, metavar="NAME")
    remove = actions.add_parser("remove", help="take TAG away from the revision that has it")
    remove.add_argument("tag", metavar="TAG")
    listing = actions.add_parser("list", help="the installed revisions and their tags")
    listing.add_argument("-o", "--output", choices=["text", "json"], default="text")
    for parser in (set_, remove, listing):
        parser.add_argument(
            "--kubeconfig",
            type=Path,
            metavar="FILE",
            help="kubeconfig to use (default: in-cluster, $KUBECONFIG or ~/.kube/config)",
        )
        parser.add_argument(
            "--timeout",
            type=timeout,
            default=15.0,
            metavar="SECONDS",
            help="per request, and per paged list as a whole (default 15)",
        )


def run(args: argparse.Namespace) -> tuple[str, str | None]:
    """Do the subcommand; (what to print on stdout, an error line or None)."""
    from webhook.cluster import kube
    from webhook.cluster.reader import Cluster
    from webhook.ops.tags import TagError, list_tags, remove_tag, set_tag

    try:
        configuration = kube.load_configuration(args.kubeconfig)
    except kube.ConfigurationError as err:
        return "", str(err)
    connection = kube.Connection(configuration, connect_timeout=min(5.0, args.timeout))
    cluster = Cluster(connection, timeout=args.timeout)
    try:
        if args.tag_action == "list":
            return _listing(list_tags(cluster), args.output), None
        if args.tag_action == "set":
            change = set_tag(cluster, args.tag, args.revision)
            if change.unchanged:
                return f"tag {change.tag} already points at revision {change.revision}\n", None
            was = f" (was {', '.join(change.previous)})" if change.previous else ""
            return f"tag {change.tag} points at revision {change.revision}{was}\n", None
        change = remove_tag(cluster, args.tag)
        return f"tag {change.tag} removed from revision {', '.join(change.previous)}\n", None
    except TagError as err:
        return "", str(err)
    finally:
        connection.clear()


def _listing(installed: Any, output: str) -> str:
    tags = installed.tags()
    if output == "json":
        data = {
            "revisions": [
                {"name": r.name, "mode": r.mode, "tags": r.tags}
                for r in installed.revisions.values()
            ],
            "tags": [{"name": tag, "revisions": owners} for tag, owners in tags.items()],
            "unnamed": installed.unnamed,
        }
        return json.dumps(data, indent=2) + "\n"
    rows = [("TAG", "REVISION")] + [(tag, ", ".join(owners)) for tag, owners in tags.items()]
    width = max(len(tag) for tag, _ in rows)
    lines = [f"{tag:<{width}}  {owners}" for tag, owners in rows]
    revisions = ", ".join(f"{r.name} ({r.mode})" for r in installed.revisions.values()) or "none"
    lines.append(f"revisions: {revisions}")
    lines += [f"labelled, but not a revision name: {u}" for u in installed.unnamed]
    return "".join(escape_controls(line) + "\n" for line in lines)
