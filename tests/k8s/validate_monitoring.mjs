// Validate ServiceMonitor and PrometheusRule objects against the Prometheus Operator's CRD schemas
// (@kubernetes-models/prometheus-operator, installed into .tools by `make k8s-tools`).
// stdin: a JSON array of objects; stdout: a JSON array of "Kind/name: problem" lines (empty: all valid).
// Usage: node tests/k8s/validate_monitoring.mjs <.tools dir> < objects.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const tools = process.argv[2];
const v1 = join(tools, "node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const models = await import(pathToFileURL(v1).href);
const problems = [];
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  const Model = models[object.kind];
  if (Model === undefined) {
    problems.push(`${object.kind}/${object.metadata?.name}: not a monitoring.coreos.com/v1 kind`);
    continue;
  }
  try {
    new Model(object).validate();
  } catch (error) {
    problems.push(`${object.kind}/${object.metadata?.name}: ${error.message}`);
  }
}
process.stdout.write(JSON.stringify(problems));
