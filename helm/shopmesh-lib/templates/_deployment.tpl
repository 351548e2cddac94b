{{/*
The Deployment of one service.

Drain, and why there is no preStop hook: on SIGTERM the chassis itself turns grpc.health.v1 to
NOT_SERVING and keeps answering for DRAIN_DELAY_SECONDS (the pod's endpoint stops being ready when it
is deleted, but kube-proxy, mesh proxies and ingresses learn it later and send new calls meanwhile; and
>= one readiness period, so the probe has seen NOT_SERVING and the endpoint stopped `serving`, which is
where those that fall back to terminating endpoints send calls, before any is refused), then refuses new
calls and gives in-flight ones SHUTDOWN_GRACE_SECONDS, then runs the service's shutdown hooks within
SHUTDOWN_HOOKS_BUDGET_SECONDS altogether and exports its last spans (3 s at most). A `preStop: sleep`
would only repeat that delay (and the image's final stage runs the interpreter directly, with no
shell). The config template fails the render unless DRAIN_DELAY_SECONDS + SHUTDOWN_GRACE_SECONDS +
SHUTDOWN_HOOKS_BUDGET_SECONDS + 3 < terminationGracePeriodSeconds, so the kubelet's SIGKILL never cuts
a call the chassis is still finishing, nor a hook, nor the last logs and spans.
*/}}
{{- define "shopmesh-lib.deployment" -}}
{{- $c := .c -}}
{{- $root := .root -}}
{{- /* track: "stable" (the Deployment <name>) or "canary" (<name>-canary: its own image and replicas; the
     mesh splits calls between the two by the pods' shopmesh.io/track label, _mesh.tpl). */ -}}
{{- $track := .track | default "stable" -}}
{{- $canary := eq $track "canary" -}}
{{- $image := ternary $c.canary.image $c.image $canary -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ ternary (printf "%s-canary" $c.name) $c.name $canary }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
  {{- /* Every image of the pod counts: pinning the service's leaves the edge's Envoy (httpApi.image) by tag. */}}
  {{- with include "shopmesh-lib.checkovSkips" (dict "imageDigest" (ternary $c.canary.imageDigest $c.imageDigest $canary) "edgeImage" (ternary $c.httpApi.image "" $c.httpApi.enabled)) }}
  annotations:
    {{- . | trim | nindent 4 }}
  {{- end }}
spec:
  {{- if $canary }}
  replicas: {{ $c.canary.replicas }}
  {{- else if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
      {{- if $canary }}
      # The canary's own pods only. The stable Deployment's selector (fixed since its first release:
      # a Deployment's selector cannot change) matches these pods too; its ReplicaSets select by their
      # pod-template-hash as well, so neither Deployment counts or replaces the other's pods.
      shopmesh.io/track: canary
      {{- end }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "shopmesh-lib.pod-labels" . | nindent 8 }}
      annotations:
        {{- include "shopmesh-lib.pod-annotations" . | nindent 8 }}
    spec:
      serviceAccountName: {{ $c.name }}
      # The services never talk to the Kubernetes API.
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $c.drain.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "shopmesh-lib.podSecurityContext" . | nindent 8 }}
      {{- with include "shopmesh-lib.scheduling" (dict "c" $c) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- if $c.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range $key, $topologyKey := dict "hostname" "kubernetes.io/hostname" "zone" "topology.kubernetes.io/zone" }}
        {{- $spread := get $c.topologySpread $key }}
        - maxSkew: {{ $spread.maxSkew }}
          topologyKey: {{ $topologyKey }}
          whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
          {{- with $spread.minDomains }}
          minDomains: {{ . }}
          {{- end }}
          labelSelector:
            matchLabels:
              {{- include "shopmesh-lib.selectorLabels" $c | nindent 14 }}
        {{- end }}
      {{- end }}
      {{- if $c.database.enabled }}
      initContainers:
        {{- include "shopmesh-lib.migrate-container" (merge (dict "image" $image) .) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $c.name }}
          image: {{ $image | quote }}
          imagePullPolicy: {{ $c.imagePullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $c.grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $c.metricsPort }}
              protocol: TCP
          {{- include "shopmesh-lib.service-env" $c | nindent 10 }}
          # Native gRPC probes: the kubelet calls grpc.health.v1.Health/Check on the gRPC port.
          startupProbe:
            grpc:
              port: {{ $c.grpcPort }}
            periodSeconds: 2
            timeoutSeconds: 2
            failureThreshold: {{ $c.probes.startupFailureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $c.grpcPort }}
            periodSeconds: {{ $c.probes.readinessPeriodSeconds }}
            timeoutSeconds: 2
            successThreshold: 1
            # One late answer is CPU throttling or a pause, not a bad pod (shopmesh-lib.config).
            failureThreshold: {{ $c.probes.readinessFailureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $c.grpcPort }}
            periodSeconds: {{ $c.probes.livenessPeriodSeconds }}
            timeoutSeconds: 2
            failureThreshold: 3
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- include "shopmesh-lib.containerSecurityContext" . | nindent 12 }}
          {{- include "shopmesh-lib.service-mounts" $c | nindent 10 }}
        {{- if $c.httpApi.enabled }}
        {{- include "shopmesh-lib.httpApi-container" . | nindent 8 }}
        {{- end }}
      volumes:
        # The root filesystem is read-only: Python's temporary files go to /tmp.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if $c.httpApi.enabled }}
        {{- include "shopmesh-lib.httpApi-volume" . | nindent 8 }}
        {{- end }}
        {{- if and $c.database.enabled (eq $c.database.mode "sqlite") }}
        # Dev: the SQLite database lives as long as the pod (DATA_DIR=/data).
        - name: data
          emptyDir:
            sizeLimit: {{ $c.database.dataSizeLimit }}
        {{- end }}
        {{- if include "shopmesh-lib.secretFiles" $c }}
        - name: secrets
          projected:
            # 0440: readable by the service's group (fsGroup 10001), by nobody else.
            defaultMode: 288
            sources:
              {{- include "shopmesh-lib.secretSources" $c | nindent 14 }}
        {{- end }}
{{- end -}}


