{{/* Labels on every object. */}}
{{- define "purelb.labels" -}}
app.kubernetes.io/name: purelb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod selector labels of a component: (dict "ctx" $ "component" "agent"). */}}
{{- define "purelb.selector" -}}
app.kubernetes.io/name: purelb
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}, falling back to .Values.image. */}}
{{- define "purelb.image" -}}
{{- $img := .img | default dict -}}
{{- $v := .ctx.Values.image -}}
{{- $repo := $img.repository | default $v.repository -}}
{{- $tag := $img.tag | default $v.tag | default .ctx.Chart.AppVersion -}}
{{- $digest := $img.digest | default (ternary $v.digest "" (empty $img.repository)) -}}
{{- if $digest -}}{{ printf "%s@%s" $repo $digest }}{{- else -}}{{ printf "%s:%s" $repo $tag }}{{- end -}}
{{- end -}}

{{/* Environment common to every purelb container. */}}
{{- define "purelb.commonEnv" -}}
- name: PURELB_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: PURELB_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: PURELB_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}
