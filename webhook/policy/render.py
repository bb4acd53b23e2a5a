"""The policy-mode objects: MutatingAdmissionPolicy + binding, ValidatingAdmissionPolicy + binding.

Generated from the injector config and the engine's definitions:

* the containers are the engine's templates (``mesh_init_template``,
  ``mesh_proxy_template``) compiled to CEL (``webhook.policy.cel``): what the
  config fixes is a literal, what a pod's settings change is computed;
* settings resolution comes from the engine's tables (``webhook.policy.settings``);
* the status annotation is the engine's ``InjectionStatus.to_json`` for each
  layout, with the ``replaced`` value escaped as the engine's JSON writer escapes it;
* the JSON Patch follows ``patch.build_patch``: whole lists and maps where the
  pod has none, otherwise items inserted in front or appended;
* the decision is the contract's ladder (``decision.decide``), written in CEL
  here and held to the engine by the equivalence tests on a real API server.

Both policies compute the same variables; the mutating one injects only when
the validating one will not refuse, so that a pod the policy refuses is never
first refused by PodSecurity for capabilities it only asked for through us.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import Any, Final

from webhook import __version__
from webhook.contract import constants
from webhook.engine.config import InjectorConfig
from webhook.engine.decision import POD_SECURITY_ENFORCE, POD_SECURITY_ENFORCE_VERSION
from webhook.engine.expr import render
from webhook.engine.iptables import mesh_init_template
from webhook.engine.json_text import compact
from webhook.engine.patch import escape
from webhook.engine.proxy import mesh_proxy_template
from webhook.engine.refusals import LISTS
from webhook.engine.settings import SETTING_KEYS, SETTING_SPECS, resolve_settings, settings_env
from webhook.engine.status import MAX_STATUS_CHARS, InjectionStatus
from webhook.engine.values import REVISION_NAME_RULE, is_revision_name
from webhook.manifests.config_file import dump_config
from webhook.policy.bindings import render_bindings
from webhook.policy.cel import Compiler, Unsupported, literal, plain, string
from webhook.policy.settings import resolution
from webhook.policy.text import shorten

API_VERSION: Final = "admissionregistration.k8s.io/v1"
NAME: Final = "sidecar-injector"
DEFAULT_REVISION: Final = "default"
# On every object: which revision these policies are (the contract's revisions).
REVISION_LABEL: Final = constants.PREFIX + "rev"
# On both policies: a digest of their variables, which the status annotation of
# every pod they inject records too (``check`` finds outdated pods by it).
DIGEST_ANNOTATION: Final = constants.PREFIX + "policy-digest"
# On both policies: the config they were rendered from, in the config file's
# format, so that ``check`` can render them again and compare.
CONFIG_ANNOTATION: Final = constants.PREFIX + "policy-config"
V: Final = "variables."
_DIGEST_PLACEHOLDER: Final = "sha256:POLICY-DIGEST"
_POD_RULES: Final = {
    "resourceRules": [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
        }
    ]
}


def _get(mapping: str, key: str) -> str:
    return f"{V}{mapping}[?{string(key)}].orValue('')"


def _base_variables(config: InjectorConfig) -> list[tuple[str, str]]:
    """The pod's and namespace's maps, and the decision ladder (``decision.decide``)."""
    inject = constants.INJECT_KEY
    names = literal(sorted(constants.INJECTED_NAMES))
    label = _get("nsLabels", constants.NAMESPACE_INJECTION_LABEL)
    rev = string(constants.REVISION_LABEL)
    return [
        ("podAnnotations", "object.metadata.?annotations.orValue({})"),
        ("podLabels", "object.metadata.?labels.orValue({})"),
        ("nsLabels", "namespaceObject.metadata.?labels.orValue({})"),
        ("nsAnnotations", "namespaceObject.metadata.?annotations.orValue({})"),
        (
            "containerNames",
            "object.spec.?initContainers.orValue([]).map(c, c.name)"
            " + object.spec.?containers.orValue([]).map(c, c.name)",
        ),
        (
            "podChoice",
            f"{_get('podLabels', inject)} in ['true', 'false'] ? {_get('podLabels', inject)} "
            f": {_get('podAnnotations', inject)}",
        ),
        (
            "decision",
            "object.spec.?hostNetwork.orValue(false) ? 'host-network' : "
            "object.spec.?os.?name.orValue('') == 'windows' ? 'windows-pod' : "
            f"{string(constants.MIRROR_POD_ANNOTATION)} in {V}podAnnotations ? 'mirror-pod' : "
            f"namespaceObject.metadata.name in {literal(list(config.excluded_namespaces))} "
            "? 'excluded-namespace' : "
            f"{string(constants.STATUS_ANNOTATION)} in {V}podAnnotations && "
            f"{names}.all(n, n in {V}containerNames) ? 'already-injected' : "
            f"{label} == {string(constants.DISABLED)} ? 'namespace-disabled' : "
            f"{V}podChoice == 'false' ? 'pod-opted-out' : "
            f"{V}podChoice == 'true' ? 'pod-opted-in' : "
            # Step 8: a rev label (the pod's, else the namespace's) opts in; the
            # bindings' selectors already sent the pod to the revision it picks.
            f"{rev} in {V}podLabels ? 'pod-revision' : "
            f"{rev} in {V}nsLabels ? 'namespace-revision' : "
            f"{label} == {string(constants.ENABLED)} ? 'namespace-enabled' : 'not-enabled'",
        ),
        (
            "injecting",
            f"{V}decision in "
            "['pod-opted-in', 'pod-revision', 'namespace-revision', 'namespace-enabled']",
        ),
    ]


def _pod_security() -> str:
    """CEL for ``decision.pod_security_refusal``: '' or the refusal."""
    level = _get("nsLabels", POD_SECURITY_ENFORCE)
    version = f"{V}nsLabels[?{string(POD_SECURITY_ENFORCE_VERSION)}]"
    enforced = (
        f"({level} in ['baseline', 'restricted'] ? \"Pod Security level '\" + {level} + \"'\" : "
        f"\"Pod Security level 'restricted' (its label value \" + {shorten(level, limit=63)} "
        "+ ' is not a level)')"
        f" + ({version}.hasValue() ? ' (version ' + {shorten(version + '.value()', limit=63)} "
        "+ ')' : '')"
    )
    return (
        f"{level} == '' || {level} == 'privileged' ? '' : "
        f"'namespace ' + namespaceObject.metadata.name + ' enforces ' + {enforced} + "
        "', which forbids the NET_ADMIN and NET_RAW capabilities mesh-init needs to redirect "
        f"the pod\\'s traffic; label the namespace {POD_SECURITY_ENFORCE}=privileged to mesh "
        f"it, or opt the pod out with {constants.INJECT_KEY}=false'"
    )


def _malformed() -> str:
    """CEL for ``workloads.check_injectable``: '' or the refusal.

    Only what can reach admission: the API server has decoded the pod into its
    typed form, so lists are lists and names strings (an absent name is ``''``).
    """
    parts = [
        f"object.spec.?{field}.orValue([]).transformList(i, c, c.name == '', "
        f"'spec.{field}[' + string(i) + '] has no name')"
        for field in ("containers", "initContainers", "volumes")
    ]
    return (
        "size(object.spec.?containers.orValue([])) == 0 ? "
        "'spec.containers is missing or empty' : "
        "(" + " + ".join(parts) + ").first().orValue('')"
    )


def _each_container(condition: str, message: str) -> str:
    """CEL: ``message`` for the first container (``containers``, then ``initContainers``)
    where ``condition`` holds (both over ``c``, its index ``i`` and ``{field}``), or ''."""
    parts = [
        f"object.spec.?{field}.orValue([]).transformList(i, c, "
        f"{condition.format(field=field)}, {message.format(field=field)})"
        for field in LISTS
    ]
    return "(" + " + ".join(parts) + ").first().orValue('')"


def _container_refusals(config: InjectorConfig) -> str:
    """CEL for ``refusals.container_refusal``: reserved names, then ports, then the UID."""
    names = literal(sorted(constants.INJECTED_NAMES))
    which = (
        "'spec.{field}[' + string(i) + '] (' + "
        + shorten("c.name", limit=63, ascii_only=False)
        + " + ')'"
    )
    opt_out = f"or opt the pod out with {constants.INJECT_KEY}=false"
    reserved_name = _each_container(
        f"c.name in {names}",
        "'spec.{field}[' + string(i) + \"] is named '\" + c.name + \"', which the injector "
        f"reserves; rename it, or add the {constants.STATUS_ANNOTATION} annotation if it was "
        'injected already"',
    )
    ports = literal(sorted(constants.PROXY_PORTS))
    clash = (
        f"c.?ports.orValue([]).filter(p, p.containerPort in {ports} "
        "&& p.?protocol.orValue('TCP') == 'TCP')"
    )
    listening = ", ".join(str(port) for port in sorted(constants.PROXY_PORTS))
    reserved_port = _each_container(
        f"size({clash}) > 0",
        f"{which} + ' declares containerPort ' + string({clash}[0].containerPort) + ', which "
        f"the proxy uses (it listens on {listening}); "
        f"move the container to another port, {opt_out}'",
    )
    uid = config.proxy.uid
    own = "c.?securityContext.?runAsUser"
    pod = "object.spec.?securityContext.?runAsUser"
    # Init containers run before mesh-init in classic mode, unless they keep running.
    intercepted = (
        f"('{{field}}' == 'containers' || {V}s_native_sidecar "
        "|| c.?restartPolicy.orValue('') == 'Always')"
    )
    user = f"({own}.hasValue() ? {own}.value() : {pod}.orValue(-1))"
    proxy_uid = _each_container(
        f"{intercepted} && {user} == {uid}",
        f"{which} + ' runs as UID {uid} (' + ({own}.hasValue() ? "
        "'spec.{field}[' + string(i) + '].securityContext.runAsUser' : "
        "\"the pod's spec.securityContext.runAsUser\") + '), the proxy\\'s UID: mesh-init "
        f"exempts that UID from redirection, so its traffic would bypass the proxy; run it as "
        f"another UID (runAsUser in its securityContext), {opt_out}'",
    )
    rules = f"[{reserved_name}, {reserved_port}, {proxy_uid}]"
    return f"{rules}.filter(m, m != '').first().orValue('')"


def _json_string(text: str) -> str:
    """CEL turning a string into its JSON text as the engine writes it (json_text.compact)."""
    out = text
    for char in ["\\", '"', *(chr(code) for code in range(0x20))]:
        escaped = compact(char)[1:-1]
        if escaped != char:
            out = f"{out}.replace({string(char)}, {string(escaped)})"
    return f"'\"' + {out} + '\"'"


def _status(config_digest: str, revision: str) -> str:
    """CEL for the status annotation: ``InjectionStatus.to_json`` per layout."""

    def prefix(native: bool, default_added: bool) -> str:
        status = InjectionStatus(
            version=__version__,
            revision=revision,
            init_containers=(constants.INIT_CONTAINER, constants.PROXY_CONTAINER)
            if native
            else (constants.INIT_CONTAINER,),
            containers=() if native else (constants.PROXY_CONTAINER,),
            annotations=(constants.DEFAULT_CONTAINER_ANNOTATION,) if default_added else (),
            digest=config_digest,
        )
        text = status.to_json()
        probe = InjectionStatus(**{**_fields(status), "replaced": 'a"\\\x01'}).to_json()
        if probe != text[:-1] + ',"replaced":' + compact('a"\\\x01') + "}":
            raise RuntimeError("the status annotation no longer ends with its replaced value")
        return string(text[:-1])

    added = f"!({string(constants.DEFAULT_CONTAINER_ANNOTATION)} in {V}podAnnotations)"
    old = f"{V}podAnnotations[{string(constants.STATUS_ANNOTATION)}]"
    layouts = (
        f"({V}s_native_sidecar ? ({added} ? {prefix(True, True)} : {prefix(True, False)}) "
        f": ({added} ? {prefix(False, True)} : {prefix(False, False)}))"
    )
    replaced = (
        f"({string(constants.STATUS_ANNOTATION)} in {V}podAnnotations ? "
        f"',\"replaced\":' + {_json_string(old)} : '')"
    )
    return f"{layouts} + {replaced} + '}}'"


def _fields(status: InjectionStatus) -> dict[str, Any]:
    return {name: getattr(status, name) for name in status.__slots__}


def _patch() -> str:
    """CEL for ``patch.build_patch`` with the layout ``inject._additions`` chooses."""
    native, hold = f"{V}s_native_sidecar", f"{V}s_hold_application"
    init, proxy = f"{V}initContainer", f"{V}proxyContainer"

    def op(path: str, value: str) -> str:
        return f"JSONPatch{{op: 'add', path: {string(path)}, value: {value}}}"

    has_init = "has(object.spec.initContainers)"
    init_ops = (
        f"({native} ? ({has_init} ? [{op('/spec/initContainers/0', init)}, "
        f"{op('/spec/initContainers/1', proxy)}] "
        f": [{op('/spec/initContainers', f'[{init}, {proxy}]')}]) "
        f": ({has_init} ? [{op('/spec/initContainers/-', init)}] "
        f": [{op('/spec/initContainers', f'[{init}]')}]))"
    )
    container_ops = (
        f"({native} ? [] : {hold} ? [{op('/spec/containers/0', proxy)}] "
        f": [{op('/spec/containers/-', proxy)}])"
    )
    status_key, default_key = constants.STATUS_ANNOTATION, constants.DEFAULT_CONTAINER_ANNOTATION
    added = f"!({string(default_key)} in {V}podAnnotations)"
    first = "object.spec.containers[0].name"
    whole = (
        f"{{{string(status_key)}: string({V}status), ?{string(default_key)}: "
        f"({added} ? optional.of(string({first})) : optional.none())}}"
    )
    annotation_ops = (
        "(has(object.metadata.annotations) ? "
        f"[{op('/metadata/annotations/' + escape(status_key), V + 'status')}] + "
        f"({added} ? [{op('/metadata/annotations/' + escape(default_key), first)}] : []) : "
        f"[{op('/metadata/annotations', whole)}])"
    )
    return f"{init_ops} + {container_ops} + {annotation_ops}"


def _variables(config: InjectorConfig) -> tuple[list[tuple[str, str]], str]:
    """Every variable both policies use, and a digest of the whole for the status."""
    defaults = resolve_settings(
        config, namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )
    settings = resolution(defaults, locked=config.locked_settings)
    compiler = Compiler(
        setting=lambda name: f"{V}s_{name}",
        all_of=lambda name: f"{V}s_{name}_all",
    )
    old = f"{V}podAnnotations[?{string(constants.STATUS_ANNOTATION)}].orValue('')"
    # Most pods set nothing: then the containers are the config's defaults, rendered
    # here by the engine, and nothing needs judging (render_policy refused already
    # if the defaults themselves were invalid). The full computation gives the
    # same containers; this only spares the API server from running it.
    env = settings_env(defaults)
    init_template, proxy_template = mesh_init_template(config), mesh_proxy_template(config)
    init = _when_custom(compiler.template(init_template), init_template, env)
    proxy = _when_custom(compiler.template(proxy_template), proxy_template, env)
    variables = [
        *_base_variables(config),
        ("custom", _custom()),
        *settings.variables,
        ("settingsError", f"!{V}custom ? '' : {settings.error}"),
        *compiler.hoisted,
        ("initContainer", init),
        ("proxyContainer", proxy),
        ("status", _status(_DIGEST_PLACEHOLDER, config.revision)),
        (
            "refusal",
            f"!{V}injecting ? '' : [{_pod_security()}, {_malformed()}, string({V}settingsError), "
            f"{_container_refusals(config)}, "
            # The old value's size first: escaping a huge one would cost more than the budget.
            f"{old} != '' && (size({old}) > {MAX_STATUS_CHARS} "
            f"|| size({V}status) > {MAX_STATUS_CHARS}) ? "
            f"'metadata.annotations[{constants.STATUS_ANNOTATION}] does not describe this pod, "
            f"and at ' + string(size({V}podAnnotations[{string(constants.STATUS_ANNOTATION)}])) "
            "+ ' characters it is too long to keep for uninject; remove it' : '']"
            ".filter(m, m != '').first().orValue('')",
        ),
    ]
    digest = "sha256:" + hashlib.sha256(compact(variables).encode()).hexdigest()
    return [(n, e.replace(_DIGEST_PLACEHOLDER, digest)) for n, e in variables], digest


def _custom() -> str:
    """CEL: whether the pod or its namespace sets any setting key (else all are defaults)."""
    # Most keys do not start with the prefix, and the test stops there.
    keys = literal(list(SETTING_KEYS))
    prefix = string(constants.PREFIX)
    layers = ("podAnnotations", "nsAnnotations", "nsLabels")
    return " || ".join(
        f"{V}{name}.exists(k, k.startsWith({prefix}) && k in {keys})" for name in layers
    )


def _when_custom(compiled: str, template: Any, env: dict[str, Any]) -> str:
    """``compiled`` when some setting is set, else the template rendered for the defaults."""
    return f"{V}custom ? ({compiled}) : {literal(plain(render(template, env)))}"


def _reads(variables: list[tuple[str, str]], expression: str) -> set[str]:
    """The variables ``expression`` reads, directly or through other variables."""
    text = dict(variables)
    found: set[str] = set()
    pending = [expression]
    while pending:
        for name in re.findall(r"variables\.([A-Za-z_][A-Za-z0-9_]*)", pending.pop()):
            if name not in found and name in text:
                found.add(name)
                pending.append(text[name])
    return found


def _keys(text: str) -> str:
    """``text`` with ``ProxySettings`` field names written as the keys users set."""
    for spec in SETTING_SPECS:
        text = re.sub(rf"\b{spec.field}\b", constants.PREFIX + spec.name, text)
    return text


def render_policy(
    config: InjectorConfig, *, revision: str | None = None, tags: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The objects of policy mode for this config (and revision): the two policies, each
    followed by its bindings, one per disjoint entry of the revision (``bindings``).

    ``revision`` (else the config's) names the objects and is recorded in the
    status annotation of every pod they inject; ``tags`` are the other ``rev``
    values its bindings answer to (``sidecar-injector tag`` keeps them live).
    ``Unsupported`` (naming the setting) when CEL cannot reproduce what the
    webhook would do with this config: never a policy that stores another pod.
    """
    revision = revision or config.revision
    if not is_revision_name(revision):
        raise Unsupported(f"revision {revision!r} is not a valid name ({REVISION_NAME_RULE})")
    for tag in tags:
        if not is_revision_name(tag) or tag == DEFAULT_REVISION:
            raise Unsupported(f"tag {tag!r} is not a tag name ({REVISION_NAME_RULE}, not default)")
    config = dataclasses.replace(config, revision=revision)
    name = NAME if revision == DEFAULT_REVISION else f"{NAME}-{revision}"
    try:
        variables, digest = _variables(config)
    except Unsupported as err:
        raise Unsupported(
            f"policy mode cannot reproduce the webhook for this config: {_keys(str(err))}; "
            "use the webhook (manifests/base) instead"
        ) from None
    declared = [{"name": n, "expression": e} for n, e in variables]
    # The validating policy needs only what its refusal reads: every variable is
    # set up for each evaluation, read or not, so the others would cost it.
    needed = _reads(variables, f"{V}refusal")
    checks = [v for v in declared if v["name"] in needed]
    labels = {
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/version": __version__,
        REVISION_LABEL: revision,
    }
    meta = {
        "name": name,
        "labels": labels,
        "annotations": {DIGEST_ANNOTATION: digest, CONFIG_ANNOTATION: dump_config(config)},
    }
    mutating = {
        "apiVersion": API_VERSION,
        "kind": "MutatingAdmissionPolicy",
        "metadata": meta,
        "spec": {
            "matchConstraints": _POD_RULES,
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "variables": declared,
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {
                        "expression": f"{V}injecting && {V}refusal == '' ? {_patch()} : []"
                    },
                }
            ],
        },
    }
    validating = {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": meta,
        "spec": {
            "matchConstraints": _POD_RULES,
            "failurePolicy": "Fail",
            "variables": checks,
            "validations": [
                {"expression": f"{V}refusal == ''", "messageExpression": f"{V}refusal"}
            ],
        },
    }
    mutating_bindings, validating_bindings = render_bindings(
        name,
        revision=revision,
        tags=tags,
        excluded=config.excluded_namespaces,
        labels=labels,
    )
    # Independent copies (one deepcopy each: a deepcopy of the list would keep
    # the sharing): the two policies share their variables and metadata here.
    objects = [mutating, *mutating_bindings, validating, *validating_bindings]
    return [copy.deepcopy(obj) for obj in objects]
