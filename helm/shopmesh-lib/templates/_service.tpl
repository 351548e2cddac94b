{{/*
shopmesh-lib.service — every object of one shopmesh service. A service chart's only template:
  {{ include "shopmesh-lib.service" . }}
*/}}
{{- define "shopmesh-lib.service" -}}
{{- $c := include "shopmesh-lib.config" . | fromYaml -}}
{{- $ctx := dict "root" . "c" $c -}}
{{ include "shopmesh-lib.serviceaccount" $ctx }}
---
{{ include "shopmesh-lib.configmap" $ctx }}
---
{{- if $c.httpApi.enabled }}
{{ include "shopmesh-lib.httpApi-configmap" $ctx }}
---
{{- end }}
{{ include "shopmesh-lib.service-object" $ctx }}
---
{{ include "shopmesh-lib.deployment" $ctx }}
{{- if $c.canary.enabled }}
---
{{ include "shopmesh-lib.deployment" (merge (dict "track" "canary") $ctx) }}
---
{{ include "shopmesh-lib.track-services" $ctx }}
{{- end }}
{{- if $c.autoscaling.enabled }}
---
{{ include "shopmesh-lib.hpa" $ctx }}
{{- end }}
{{- if $c.pdb.enabled }}
---
{{ include "shopmesh-lib.pdb" $ctx }}
{{- if and $c.canary.enabled (ge (int $c.canary.replicas) 2) }}
---
{{ include "shopmesh-lib.pdb" (merge (dict "track" "canary") $ctx) }}
{{- end }}
{{- end }}
{{- if $c.ingress.http.parentRefs }}
---
{{ include "shopmesh-lib.ingress-http" $ctx }}
{{- end }}
{{- if $c.ingress.grpc.parentRefs }}
---
{{ include "shopmesh-lib.ingress-grpc" $ctx }}
{{- end }}
{{- if $c.networkPolicy.enabled }}
---
{{ include "shopmesh-lib.networkpolicy" $ctx }}
{{- end }}
{{- if $c.meshPolicy.enabled }}
---
{{ include "shopmesh-lib.mesh" $ctx }}
{{- end }}
{{- if $c.monitoring.enabled }}
---
{{ include "shopmesh-lib.servicemonitor" $ctx }}
---
{{ include "shopmesh-lib.prometheusrule" $ctx }}
{{- if $c.mesh }}
---
{{ include "shopmesh-lib.podmonitor" $ctx }}
{{- end }}
{{- end }}
{{- if $c.tests.enabled }}
---
{{ include "shopmesh-lib.test-serviceaccount" $ctx }}
{{- if $c.networkPolicy.enabled }}
---
{{ include "shopmesh-lib.test-networkpolicy" $ctx }}
{{- end }}
---
{{ include "shopmesh-lib.test-pod" $ctx }}
{{- end }}
{{- end -}}
