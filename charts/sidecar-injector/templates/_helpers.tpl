{{/*
The revision, checked: it becomes a suffix of object names (a Service's name
is a DNS label of at most 63 characters, 17 of them "sidecar-injector-").
*/}}
{{- define "si.revision" -}}
{{- $revision := .Values.revision | default "default" | toString -}}
{{- if or (gt (len $revision) 46) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $revision)) -}}
{{- fail (printf "revision %q is not a revision name (lower-case letters, digits and '-', starting and ending with a letter or digit, at most 46 characters)" $revision) -}}
{{- end -}}
{{- $revision -}}
{{- end -}}

{{/* One of the revision's objects: the base name, with the revision as a suffix. */}}
{{- define "si.named" -}}
{{- $root := index . 0 -}}
{{- $base := index . 1 -}}
{{- $revision := include "si.revision" $root -}}
{{- if eq $revision "default" -}}{{ $base }}{{- else -}}{{ printf "%s-%s" $base $revision }}{{- end -}}
{{- end -}}

{{- define "si.fullname" -}}
{{- include "si.named" (list . "sidecar-injector") -}}
{{- end -}}

{{/* A webhook's name: rev-pod.sidecar.mesh.io, rev-pod.canary.sidecar.mesh.io. */}}
{{- define "si.webhookName" -}}
{{- $root := index . 0 -}}
{{- $entry := index . 1 -}}
{{- $revision := include "si.revision" $root -}}
{{- if eq $revision "default" -}}{{ $entry }}.sidecar.mesh.io{{- else -}}{{ printf "%s.%s.sidecar.mesh.io" $entry $revision }}{{- end -}}
{{- end -}}

{{/*
Labels. The name label carries the revision suffix too: each revision's
Deployment, Service, PodDisruptionBudget and NetworkPolicy select its own
pods only (the default revision's selectors, immutable on a Deployment,
predate revisions).
*/}}
{{- define "si.templateLabels" -}}
app.kubernetes.io/name: {{ include "si.fullname" . }}
app.kubernetes.io/part-of: sidecar-injector
app.kubernetes.io/component: admission-webhook
{{- end -}}