{{/*
The `migrate` init container of a service that owns a database: the service's own image with MIGRATE_ONLY=true
(shopmesh_chassis: migrate to the heads, exit 0, serve nothing), given what the app container is given to reach
the database (the ConfigMap, the Secrets' files, SQLite's /data), under the same security context and resources.

Why before the app container rather than in it: the app migrated before its gRPC port opened, so its startup
probe (periodSeconds 2 x probes.startupFailureThreshold) bounded every migration, and the kubelet killed a
longer one (a concurrent index build on a table of millions of rows) and every retry started over: the
rollout never completed. No probe bounds an init container; the pod shows Init:0/1 while it runs
(`kubectl logs <pod> -c migrate`), and one that fails is restarted with a back-off (Init:Error,
Init:CrashLoopBackOff), the old pods serving meanwhile. The app container's own migrate() then finds nothing
to do. Meshed, the proxy is a native sidecar (shopmesh-lib.mesh.injection): an init container the injector puts
before this one, started (and ready) first, so the migrations reach PostgreSQL through it as the app does.
*/}}
{{- define "shopmesh-lib.migrate-container" -}}
{{- $c := .c -}}
- name: migrate
  image: {{ .image | quote }}
  imagePullPolicy: {{ $c.imagePullPolicy }}
  {{- include "shopmesh-lib.service-env" $c | nindent 2 }}
  env:
    - name: MIGRATE_ONLY
      value: "true"
  resources:
    {{- toYaml $c.resources | nindent 4 }}
  securityContext:
    {{- include "shopmesh-lib.containerSecurityContext" . | nindent 4 }}
  {{- include "shopmesh-lib.service-mounts" $c | nindent 2 }}
{{- end -}}

{{/* The service's settings as its containers read them (the app's and `migrate`): the ConfigMap. */}}
{{- define "shopmesh-lib.service-env" -}}
envFrom:
  - configMapRef:
      name: {{ .name }}
{{- end -}}

