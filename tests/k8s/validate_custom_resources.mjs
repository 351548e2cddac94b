// Validate custom resources against their projects' CRD schemas, as published on npm by kubernetes-models
// (installed into .tools by `make k8s-tools`): the Prometheus Operator's, Istio's and the Gateway API's.
// stdin: a JSON array of objects; stdout: a JSON array of "Kind/name: problem" lines (empty: all valid).
// Usage: node tests/k8s/validate_custom_resources.mjs <.tools dir> < objects.json
//
// The packages' validators check types, enums, patterns and required fields, but accept unknown fields
// (a misspelled key would pass here and be refused by `kubectl apply`, which validates strictly). So the
// fields are also checked against the package's TypeScript declaration of the kind (<Kind>.d.ts), the
// same schema written as types: every key of the object must be declared there.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const tools = process.argv[2];
const PACKAGES = {
  "monitoring.coreos.com": "prometheus-operator",
  "networking.istio.io": "istio",
  "security.istio.io": "istio",
  "telemetry.istio.io": "istio",
  "gateway.networking.k8s.io": "gateway-api",
};

// --- the declared fields, from <Kind>.d.ts ------------------------------------------------------------
// A node is LEAF (a scalar), ANY (a named type declared elsewhere, e.g. IObjectMeta: not checked here),
// {props: Map, index: node|null} (an object; index: the value type of `[key: string]: ...`) or {items}.
const LEAF = { leaf: true };
const ANY = { any: true };

function tokenize(text) {
  const source = text.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/[^\n]*/g, " ");
  return source.match(/"(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$.]*|-?\d+(?:\.\d+)?|[{}<>()[\]:;?|&,]/g) ?? [];
}

function merge(a, b) {
  if (a === ANY || b === ANY) return ANY;
  if (a === LEAF) return b;
  if (b === LEAF) return a;
  if (a.items && b.items) return { items: merge(a.items, b.items) };
  if (a.props && b.props) {
    const props = new Map(a.props);
    for (const [key, node] of b.props) props.set(key, props.has(key) ? merge(props.get(key), node) : node);
    const index = a.index && b.index ? merge(a.index, b.index) : (a.index ?? b.index);
    return { props, index };
  }
  return ANY; // an object or a scalar: do not guess
}

function parser(tokens, start, resolve) {
  let at = start;
  const next = () => tokens[at++];
  const peek = () => tokens[at];
  const expect = (token) => {
    const got = next();
    if (got !== token) throw new Error(`expected ${token}, got ${got} at token ${at}`);
  };
  function type() {
    let node = primary();
    while (peek() === "|" || peek() === "&") {
      next();
      node = merge(node, primary());
    }
    return node;
  }
  function primary() {
    const token = next();
    if (token === "(") {
      const node = type();
      expect(")");
      return node;
    }
    if (token === "{") return body();
    if (token === "Array") {
      expect("<");
      const items = type();
      expect(">");
      return { items };
    }
    if (peek() === "<") {
      // A generic such as Exclude<A, B> (how the declarations write oneOf/not): A's fields.
      next();
      const args = [type()];
      while (peek() === ",") {
        next();
        args.push(type());
      }
      expect(">");
      return ["Exclude", "Partial", "Required", "Readonly"].includes(token) ? args[0] : ANY;
    }
    if (token.startsWith('"') || /^-?\d/.test(token) || ["string", "number", "boolean", "null", "true", "false"].includes(token)) {
      return LEAF;
    }
    return resolve(token); // a named type: declared in another file of the package, or not checked
  }
  function body() {
    const props = new Map();
    let index = null;
    while (peek() !== "}") {
      if (peek() === "[") {
        while (next() !== "]");
        expect(":");
        index = type();
      } else {
        const key = next().replace(/^"|"$/g, "");
        if (peek() === "?") next();
        expect(":");
        props.set(key, type());
      }
      if (peek() === ";" || peek() === ",") next();
    }
    expect("}");
    return { props, index };
  }
  return { type, body, next, peek };
}

// The fields of a declaration file's interface (with what it extends), following the package's own
// relative imports (gateway-api declares each type in a file of its own; Istio's are inline).
const declarations = new Map();
function declaredFields(file) {
  if (declarations.has(file)) return declarations.get(file);
  declarations.set(file, ANY); // a type that refers to itself: stop there
  const tokens = tokenize(readFileSync(file, "utf8"));
  const imports = new Map();
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i] !== "import" || tokens[i + 1] !== "{") continue;
    const names = [];
    for (i += 2; tokens[i] !== "}"; i++) if (tokens[i] !== ",") names.push(tokens[i]);
    const from = tokens[i + 2]?.replace(/^"|"$/g, "");
    if (from?.startsWith("./")) for (const name of names) imports.set(name, join(dirname(file), from.replace(/\.js$/, ".d.ts")));
  }
  const resolve = (name) => (imports.has(name) && existsSync(imports.get(name)) ? declaredFields(imports.get(name)) : ANY);
  let node = LEAF;
  const at = tokens.findIndex((t, i) => t === "interface" && tokens[i - 1] === "export");
  if (at >= 0) {
    const p = parser(tokens, at + 2, resolve);
    let bases = [];
    if (p.peek() === "extends") {
      p.next();
      while (p.peek() !== "{") {
        const base = p.next();
        if (base !== ",") bases.push(resolve(base));
      }
    }
    p.next(); // {
    node = bases.reduce((acc, base) => (base === ANY ? acc : merge(acc, base)), p.body());
  } else {
    const alias = tokens.findIndex((t, i) => t === "type" && tokens[i - 1] === "export" && tokens[i + 2] === "=");
    if (alias >= 0) node = parser(tokens, alias + 3, resolve).type();
  }
  declarations.set(file, node);
  return node;
}

function unknownFields(value, node, path, found) {
  if (node === ANY || node === LEAF || value === null || typeof value !== "object") return found;
  if (node.items) {
    if (Array.isArray(value)) value.forEach((item, i) => unknownFields(item, node.items, `${path}[${i}]`, found));
    return found;
  }
  if (Array.isArray(value)) return found;
  for (const [key, child] of Object.entries(value)) {
    const declared = node.props.get(key) ?? node.index;
    if (declared === undefined || declared === null) found.push(`${path}.${key}: unknown field`);
    else unknownFields(child, declared, `${path}.${key}`, found);
  }
  return found;
}

// --- validation ---------------------------------------------------------------------------------------
const problems = [];
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const [group, version] = String(object.apiVersion).split("/");
  const pkg = PACKAGES[group];
  const folder = pkg && join(tools, "node_modules/@kubernetes-models", pkg, group, version ?? "");
  if (!folder || !existsSync(join(folder, "index.js"))) {
    problems.push(`${name}: no schema for ${object.apiVersion}`);
    continue;
  }
  const Model = (await import(pathToFileURL(join(folder, "index.js")).href))[object.kind];
  if (Model === undefined) {
    problems.push(`${name}: not a ${object.apiVersion} kind`);
    continue;
  }
  try {
    new Model(object).validate();
  } catch (error) {
    problems.push(`${name}: ${error.message}`);
  }
  const fields = declaredFields(join(folder, `${object.kind}.d.ts`));
  for (const problem of unknownFields(object, fields, "", [])) problems.push(`${name}: ${problem.slice(1)}`);
}
process.stdout.write(JSON.stringify(problems));
