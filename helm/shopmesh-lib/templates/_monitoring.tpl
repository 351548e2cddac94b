{{/*
Monitoring with the Prometheus Operator (kube-prometheus-stack): a ServiceMonitor for the metrics port and
a PrometheusRule with the alerts this service's role calls for. On when global.monitoring.enabled (the
monitoring.coreos.com/v1 CRDs must be installed); helm/shopmesh/values-monitoring.yaml turns it on.

Every expression selects this service's series by the labels a ServiceMonitor scrape gives them:
job (the Service's name) and namespace. A service chart adds alerts of its own under `alerts:`, writing
__selector__ where those two matchers go. docs/operations.md is the runbook: what each alert means and
what to do.
*/}}

{{- define "shopmesh-lib.servicemonitor" -}}
{{- $c := .c -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
    {{- with $c.monitoring.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  namespaceSelector:
    matchNames:
      - {{ $c.namespace }}
  # Series carry the pod's track (shopmesh_io_track="stable" or "canary"): a canary's error rate and
  # latency read beside the stable pods' (docs/mesh.md, "Canaries").
  podTargetLabels:
    - shopmesh.io/track
  endpoints:
    - port: metrics
      path: /metrics
      scheme: http
      interval: {{ $c.monitoring.interval }}
    {{- if $c.httpApi.enabled }}
    # The http-api container's Envoy: requests by response class, latency, transcoding and upstream errors.
    - port: http-metrics
      path: /stats/prometheus
      scheme: http
      interval: {{ $c.monitoring.interval }}
    {{- end }}
{{- end -}}

{{/*
Under a mesh, the proxy beside each pod has metrics of its own: Istio's standard metrics (istio_requests_total,
istio_request_duration_milliseconds, by source and destination workload: what Kiali draws its graph from) and
Envoy's, on the istio-proxy container's port http-envoy-prom (15090); Linkerd's (request_total,
response_total, response_latency_ms) on the linkerd-proxy container's port linkerd-admin (4191). A PodMonitor
scrapes them by those injected ports' names; their job is <namespace>/<name>-proxy, apart from the service's.
*/}}
{{- define "shopmesh-lib.podmonitor" -}}
{{- $c := .c -}}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ $c.name }}-proxy
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
    {{- with $c.monitoring.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  namespaceSelector:
    matchNames:
      - {{ $c.namespace }}
  podTargetLabels:
    - shopmesh.io/track
  podMetricsEndpoints:
    {{- if eq $c.mesh "istio" }}
    - port: http-envoy-prom
      path: /stats/prometheus
    {{- else }}
    - port: linkerd-admin
      path: /metrics
    {{- end }}
      scheme: http
      interval: {{ $c.monitoring.interval }}
{{- end -}}

{{/*
One alert of the PrometheusRule. Its expression is .rule.expr, or, for one that fires on the first event a
counter counts, .rule.counted: {series, window, by (optional: the labels it fires per)}, which is
`sum by (<by>) (<shopmesh-lib.counted of series over window>) > 0` (without by, `sum(...) > 0`): the number
counted over the window. k8s/values_schema.py has a chart's own alert give one of the two.
*/}}
{{- define "shopmesh-lib.alert" -}}
{{- $c := .c -}}
{{- $selector := printf "job=%q, namespace=%q" $c.name $c.namespace -}}
{{- $expr := .rule.expr -}}
{{- with .rule.counted -}}
{{- $sum := "sum" -}}
{{- with .by }}{{ $sum = printf "sum by (%s) " . }}{{ end -}}
{{- $expr = printf "%s(%s) > 0" $sum (include "shopmesh-lib.counted" .) -}}
{{- end -}}
- alert: {{ .rule.alert }}
  expr: {{ $expr | replace "__selector__" $selector | quote }}
  for: {{ .rule.for }}
  labels:
    severity: {{ .rule.severity }}
    service: {{ $c.name }}
  annotations:
    summary: {{ .rule.summary | quote }}
    description: {{ .rule.description | quote }}
    runbook_url: {{ printf "%s#%s" $c.monitoring.runbookUrl (lower .rule.alert) | quote }}
{{- end -}}

{{/*
The gRPC status codes that are the server's failures, as a PromQL regular expression: ShopmeshServerErrors
and the availability SLO count these, and shed calls (shopmesh-lib.serverFailures), and nothing else (client
mistakes such as INVALID_ARGUMENT or NOT_FOUND, and a rate limit's RESOURCE_EXHAUSTED, never burn anything).
*/}}
{{- define "shopmesh-lib.serverErrorCodes" -}}
UNKNOWN|INTERNAL|DATA_LOSS|UNIMPLEMENTED|UNAVAILABLE|DEADLINE_EXCEEDED
{{- end -}}

{{/*
The per-second rate of the server's failed calls over .window among the series .selector selects, per
series, for a `sum by` around it: those answered with a server error code, and those shed (RESOURCE_EXHAUSTED,
shopmesh_grpc_server_shed_total: reason SERVER_OVERLOADED, the service at its GRPC_MAX_CONCURRENT_RPCS; a
handler's own full queue, users' PASSWORD_HASHING_BUSY; or a dependency's shed answer that it relays). Shedding fails the caller as surely as UNAVAILABLE, but its code is
the one a rate limit answers, and a rate limit is the client's doing: the code alone cannot tell them apart.
A shed call is in grpc_server_handled_total as RESOURCE_EXHAUSTED too, which is no server error code, so it
counts once. `or` adds the two: the handled series carry grpc_code and the shed ones do not, so no label set
of one side is the other's and every series of both is kept. ShopmeshServerErrors and the availability SLO
count these, and no others. Kept here once for both.
*/}}
{{- define "shopmesh-lib.serverFailures" -}}
{{- printf "rate(grpc_server_handled_total{%s, grpc_code=~%q}[%s]) or rate(shopmesh_grpc_server_shed_total{%s}[%s])" .selector (include "shopmesh-lib.serverErrorCodes" .) .window .selector .window -}}
{{- end -}}

{{/*
The bucket bounds of grpc_server_handling_seconds, as the chassis exports them in `le` (LATENCY_BUCKETS in
libs/chassis/src/shopmesh_chassis/metrics.py; tests/k8s/test_slo.py keeps the two equal). The latency SLO's
threshold must be one of them: a share of calls answered within it is read from that bucket alone.
*/}}
{{- define "shopmesh-lib.latencyBuckets" -}}
0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1.0 2.5 5.0 10.0 15.0 20.0 30.0
{{- end -}}

{{/*
SLOs of the service's API (the gRPC services it serves, service.grpcServices: health checks and reflection
are not its API), with `slo.enabled` (the gateway's chart: its public API, which the http-api container's
HTTP/JSON and gRPC-Web calls reach as gRPC calls too), over 30 days:
  availability: the share of calls not answered with a server-side status nor shed (shopmesh-lib.serverFailures);
  latency: the share of calls answered within slo.latency.thresholdSeconds (a bucket bound of the histogram),
  among the calls of every method but slo.latency.excludedMethods (the gateway's: those slow by design, the
  password hashing of Login and Register; the availability SLO counts them).
Recording rules give each SLO's error ratio (the share of calls that missed it) over the windows the alerts
read, and its objective; the alerts are the Google SRE workbook's multiwindow, multi-burn-rate alerts
(https://sre.google/workbook/alerting-on-slos/, "6: Multiwindow, Multi-Burn-Rate Alerts", the configuration
it recommends for a 30-day SLO): a page when the budget burns 14.4 times as fast as it can last over 1 hour
and 5 minutes (2 % of it gone in the hour), or 6 times over 6 hours and 30 minutes (5 % in 6 hours); a
ticket at 3 times over 1 day and 2 hours (10 % in the day), or once over 3 days and 6 hours (10 % in 3 days).
The long window says enough budget went to matter; the short one that it is still going, so an alert
resolves minutes after the burn stops instead of an hour or days later. The factors are fractions of a
30-day budget: the period is not a setting.
A window without calls has no error ratio (not 0/0, NaN): nothing fires for a service nobody calls. Nor does
a condition whose long window Prometheus holds less than 90 % of (a new Prometheus, a new deployment): its
ratio would be the few minutes' there are, and a blip would read as days of burn.
*/}}
{{/*
The matcher, after a comma, that leaves out slo.latency.excludedMethods (those slow by design: the password
hashing of Login and Register), for the latency SLO and ShopmeshSlowCalls alike; nothing without them.
*/}}
{{- define "shopmesh-lib.latencyExcluded" -}}
{{- with .monitoring.slo.latencyExcludedMethods -}}
{{- $methods := list -}}
{{- range . -}}
{{- $methods = append $methods (regexQuoteMeta .) -}}
{{- end -}}
{{- printf ", grpc_method!~%q" (join "|" $methods) -}}
{{- end -}}
{{- end -}}

{{- define "shopmesh-lib.slo" -}}
{{- $c := .c -}}
{{- $slo := $c.monitoring.slo -}}
{{- $api := printf "__selector__, grpc_service=%q" (first $c.grpcServices) -}}
{{- if gt (len $c.grpcServices) 1 -}}
{{- $services := list -}}
{{- range $c.grpcServices -}}
{{- $services = append $services (regexQuoteMeta .) -}}
{{- end -}}
{{- $api = printf "__selector__, grpc_service=~%q" (join "|" $services) -}}
{{- end -}}
{{- $timedApi := printf "%s%s" $api (include "shopmesh-lib.latencyExcluded" $c) -}}
{{- $by := "sum by (job, namespace)" -}}
{{- $record := "job:shopmesh_slo_errors:ratio_rate" -}}
{{- $objectives := dict "availability" $slo.availability "latency" $slo.latency -}}
{{- $conditions := list
  (dict "severity" "critical" "long" "1h" "minutes" 60 "short" "5m" "factor" 14.4)
  (dict "severity" "critical" "long" "6h" "minutes" 360 "short" "30m" "factor" 6)
  (dict "severity" "warning" "long" "1d" "minutes" 1440 "short" "2h" "factor" 3)
  (dict "severity" "warning" "long" "3d" "minutes" 4320 "short" "6h" "factor" 1) -}}
{{- $selector := printf "job=%q, namespace=%q" $c.name $c.namespace -}}
- name: shopmesh-{{ $c.name }}-slo
  rules:
  {{- range $name, $objective := $objectives }}
    - record: job:shopmesh_slo_objective:ratio
      expr: {{ printf "vector(%v)" $objective | quote }}
      labels:
        job: {{ $c.name }}
        namespace: {{ $c.namespace }}
        slo: {{ $name }}
  {{- end }}
  {{- range $window := list "5m" "30m" "1h" "2h" "6h" "1d" "3d" }}
    {{- $calls := printf "%s (rate(grpc_server_handled_total{%s}[%s]))" $by $api $window }}
    {{- $failed := printf "%s (%s)" $by (include "shopmesh-lib.serverFailures" (dict "selector" $api "window" $window)) }}
    {{- $timed := printf "%s (rate(grpc_server_handling_seconds_count{%s}[%s]))" $by $timedApi $window }}
    {{- $fast := printf "%s (rate(grpc_server_handling_seconds_bucket{%s, le=%q}[%s]))" $by $timedApi $slo.bucket $window }}
    {{- /* Each SLO's rate of the calls that missed it, and of all calls. With calls but no failed one yet, the
         failed codes have no series at all (a child is made on first use): 0 then, not nothing. */}}
    {{- $rates := dict
      "availability" (list (printf "%s or 0 * %s" $failed $calls) $calls)
      "latency" (list (printf "%s - %s" $timed $fast) $timed) }}
    {{- /* Without calls, the `> 0` leaves no denominator, and no ratio. */}}
    {{- range $name := list "availability" "latency" }}
    - record: {{ $record }}
      expr: {{ printf "(%s) / (%s > 0)" (index (get $rates $name) 0) (index (get $rates $name) 1) | replace "__selector__" $selector | quote }}
      labels:
        slo: {{ $name }}
        window: {{ $window }}
    {{- end }}
    {{- /* The 5-minute rates of the calls that missed each SLO and of all calls, for the dashboard's 30-day
         budget: summed over 30 days, their quotient is the share of the 30 days' calls that missed it, each
         call weighing the same. An average of the 5-minute ratios would weigh a quiet night's few calls as much
         as a busy day's many. */}}
    {{- if eq $window "5m" }}
    {{- range $name := list "availability" "latency" }}
    - record: job:shopmesh_slo_errors:rate5m
      expr: {{ index (get $rates $name) 0 | replace "__selector__" $selector | quote }}
      labels:
        slo: {{ $name }}
    - record: job:shopmesh_slo_calls:rate5m
      expr: {{ index (get $rates $name) 1 | replace "__selector__" $selector | quote }}
      labels:
        slo: {{ $name }}
    {{- end }}
    {{- end }}
  {{- end }}
  {{- range $page := list true false }}
    {{- $burns := list }}
    {{- range $condition := $conditions }}
    {{- if eq $page (eq $condition.severity "critical") }}
    {{- range $name := list "availability" "latency" }}
    {{- $over := printf "%v * (1 - %v)" $condition.factor (get $objectives $name) }}
    {{- /* The long window holds what Prometheus has of it: with 10 minutes of history, every window's ratio is
         those minutes', and a 26 s blip was about 4 % of "the last 3 days". A condition holds only once the
         service's targets were scraped in the oldest tenth of its long window (time enough for a restart's
         gap), so a new Prometheus or a new deployment pages through each window only once it is ~full. */}}
    {{- $filled := printf "present_over_time(up{__selector__}[%dm] offset %dm)" (div $condition.minutes 10) (div (mul $condition.minutes 9) 10) }}
    {{- $burns = append $burns (printf "(%s{__selector__, slo=%q, window=%q} > %s and ignoring (window) %s{__selector__, slo=%q, window=%q} > %s and on (job, namespace) %s)" $record $name $condition.long $over $record $name $condition.short $over $filled) }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- $rule := dict
      "alert" (ternary "ShopmeshErrorBudgetBurnFast" "ShopmeshErrorBudgetBurnSlow" $page)
      "expr" (join " or " $burns)
      "for" "2m"
      "severity" (ternary "critical" "warning" $page) }}
    {{- if $page }}
    {{- $_ := set $rule "summary" (printf "%s: an SLO's error budget is burning fast" $c.name) }}
    {{- $_ := set $rule "description" "The {{ $labels.slo }} SLO of the API is burning its 30-day error budget too fast to wait: {{ $value | humanizePercentage }} of the calls over the last {{ $labels.window }} missed it, over 14.4 times the budget's share over 1h (2 % of the budget gone in the hour) or 6 times over 6h (5 % in 6 hours), and still so over the last 5 or 30 minutes. At 14.4 times the whole budget lasts about 2 days." }}
    {{- else }}
    {{- $_ := set $rule "summary" (printf "%s: an SLO's error budget is burning steadily" $c.name) }}
    {{- $_ := set $rule "description" "The {{ $labels.slo }} SLO of the API has been burning its 30-day error budget faster than it can last: {{ $value | humanizePercentage }} of the calls over the last {{ $labels.window }} missed it, 3 times the budget's share over 1d or once over 3d (10 % of the budget gone either way), and still so over the last 2 or 6 hours. Not an emergency: find the cause within working hours, before the budget runs out." }}
    {{- end }}
    {{- include "shopmesh-lib.alert" (dict "c" $c "rule" $rule) | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
What a counter .series counted over .window, per series, for an alert on the first event it counts: its
increase(), or, for a series that had no sample .window ago (a new pod's), its whole value. A pod's counter is
exported at 0 from its start, but an event counted before the pod's first scrape makes that first sample 1
already, and increase() reads only a rise between two samples. A restarted container keeps its pod's series,
and increase() counts its value after the reset. `or` matches series without their metric name, so a new
series that has risen too counts once, by its increase(). A target unscraped for over 5 minutes reads as new
for a window after: its whole value counts again (a pod that never counted anything stays at 0, silent).
An alert takes it as `counted:` (shopmesh-lib.alert), a service chart's own alerts too.
*/}}
{{- define "shopmesh-lib.counted" -}}
{{- printf "increase(%s[%s]) > 0 or (%s > 0 unless %s offset %s)" .series .window .series .series .window -}}
{{- end -}}

{{- define "shopmesh-lib.prometheusrule" -}}
{{- $c := .c -}}
{{- $m := $c.monitoring -}}
{{- $serverErrors := include "shopmesh-lib.serverErrorCodes" . -}}
{{- /* ShopmeshServerErrors' calls served over 5 minutes, per method: those that ended, and for a streaming one
the streams held (started, not yet handled), each as one call of the window. A Watch lives for hours and is
handled when it ends: a shed one (counted at once) over only the streams that ended was a ratio of 1, and a page,
however many were served. */ -}}
{{- $handled := "sum by (grpc_service, grpc_method) (rate(grpc_server_handled_total{__selector__}[5m]))" -}}
{{- $held := "(sum by (grpc_service, grpc_method) (grpc_server_started_total{__selector__, grpc_type!=\"unary\"}) - sum by (grpc_service, grpc_method) (grpc_server_handled_total{__selector__, grpc_type!=\"unary\"}))" -}}
{{- $rules := list
  (dict
    "alert" "ShopmeshServiceDown"
    "expr" "absent(up{__selector__, endpoint=\"metrics\"} == 1)"
    "for" "5m" "severity" "critical"
    "summary" (printf "%s: no pod answers Prometheus" $c.name)
    "description" "No pod of the service has been scraped successfully on its metrics port for 5 minutes: it is down, not ready, or the port is unreachable. (Only the service's own port counts: the gateway pods' http-api container is scraped under the same job and can be up while the service is not.)")
  (dict
    "alert" "ShopmeshServerErrors"
    "expr" (printf "sum by (grpc_service, grpc_method) (%s) / (%s + %s / 300 or %s) > %v" (include "shopmesh-lib.serverFailures" (dict "selector" "__selector__" "window" "5m")) $handled $held $handled $m.errorRatio)
    "for" "5m" "severity" "critical"
    "summary" (printf "%s: calls failing on the server side" $c.name)
    "description" (printf "More than %v%% of {{ $labels.grpc_service }}/{{ $labels.grpc_method }} calls end in a server-side status (%s) or are shed (RESOURCE_EXHAUSTED: SERVER_OVERLOADED, this service or one it relays at its GRPC_MAX_CONCURRENT_RPCS; PASSWORD_HASHING_BUSY, users' hashing queue full) for 5 minutes; client mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) and rate limits do not count." (mulf $m.errorRatio 100) (replace "|" ", " $serverErrors)))
  (dict
    "alert" "ShopmeshSlowCalls"
    "expr" (printf "histogram_quantile(0.99, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket{__selector__%s}[5m]))) > %v" (include "shopmesh-lib.latencyExcluded" $c) $m.latencyP99Seconds)
    "for" "10m" "severity" "warning"
    "summary" (printf "%s: p99 latency above %vs" $c.name $m.latencyP99Seconds)
    "description" "The 99th percentile of {{ $labels.grpc_service }}/{{ $labels.grpc_method }} has been {{ $value | humanizeDuration }} for 10 minutes. The methods of slo.latency.excludedMethods (password hashing, ~0.5 s by design) are not watched.")
  (dict
    "alert" "ShopmeshSpansNotExported"
    "expr" "(sum(rate(shopmesh_spans_export_failed_total{__selector__}[5m])) or vector(0)) + (sum(rate(shopmesh_spans_dropped_total{__selector__}[5m])) or vector(0)) > 0"
    "for" "10m" "severity" "warning"
    "summary" (printf "%s: spans are not reaching the tracing collector" $c.name)
    "description" "The service has been losing spans for 10 minutes, {{ $value | humanize }} a second: its OTLP exports to the collector (global.otel.endpoint) fail (shopmesh_spans_export_failed_total), or its batch queue is full and drops them (shopmesh_spans_dropped_total: the collector slower than the spans come). Calls are not affected; their traces are missing. The exporter's log says why, once a minute (logger opentelemetry.exporter.otlp.proto.grpc.exporter).")
  (dict
    "alert" "ShopmeshFileDescriptorsNearLimit"
    "expr" "max by (pod) (process_open_fds{__selector__} / process_max_fds{__selector__}) > 0.8"
    "for" "10m" "severity" "warning"
    "summary" (printf "%s: a pod holds most of its file descriptors open" $c.name)
    "description" "Pod {{ $labels.pod }} has held {{ $value | humanizePercentage }} of its open-file limit (process_max_fds, the process' soft RLIMIT_NOFILE) open for 10 minutes. At the limit every new connection it accepts or makes (its callers', the database's, NATS') and every file it opens fails (EMFILE). Sockets or files leaking, or more connections than the limit was set for (docs/operations.md, ShopmeshFileDescriptorsNearLimit).")
-}}
{{- if $c.nats.publishes -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshOutboxStuck"
    "expr" "max(shopmesh_outbox_oldest_unpublished_age_seconds{__selector__}) > 60"
    "for" "2m" "severity" "critical"
    "summary" (printf "%s: events are not leaving the outbox" $c.name)
    "description" "The oldest unpublished event is {{ $value | humanizeDuration }} old: the relay cannot publish to NATS JetStream (NATS down, unreachable, or refusing). Consumers see nothing new until it recovers; nothing is lost. How many wait: shopmesh_outbox_unpublished_events.") -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshOutboxRelayStalled"
    "expr" "time() - max(shopmesh_outbox_relay_pass_timestamp_seconds{__selector__}) > 120"
    "for" "3m" "severity" "critical"
    "summary" (printf "%s: no outbox relay completes a pass" $c.name)
    "description" "No replica's outbox relay has completed a pass for {{ $value | humanizeDuration }} (a healthy one passes every few seconds): nothing leaves the outbox, and the oldest-unpublished age (ShopmeshOutboxStuck) is that old, 0 if its last pass had sent everything. The relay lock's holder hangs, or every pass fails (its log: outbox relay pass failed on every pass, or, for a full stream, one ERROR: the NATS stream is full (ShopmeshOutboxStreamFull)). Nothing is lost.") -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshOutboxEventsSetAside"
    "expr" "max(shopmesh_outbox_set_aside_events{__selector__}) > 0"
    "for" "1m" "severity" "warning"
    "summary" (printf "%s: events set aside in the outbox" $c.name)
    "description" "{{ $value }} event(s) wait in the outbox, set aside: NATS refuses them for good (larger than the server's max_payload or the stream's max message size; the relay's ERROR log names each). They are not published; the events behind them were. Find them, fix the limit, then re-send or delete them (docs/operations.md, ShopmeshOutboxEventsSetAside).") -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshOutboxStreamFull"
    "expr" "max(shopmesh_outbox_stream_full{__selector__}) > 0"
    "for" "2m" "severity" "critical"
    "summary" (printf "%s: the events stream is full and refuses new events" $c.name)
    "description" "The service's NATS stream has been at a size limit (max_msgs or max_bytes, under discard new) for 2 minutes and refuses every new event (err_code 10077, maximum messages or bytes exceeded): events wait in the outbox, consumers get nothing new; nothing is lost. Messages every consumer acknowledged count toward the limit until they age out (max_age, 7 days): raise the limit, or lower the max age (docs/operations.md, ShopmeshOutboxStreamFull).") -}}
{{- end -}}
{{- if $c.nats.consumes -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshConsumerBacklog"
    "expr" (printf "max by (consumer) (shopmesh_events_consumer_backlog{__selector__}) > %v" $m.consumerBacklog)
    "for" "10m" "severity" "warning"
    "summary" (printf "%s: a consumer falls behind its stream" $c.name)
    "description" (printf "Consumer {{ $labels.consumer }} has had more than %v events not yet applied for 10 minutes ({{ $value }} now): its handler is slow or failing and retrying, or too few replicas run." $m.consumerBacklog)) -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshConsumerCutOff"
    "expr" "time() - max by (consumer) (shopmesh_events_consumer_nats_read_timestamp_seconds{__selector__}) > 180"
    "for" "5m" "severity" "critical"
    "summary" (printf "%s: a consumer reaches no NATS" $c.name)
    "description" "No replica of consumer {{ $labels.consumer }} has read its state from NATS for {{ $value | humanizeDuration }}: it consumes nothing, and its backlog and dead-letter gauges (and the alerts on them) are that old. NATS is down, or unreachable from this service (NetworkPolicy egress, credentials).") -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshDeadLetters"
    "expr" "max by (consumer) (shopmesh_events_dead_letters{__selector__}) > 0"
    "for" "1m" "severity" "warning"
    "summary" (printf "%s: events parked on the dead-letter stream" $c.name)
    "description" "{{ $value }} event(s) that consumer {{ $labels.consumer }} could not apply wait on DEADLETTER: list them with shopmesh-deadletters, fix the cause, then replay or discard them.") -}}
{{- /* An event lost for good: paged at the first, a pod's first too (shopmesh-lib.counted); 15m keeps it firing
long enough to be seen, then it resolves. */ -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshEventsDropped"
    "counted" (dict "series" "shopmesh_events_dropped_total{__selector__}" "window" "15m" "by" "consumer")
    "for" "0m" "severity" "critical"
    "summary" (printf "%s: a consumer lost events it could not park" $c.name)
    "description" "Consumer {{ $labels.consumer }} dropped {{ $value | humanize }} event(s) in the last 15 minutes: after its last attempt NATS refused even a dead letter without the payload (DEADLETTER's max message size, or the letter's headers over max_payload), so each was acknowledged unapplied and is on no dead-letter stream. Each is logged at ERROR (`dropped event`) with its event id, subject, stream and sequence: fetch it from its stream before that stream's max age removes it, fix the limit, and have it applied (docs/operations.md, ShopmeshEventsDropped).") -}}
{{- /* Events its stream deleted before the consumer acknowledged them (discard old, or max age): paged at the first
as ShopmeshEventsDropped is. */ -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshEventsLost"
    "counted" (dict "series" "shopmesh_events_lost_total{__selector__}" "window" "15m" "by" "consumer")
    "for" "0m" "severity" "critical"
    "summary" (printf "%s: a stream deleted events a consumer had not applied" $c.name)
    "description" "The stream of consumer {{ $labels.consumer }} deleted {{ $value | humanize }} message(s) in the last 15 minutes before the consumer acknowledged them: a size limit under discard old (set live, before the publisher made it discard new) or the stream's max age removed them, and they are never applied (no e-mail, no recommendation). The consumer's ERROR log (`lost ... event(s) of stream`) names the stream and the sequences. Make the stream discard new, then have the events published again from their service's data (docs/operations.md, ShopmeshEventsLost). Blind spot: a consumer of some of the stream's subjects whose service was down past the max age counts nothing (its deleted messages cannot be told from the others').") -}}
{{- end -}}
{{- if $c.httpApi.enabled -}}
{{- /* The http-api Envoy's answers over 5 minutes that failed: 5xx, or cut at the edge's bound (a hung gateway:
a gRPC or gRPC-Web call's DEADLINE_EXCEEDED is HTTP 200, and no gateway counter sees the call). An HTTP/JSON
request is transcoded and routed again as the method's gRPC call, so its route's max_stream_duration cuts it
too: a 504 "downstream duration timeout" (max_duration_timeout), counted as a 5xx and as cut, a failure either
way; the route's own timeout is not what ends it (tests/k8s/test_http_api.py, against a real Envoy). Not
rq_rx_reset: it counts every reset stream, a client's malformed HTTP/2 and the overload manager's
reset_high_memory_stream as much as a client giving up, and a client's mistake must not page. Nor rq_total minus
rq_completed: that holds the requests still in flight too, and a slow but answered request is no failure. */ -}}
{{- $requests := printf "__selector__, %s" `envoy_http_conn_manager_prefix="http_api"` -}}
{{- $answered := printf "sum(increase(envoy_http_downstream_rq_xx{%s}[5m]))" $requests -}}
{{- $failed := printf "sum(increase(envoy_http_downstream_rq_xx{%s, envoy_response_code_class=\"5\"}[5m])) + sum(increase(envoy_http_downstream_rq_max_duration_reached{%s}[5m]))" $requests $requests -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshHttpApiErrors"
    "expr" (printf "(%s) / %s > %v" $failed $answered $m.errorRatio)
    "for" "5m" "severity" "critical"
    "summary" (printf "%s: HTTP/JSON requests failing" $c.name)
    "description" (printf "More than %v%% of the answers of the http-api container have failed for 5 minutes: answered 5xx, or cut at the edge's 30 s bound. The service behind it fails, hangs, or cannot be reached. 5xx: HTTP/JSON requests, and gRPC-Web calls Envoy answered after the request reached the gateway (a reset's 503, a 502, a 504); gRPC calls, and gRPC-Web calls the gateway answered or the edge refused before any call (UNAVAILABLE), answer 200 with their status in grpc-status and count only when cut (ShopmeshServerErrors covers those the gateway answered). A hung gateway (stopped, deadlocked, its event loop blocked) answers nothing and counts nothing of its own: its calls end at the bound, every protocol's (an HTTP/JSON request is routed again as its gRPC call), envoy_http_downstream_rq_max_duration_reached{envoy_http_conn_manager_prefix=\"http_api\"} grows and the edge's access log says max_duration_timeout (HTTP/JSON: 504, downstream duration timeout); envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"gateway\"} shows the edge failing to reach a gateway that is not listening. Calls abandoned by their clients before any answer count nowhere here: envoy_http_downstream_rq_rx_reset shows them, beside every other reset (a client's malformed HTTP/2, the overload manager's)." (mulf $m.errorRatio 100))) -}}
{{- end -}}
{{- if $c.calls -}}
{{- $rules = append $rules (dict
    "alert" "ShopmeshCircuitOpen"
    "expr" "max by (dependency, method) (shopmesh_client_breaker_probe_failed{__selector__} > 0 and time() - shopmesh_client_breaker_probe_failed_timestamp_seconds{__selector__} < 1800)"
    "for" "5m" "severity" "warning"
    "summary" (printf "%s: circuit breaker open in front of a dependency" $c.name)
    "description" "The breaker in front of {{ $labels.dependency }}'s {{ $labels.method }} has not closed for 5 minutes since a probe call failed, no call has got through since, and a probe failed within the last 30 minutes: calls from this service to that method fail fast (UNAVAILABLE CIRCUIT_OPEN), or, if it is rarely called, the next one is a probe that decides. That method, or the whole dependency, is down or failing. It resolves 30 minutes after the last failed probe with no call since: the dependency may have come back, and a dependency still down fails the next call's probe and fires it again.") -}}
{{- end -}}
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
    {{- with $m.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  groups:
    - name: shopmesh-{{ $c.name }}
      rules:
        {{- range $rule := concat $rules $m.alerts }}
        {{- include "shopmesh-lib.alert" (dict "c" $c "rule" $rule) | nindent 8 }}
        {{- end }}
    {{- if $m.slo.enabled }}
    {{- include "shopmesh-lib.slo" . | nindent 4 }}
    {{- end }}
{{- end -}}