{{/* The volumes the service's containers (the app's and `migrate`) mount: /tmp, SQLite's /data, the Secrets. */}}
{{- define "shopmesh-lib.service-mounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if and .database.enabled (eq .database.mode "sqlite") }}
  - name: data
    mountPath: /data
  {{- end }}
  {{- if include "shopmesh-lib.secretFiles" . }}
  # Secrets as files, one per variable, read by the chassis (SECRETS_DIR in the ConfigMap):
  # never in the process environment, which children inherit and /proc shows.
  - name: secrets
    mountPath: {{ .secretsDir }}
    readOnly: true
  {{- end }}
{{- end -}}

{{/*
The pod template's labels: the chart's (never overridden: the Deployment selects by them), then podLabels,
then the mesh's injection switch (podLabels may set it).
*/}}
{{- define "shopmesh-lib.pod-labels" -}}
{{- $c := .c -}}
{{- $ours := include "shopmesh-lib.labels" . | fromYaml -}}
{{- $_ := set $ours "shopmesh.io/track" (.track | default "stable") -}}
{{- $mesh := include "shopmesh-lib.mesh.injection" . | fromYaml -}}
{{- toYaml (merge (dict) $ours $c.podLabels $mesh.labels) -}}
{{- end -}}

{{/*
The pod template's annotations, podAnnotations merged in: a user's value wins, except that the mesh's lists
of ports to bypass the proxy are joined with the user's (one annotation each, both lists kept).
  - prometheus.io/*: the chassis serves Prometheus metrics on METRICS_PORT (go-grpc-prometheus names);
  - checksum/*: a changed ConfigMap rolls the pods;
  - Istio: Prometheus keeps scraping the service's own port (PERMISSIVE in the PeerAuthentication) instead
    of Istio rewriting prometheus.io/* to its agent's merged endpoint on 15020. With the sidecars' spans
    (_mesh.tpl), the service's span exports and the scrapes of its metrics (and of its HTTP Envoy's) pass
    the sidecar by, or each would be a trace of its own; the collector and Prometheus are outside the mesh,
    so mTLS never applied to either;
  - both meshes: connections to the peers that speak first (NATS, SMTP) pass the proxy by
    (shopmesh-lib.mesh.serverFirstPorts says why).
*/}}
{{- define "shopmesh-lib.pod-annotations" -}}
{{- $c := .c -}}
{{- $a := dict
    "prometheus.io/scrape" "true"
    "prometheus.io/port" (toString $c.metricsPort)
    "prometheus.io/path" "/metrics"
    "checksum/config" (include "shopmesh-lib.configmap" . | sha256sum) -}}
{{- if $c.httpApi.enabled -}}
{{- $_ := set $a "checksum/http-api" (include "shopmesh-lib.httpApi-configmap" . | sha256sum) -}}
{{- end -}}
{{- $a = merge $a (include "shopmesh-lib.mesh.injection" . | fromYaml).annotations -}}
{{- $serverFirst := include "shopmesh-lib.mesh.serverFirstPorts" . | fromYamlArray -}}
{{- /* annotation -> ports, each a comma-separated list to its mesh */ -}}
{{- $ports := dict -}}
{{- if eq $c.mesh "istio" -}}
{{- $_ := set $a "prometheus.istio.io/merge-metrics" "false" -}}
{{- $out := $serverFirst -}}
{{- if $c.otel.sidecarSpans -}}
{{- $out = append $out $c.otel.port -}}
{{- $_ := set $ports "traffic.sidecar.istio.io/excludeInboundPorts" (compact (list $c.metricsPort (ternary $c.httpApi.metricsPort "" $c.httpApi.enabled))) -}}
{{- end -}}
{{- $_ := set $ports "traffic.sidecar.istio.io/excludeOutboundPorts" $out -}}
{{- else if eq $c.mesh "linkerd" -}}
{{- $_ := set $ports "config.linkerd.io/skip-outbound-ports" $serverFirst -}}
{{- end -}}
{{- range $key, $value := $c.podAnnotations -}}
{{- if hasKey $ports $key -}}
{{- $_ := set $ports $key (concat (get $ports $key) (splitList "," (toString $value))) -}}
{{- else -}}
{{- $_ := set $a $key $value -}}
{{- end -}}
{{- end -}}
{{- range $key, $list := $ports -}}
{{- $joined := list -}}
{{- range $list }}{{ with toString . | trim }}{{ $joined = append $joined . }}{{ end }}{{ end -}}
{{- with $joined | uniq -}}
{{- $_ := set $a $key (join "," .) -}}
{{- end -}}
{{- end -}}
{{- toYaml $a -}}
{{- end -}}



{{/*
A pod spec's scheduling and pulling fields (imagePullSecrets, priorityClassName, nodeSelector, affinity,
tolerations), each only when set. With .testPod (the `helm test` pod): what lets it pull the service's image
and land on the nodes the service's pods may use (the secrets, the node selector and affinity, the
tolerations), not what is about the service's own pods: their priority and how they keep apart from each
other (pod affinity and anti-affinity, which select the service's labels, never the test pod's).
*/}}
{{- define "shopmesh-lib.scheduling" -}}
{{- $c := .c -}}
{{- $s := $c.scheduling -}}
{{- with $c.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and $s.priorityClassName (not .testPod) }}
priorityClassName: {{ $s.priorityClassName | quote }}
{{- end }}
{{- with $s.nodeSelector }}
nodeSelector:
  {{- range $key, $value := . }}
  {{ $key | quote }}: {{ $value | quote }}
  {{- end }}
{{- end }}
{{- with ternary (pick $s.affinity "nodeAffinity") $s.affinity (default false .testPod) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}


{{/* The pod's and the container's security contexts of our images (user 10001, made by their Dockerfiles): a
service's pods and the load generator's (helm/loadgenerator) alike. Pod Security `restricted` admits them. */}}
{{- define "shopmesh-lib.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shopmesh-lib.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
