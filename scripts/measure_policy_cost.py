"""What one admission costs in CEL, in policy mode: each expression's runtime cost.

Run: ``.venv/bin/python scripts/measure_policy_cost.py [--all]``

Builds (or takes from the cache) ``celcost`` (tests/e2e/celcost/, needs Go
once), which evaluates CEL in the API server's own environment and counts the
cost as the API server does. For three cases (the default settings; the worst
accepted settings on the pod; every setting locked, the worst values in the
namespace's annotations and again on the pod), it evaluates the
MutatingAdmissionPolicy's variables and its mutation, and prints the largest
costs, the largest single expression (the API server's limit per expression
is 1,000,000) and what one admission costs (its budget per policy evaluation
is 10,000,000), with the API server's own admission CEL code: variables typed
and evaluated lazily, each charged once when first reached. docs/policy.md,
"Within CEL's limits", has the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.worst_settings import (  # noqa: E402
    LOCKED_EVERYTHING,
    worst_pod,
    worst_settings,
)
from webhook.contract import constants  # noqa: E402
from webhook.engine.config import InjectorConfig  # noqa: E402
from webhook.policy.render import render_policy  # noqa: E402

PER_EXPRESSION: int = 1_000_000
PER_EVALUATION: int = 10_000_000


def celcost() -> Path:
    done = subprocess.run(
        ["bash", str(ROOT / "tests/e2e/build_go_tool.sh"), "celcost", "celcost"],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"building celcost failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def costs(
    binary: Path, config: InjectorConfig, pod: dict[str, Any], namespace: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Per policy, each expression's cost as one admission pays it (variables lazily)."""
    objects = render_policy(config)
    (mutating,) = [o["spec"] for o in objects if o["kind"] == "MutatingAdmissionPolicy"]
    (validating,) = [o["spec"] for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    finals = {
        "mutating": [
            {"name": "mutation", "expression": mutating["mutations"][0]["jsonPatch"]["expression"]}
        ],
        "validating": [
            {"name": "validation", "expression": validating["validations"][0]["expression"]},
            {"name": "message", "expression": validating["validations"][0]["messageExpression"]},
        ],
    }
    out = {}
    for kind, spec in (("mutating", mutating), ("validating", validating)):
        document = {
            "variables": spec["variables"],
            "expressions": finals[kind],
            "object": pod,
            "namespaceObject": namespace,
        }
        done = subprocess.run(
            [str(binary)], input=json.dumps(document), capture_output=True, text=True, check=True
        )
        out[kind] = [json.loads(line) for line in done.stdout.splitlines()]
    return out


def namespace(labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "demo", "labels": labels, "annotations": annotations}}


def cases() -> list[tuple[str, InjectorConfig, dict[str, Any], dict[str, Any]]]:
    enabled = {constants.NAMESPACE_INJECTION_LABEL: constants.ENABLED}
    plain = worst_pod({})
    plain["metadata"]["annotations"] = {}
    worst = worst_settings()
    return [
        ("default settings", InjectorConfig(), plain, namespace(enabled, {})),
        ("worst settings on the pod", InjectorConfig(), worst_pod(worst), namespace(enabled, {})),
        (
            "every setting locked, worst in the namespace and on the pod",
            LOCKED_EVERYTHING,
            worst_pod(worst),
            namespace(enabled, worst),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="print every expression's cost")
    args = parser.parse_args()
    binary = celcost()
    failed = False
    for title, config, pod, ns in cases():
        for kind, results in costs(binary, config, pod, ns).items():
            errors = [r for r in results if r.get("error")]
            total = results[-1]["cost"]
            parts = results[:-1]
            largest = max(parts, key=lambda r: r["cost"])
            print(f"== {title}: {kind} policy")
            print(
                f"   one admission {total:,} (budget {PER_EVALUATION:,}); largest expression "
                f"{largest['name']} {largest['cost']:,} (limit {PER_EXPRESSION:,})"
            )
            shown = parts if args.all else sorted(parts, key=lambda r: -r["cost"])[:10]
            for r in shown:
                print(f"   {r['name']:36} {r['cost']:>10,}")
            for r in errors:
                # A variable only reached on another path (the xDS host of an unset
                # address) may fail when read on its own; the admission is "total".
                print(f"   error {r['name']}: {r['error'][:300]}")
            failed |= bool(results[-1].get("error"))
            failed |= total > PER_EVALUATION or largest["cost"] > PER_EXPRESSION
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