{{- define "si.labels" -}}
{{ include "si.templateLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "si.selectorLabels" -}}
app.kubernetes.io/name: {{ include "si.fullname" . }}
{{- end -}}

{{/* The namespaces no entry may select: the config's, and the release's own. */}}
{{- define "si.excluded" -}}
{{- $excluded := concat (.Values.config.excludedNamespaces | default list) (list .Release.Namespace) | uniq -}}
{{- toJson $excluded -}}
{{- end -}}

{{/* The injector config as the injector reads it (config.yaml in the ConfigMap). */}}
{{- define "si.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $init := deepCopy (get $config "init" | default dict) -}}
{{- if not (get $init "image") -}}
{{- $_ := set $init "image" (printf "%s/mesh-init:%s" .Values.imageRepository .Chart.AppVersion) -}}
{{- end -}}
{{- $_ := set $config "init" $init -}}
{{- $_ := set $config "excludedNamespaces" (include "si.excluded" . | fromJsonArray) -}}
{{- $revision := include "si.revision" . -}}
{{- if ne $revision "default" -}}
{{- $_ := set $config "revision" $revision -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
The tags this revision answers to besides its name, read back from the live
webhook configuration (or policy bindings) so that `helm upgrade` keeps what
`sidecar-injector tag` set. `helm template` sees no cluster, hence no tags.
*/}}
{{- define "si.tags" -}}
{{- $revision := include "si.revision" . -}}
{{- $tags := list -}}
{{- $live := list -}}
{{- $configuration := lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" (include "si.fullname" .) -}}
{{- range $hook := ($configuration.webhooks | default list) -}}
{{- $live = append $live $hook.namespaceSelector -}}
{{- $live = append $live $hook.objectSelector -}}
{{- end -}}
{{- range $kind := list "MutatingAdmissionPolicyBinding" "ValidatingAdmissionPolicyBinding" -}}
{{- range $entry := list "rev-pod" "rev-namespace" -}}
{{- $binding := lookup "admissionregistration.k8s.io/v1" $kind "" (printf "%s-%s" (include "si.fullname" $) $entry) -}}
{{- if $binding -}}
{{- $live = append $live $binding.spec.matchResources.namespaceSelector -}}
{{- $live = append $live $binding.spec.matchResources.objectSelector -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $selector := $live -}}
{{- range $expression := (($selector | default dict).matchExpressions | default list) -}}
{{- if and (eq $expression.key "sidecar.mesh.io/rev") (eq $expression.operator "In") -}}
{{- range $value := $expression.values -}}
{{- if and (ne $value $revision) (not (has $value $tags)) -}}
{{- $tags = append $tags $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $tags -}}
{{- end -}}

{{/* The rev values this revision answers to: its name, then its tags. */}}
{{- define "si.values" -}}
{{- toJson (prepend (include "si.tags" . | fromJsonArray) (include "si.revision" .)) -}}
{{- end -}}

{{/*
The disjoint entries (webhook.manifests.revisions, docs/upgrade.md): each
one's namespaceSelector and objectSelector, for a webhook or a binding.
Called with (list root entry).
*/}}
{{- define "si.namespaceSelector" -}}
{{- $root := index . 0 -}}
{{- $entry := index . 1 -}}
matchExpressions:
{{- if eq $entry "namespace" }}
  - key: sidecar-injection
    operator: In
    values: ["enabled"]
  - key: sidecar.mesh.io/rev
    operator: DoesNotExist
{{- else if eq $entry "object" }}
  - key: sidecar-injection
    operator: NotIn
    values: ["enabled", "disabled"]
  - key: sidecar.mesh.io/rev
    operator: DoesNotExist
{{- else if eq $entry "rev-pod" }}
  - key: sidecar-injection
    operator: NotIn
    values: ["disabled"]
{{- else }}
  - key: sidecar-injection
    operator: NotIn
    values: ["disabled"]
  - key: sidecar.mesh.io/rev
    operator: In
    values: {{ include "si.values" $root }}
{{- end }}
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ include "si.excluded" $root }}
{{- end -}}

{{- define "si.objectSelector" -}}
{{- $root := index . 0 -}}
{{- $entry := index . 1 -}}
matchExpressions:
  - key: sidecar.mesh.io/inject
    operator: NotIn
    values: ["false"]
{{- if eq $entry "rev-pod" }}
  - key: sidecar.mesh.io/rev
    operator: In
    values: {{ include "si.values" $root }}
{{- else }}
  - key: sidecar.mesh.io/rev
    operator: DoesNotExist
{{- end }}
{{- end -}}

{{/* The entries of this revision: (c) for the default revision, then (a) and (b). */}}
{{- define "si.entries" -}}
{{- if eq (include "si.revision" .) "default" -}}
["namespace", "object", "rev-pod", "rev-namespace"]
{{- else -}}
["rev-pod", "rev-namespace"]
{{- end -}}
{{- end -}}

{{/*
The webhooks' matchConditions: what the pod itself says that makes the
injector skip it, so the API server does not call it (and for `object`, the
pod's own opt-in). webhook.manifests.revisions.POD_CONDITIONS in CEL.
*/}}
{{- define "si.matchConditions" -}}
- name: not-host-network
  expression: "!object.spec.?hostNetwork.orValue(false)"
- name: not-windows
  expression: "object.spec.?os.?name.orValue('') != 'windows'"
- name: not-mirror-pod
  expression: "!('kubernetes.io/config.mirror' in object.metadata.?annotations.orValue({}))"
- name: not-opted-out
  expression: >-
    !(object.metadata.?labels[?'sidecar.mesh.io/inject'].orValue('') == 'false'
    || object.metadata.?labels[?'sidecar.mesh.io/inject'].orValue('') != 'true'
    && object.metadata.?annotations[?'sidecar.mesh.io/inject'].orValue('') == 'false')
- name: not-injected
  expression: >-
    !('sidecar.mesh.io/status' in object.metadata.?annotations.orValue({})
    && ['mesh-init', 'mesh-proxy'].all(n,
    object.spec.?initContainers.orValue([]).exists(c, c.name == n)
    || object.spec.containers.exists(c, c.name == n)))
{{- if eq . "object" }}
- name: opted-in
  expression: >-
    object.metadata.?labels[?'sidecar.mesh.io/inject'].orValue('') == 'true'
    || object.metadata.?labels[?'sidecar.mesh.io/inject'].orValue('') != 'false'
    && object.metadata.?annotations[?'sidecar.mesh.io/inject'].orValue('') == 'true'
{{- end }}
{{- end -}}

{{/* The image of the webhook (and of the certificates Job). */}}
{{- define "si.image" -}}
{{ .Values.imageRepository }}/webhook:{{ .Chart.AppVersion }}
{{- end -}}

{{/* Checks that apply to every mode. */}}
{{- define "si.validate" -}}
{{- if not (has .Values.mode (list "webhook" "policy")) -}}
{{- fail (printf "mode %q is neither webhook nor policy" (toString .Values.mode)) -}}
{{- end -}}
{{- if not (has .Values.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "failurePolicy %q is neither Fail nor Ignore" (toString .Values.failurePolicy)) -}}
{{- end -}}
{{- if not (has .Values.certificates.mode (list "job" "cert-manager" "provided")) -}}
{{- fail (printf "certificates.mode %q is none of job, cert-manager, provided" (toString .Values.certificates.mode)) -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "provided") (eq .Values.mode "webhook") (not .Values.certificates.caBundle) -}}
{{- fail "certificates.mode provided needs the CA: --set-file certificates.caBundle=ca.crt" -}}
{{- end -}}
{{- end -}}
