{{/* Names: <fullname>-device-plugin, <fullname>-extender, <fullname>-scheduler. */}}
{{- define "gpupack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gpupack.labels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "gpupack.selector" (list . "extender") */}}
{{- define "gpupack.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ default $root.Chart.Name $root.Values.nameOverride }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "gpupack.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "gpupack.extenderScheme" -}}
{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end -}}

{{/* Where kube-scheduler reaches the extender. */}}
{{- define "gpupack.extenderURL" -}}
{{ include "gpupack.extenderScheme" . }}://{{ include "gpupack.fullname" . }}-extender.{{ .Release.Namespace }}.svc:{{ .Values.extender.port }}
{{- end -}}

{{/* The device plugin's --config file (format: device_plugin/config.py docstring). */}}
{{- define "gpupack.devicePluginConfig" -}}
{{- $dp := .Values.devicePlugin -}}
{{- $cfg := dict "version" "v1" "flags" (dict "migStrategy" $dp.migStrategy "passDeviceSpecs" $dp.passDeviceSpecs) -}}
{{- $health := dict "disabled" $dp.health.disabled "probeIntervalSeconds" $dp.health.probeIntervalSeconds "recoveryProbes" $dp.health.recoveryProbes -}}
{{- if $dp.health.extraSkipXids }}{{ $_ := set $health "extraSkipXids" $dp.health.extraSkipXids }}{{ end -}}
{{- $_ := set $cfg "health" $health -}}
{{- if $dp.timeSlicing.enabled -}}
{{- $ts := dict "renameByDefault" $dp.timeSlicing.renameByDefault "failRequestsGreaterThanOne" $dp.timeSlicing.failRequestsGreaterThanOne "distinctGpus" $dp.timeSlicing.distinctGpus "resources" $dp.timeSlicing.resources -}}
{{- $_ := set $cfg "sharing" (dict "timeSlicing" $ts) -}}
{{- end -}}
{{- $cdi := $dp.cdi | default dict -}}
{{- if not (has ($cdi.allocate | default "env") (list "env" "cdi")) -}}
{{- fail (printf "devicePlugin.cdi.allocate: expected env or cdi, got %q" (toString $cdi.allocate)) -}}
{{- end -}}
{{- if and (eq ($cdi.allocate | default "env") "cdi") (not $cdi.enabled) -}}
{{- fail "devicePlugin.cdi.allocate: cdi needs devicePlugin.cdi.enabled=true (the names Allocate returns resolve only through the specs the plugin writes)" -}}
{{- end -}}
{{- if $cdi.enabled -}}
{{- if not (hasPrefix "/" (toString $cdi.specDir)) -}}
{{- fail (printf "devicePlugin.cdi.specDir: expected an absolute folder path such as /var/run/cdi, got %q" (toString $cdi.specDir)) -}}
{{- end -}}
{{- $_ := set $cfg "cdi" (dict "enabled" true "specDir" $cdi.specDir "allocate" ($cdi.allocate | default "env")) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $cfg $dp.extraConfig) -}}
{{- end -}}

{{/* The extender's Service, and the DNS names its serving certificate carries. */}}
{{- define "gpupack.extenderService" -}}
{{ include "gpupack.fullname" . }}-extender
{{- end -}}

{{- define "gpupack.extenderDNSNames" -}}
{{- $svc := include "gpupack.extenderService" . -}}
{{- $ns := .Release.Namespace -}}
{{- toJson (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) -}}
{{- end -}}

{{/* The username of a ServiceAccount of this release: include "gpupack.serviceAccountUser" (list . "extender") */}}
{{- define "gpupack.serviceAccountUser" -}}
{{- $root := index . 0 -}}
system:serviceaccount:{{ $root.Release.Namespace }}:{{ include "gpupack.fullname" $root }}-{{ index . 1 }}
{{- end -}}

{{/* Where gpupack decides, from extender.placement: gate or extender (auto: gate from Kubernetes
1.36 on, where MutatingAdmissionPolicy is GA; extender before). */}}
{{- define "gpupack.placement" -}}
{{- $p := .Values.extender.placement -}}
{{- if not (has $p (list "auto" "extender" "gate")) -}}
{{- fail (printf "extender.placement: %q is not one of auto, extender, gate" $p) -}}
{{- end -}}
{{- $served := semverCompare ">=1.36.0-0" .Capabilities.KubeVersion.Version -}}
{{- if and (eq $p "gate") (not $served) -}}
{{- fail (printf "extender.placement=gate needs Kubernetes 1.36+ (MutatingAdmissionPolicy v1); this cluster is %s: use extender.placement=extender (or auto)" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and .Values.extender.enabled (or (eq $p "gate") (and (eq $p "auto") $served)) -}}gate{{- else -}}extender{{- end -}}
{{- end -}}
