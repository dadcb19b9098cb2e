// deploy/validate.mjs: validates Kubernetes objects against the Kubernetes
// API schemas, with the npm package kubernetes-models (pinned by the
// repository's package-lock.json; installed by scripts/install-deps.sh).
// deploy/check.py runs it on every object each overlay and each example
// renders to.
//
// Two checks per object, both from the library, none hand-written:
//   schema  the model's validate(): types, required fields, enums, formats,
//           as the OpenAPI schema of the Kubernetes release the library
//           was generated from says;
//   fields  no field the API does not define. The generated JSON schemas
//           allow unknown properties (the API server drops them, or refuses
//           them under strict field validation), so a misspelt field would
//           pass validate(); the field names are read from the same
//           package's type declarations (one interface per API type, one
//           quoted property per line, types imported by name), walking the
//           object along its types.
//
// Input on stdin: {"<label>": [object, ...], ...} as JSON. Output: one line
// per problem, "<label> <Kind>/<name>: <path>: <message>"; exit 1 if any.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(process.env.FERRY_SOURCE_DIR || path.resolve(here, '..'),
  'node_modules');

// "apps/v1" -> "apps/v1", "v1" -> "v1": the library's folder of a group
// version.
function groupDir(apiVersion) {
  return path.join(modules, 'kubernetes-models', apiVersion);
}

// ---- type declarations ------------------------------------------------------

const files = new Map(); // .d.ts path -> {interfaces, names}

// One declaration file: its interfaces (name -> {prop -> type text}) and
// the names it can resolve (imported or aliased name -> [file, interface]).
function parseDecl(file) {
  if (files.has(file)) return files.get(file);
  const text = fs.readFileSync(file, 'utf8');
  const interfaces = new Map();
  const names = new Map();
  for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    names.set(m[1], [resolveSpecifier(file, m[2]), null]);
  }
  for (const m of text.matchAll(/^export type \{ (\w+) as (\w+)/gm)) {
    names.set(m[2], [file, m[1]]);
  }
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const head = lines[i].match(/^export interface (\w+)(?: extends [\w, ]+)? \{$/);
    if (!head) continue;
    const props = new Map();
    for (i++; i < lines.length && lines[i] !== '}'; i++) {
      const p = lines[i].match(/^ {4}"([^"]+)"\??: (.*)$/);
      if (!p) continue;
      let type = p[2];
      if (type === '{') {
        // A map: "{", "[key: string]: T;", "};"
        const v = lines[i + 1].match(/^\s+\[key: string\]: (.*);$/);
        type = v ? `Map<${v[1]}>` : 'unknown';
      } else if (type === 'Array<{') {
        type = 'unknown';
      }
      props.set(p[1], type.replace(/;$/, ''));
    }
    interfaces.set(head[1], props);
  }
  const decl = { interfaces, names };
  files.set(file, decl);
  return decl;
}

function resolveSpecifier(from, spec) {
  const base = spec.startsWith('.') ? path.resolve(path.dirname(from), spec)
    : path.join(modules, spec);
  return base.replace(/\.js$/, '') + '.d.ts';
}

// The properties of the type a name stands for in a file, or null for a
// type without properties (string, IntOrString, Quantity, JSON, ...).
function propsOf(file, name) {
  const decl = parseDecl(file);
  if (decl.interfaces.has(name)) return [file, decl.interfaces.get(name)];
  const target = decl.names.get(name);
  if (!target) return null;
  const [tfile, tname] = target;
  if (!fs.existsSync(tfile)) return null;
  if (tname) return propsOf(tfile, tname);
  const tdecl = parseDecl(tfile);
  // Imported by its long name: the target file aliases it.
  return tdecl.names.has(name) || tdecl.interfaces.has(name) ? propsOf(tfile, name) : null;
}

// Walks value along type (text) declared in file; reports unknown fields.
function walk(value, type, file, where, report) {
  let m = type.match(/^Array<(.*)>$/);
  if (m) {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, m[1], file, `${where}[${i}]`, report));
    return;
  }
  m = type.match(/^Map<(.*)>$/);
  if (m) {
    if (value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) walk(v, m[1], file, `${where}.${k}`, report);
    }
    return;
  }
  if (!/^\w+$/.test(type) || value === null || typeof value !== 'object' || Array.isArray(value)) {
    return;
  }
  const found = propsOf(file, type);
  if (!found) return;
  const [tfile, props] = found;
  for (const [k, v] of Object.entries(value)) {
    const path_ = where ? `${where}.${k}` : k;
    if (!props.has(k)) {
      report(path_, `unknown field "${k}" (the API defines ${[...props.keys()].sort().join(', ')})`);
      continue;
    }
    walk(v, props.get(k), tfile, path_, report);
  }
}

// ---- objects ----------------------------------------------------------------

async function check(obj, report) {
  const { apiVersion, kind } = obj;
  const dir = typeof apiVersion === 'string' ? groupDir(apiVersion) : null;
  const decl = dir && typeof kind === 'string' ? path.join(dir, `${kind}.d.ts`) : null;
  if (!decl || !/^[A-Za-z]\w*$/.test(kind) || !fs.existsSync(decl)) {
    report('', `no Kubernetes API type ${apiVersion}/${kind}`);
    return;
  }
  const mod = await import(path.join(dir, 'index.js'));
  try {
    new mod[kind](obj).validate();
  } catch (e) {
    for (const err of e.errors || [{ instancePath: '', message: e.message }]) {
      const where = err.instancePath.replace(/^\//, '').replaceAll('/', '.');
      const extra = err.params && err.params.allowedValues
        ? ` (${err.params.allowedValues.join(', ')})` : '';
      report(where, `${err.message}${extra}`);
    }
  }
  walk(obj, `I${kind}`, decl, '', report);
}

const input = JSON.parse(fs.readFileSync(0, 'utf8'));
let problems = 0;
let checked = 0;
for (const [label, objs] of Object.entries(input)) {
  for (const obj of objs) {
    const name = `${obj.kind || '?'}/${(obj.metadata && obj.metadata.name) || '?'}`;
    checked++;
    await check(obj, (where, msg) => {
      problems++;
      console.log(`${label} ${name}: ${where || '(object)'}: ${msg}`);
    });
  }
}
console.error(`deploy/validate: ${checked} objects, ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
