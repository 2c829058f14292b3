// Validate PodMonitor objects against the Prometheus Operator schema.
// Usage: node validate_podmonitors.mjs <node_modules dir>  (JSON list of objects on stdin)
// Prints one line per object, "ok NAME" or "invalid NAME: errors", and exits 1 if any is invalid.
import path from "node:path";
import { pathToFileURL } from "node:url";
import fs from "node:fs";

const nodeModules = process.argv[2];
const modulePath = path.join(nodeModules, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor.js");
const { PodMonitor } = await import(pathToFileURL(modulePath).href);

const objects = JSON.parse(fs.readFileSync(0, "utf8"));
let failed = 0;
for (const object of objects) {
  const name = object?.metadata?.name ?? "(unnamed)";
  try {
    new PodMonitor(object).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    failed += 1;
    const details = error.errors ? JSON.stringify(error.errors) : String(error);
    console.log(`invalid ${name}: ${details}`);
  }
}
process.exit(failed ? 1 : 0);
