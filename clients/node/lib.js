'use strict';
// Shared helpers of the lazygrpc Node.js examples: proto loading, targets, session metadata,
// google.protobuf.Value <-> JSON, and decoding the rich error in grpc-status-details-bin.

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtoFiles = require('google-proto-files');

// protos/ of this repository: the wire contract (package lazygrpc.v1).
const LAZYGRPC_PROTOS = path.resolve(__dirname, '..', '..', 'protos');
// google/rpc/{status,error_details}.proto as published in the google-proto-files package.
const GOOGLE_PROTOS = path.dirname(googleProtoFiles.getProtoPath());

const DETAILS_TRAILER = 'grpc-status-details-bin';

function loadServices() {
  const definition = protoLoader.loadSync(
    ['lazygrpc/v1/model.proto', 'lazygrpc/v1/module.proto', 'lazygrpc/v1/broker.proto'],
    {
      keepCase: true, // field names as in the .proto: finish_reason, not finishReason
      longs: Number, // uint64 seq fits a double for any realistic stream
      enums: String, // FINISH_REASON_STOP, not 1
      defaults: true,
      oneofs: true, // Event.body says which of delta / intermediate / result is set
      includeDirs: [LAZYGRPC_PROTOS],
    },
  );
  return grpc.loadPackageDefinition(definition).lazygrpc.v1;
}

let errorRoot = null;

// A protobufjs root holding google.rpc.Status, google.rpc.ErrorInfo and lazygrpc.v1.CallChain,
// so the binary trailer can be decoded and its Any details unpacked by type URL.
function errorTypes() {
  if (errorRoot === null) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => {
      for (const dir of [LAZYGRPC_PROTOS, GOOGLE_PROTOS]) {
        const candidate = path.join(dir, target);
        if (fs.existsSync(candidate)) return candidate;
      }
      return target; // google/protobuf/*.proto: protobufjs ships these
    };
    root.loadSync(
      ['google/rpc/status.proto', 'google/rpc/error_details.proto', 'lazygrpc/v1/chain.proto'],
      { keepCase: true },
    );
    errorRoot = root;
  }
  return errorRoot;
}

// "grpc://127.0.0.1:50051/echo" or "127.0.0.1:50051" -> { address, path }.
function parseTarget(text) {
  const rest = text.startsWith('grpc://') ? text.slice('grpc://'.length) : text;
  const slash = rest.indexOf('/');
  if (slash < 0) return { address: rest, path: '' };
  return { address: rest.slice(0, slash), path: rest.slice(slash + 1) };
}

// Request metadata lazygrpc reads: the session id and the session globals as W3C baggage
// entries `lazy.KEY=<percent-encoded JSON>`.
function sessionMetadata({ session, globals }) {
  const md = new grpc.Metadata();
  if (session) md.set('lazy-session-id', session);
  const entries = Object.entries(globals || {}).map(
    ([key, value]) => `lazy.${key}=${encodeURIComponent(JSON.stringify(value))}`,
  );
  if (entries.length) md.set('baggage', entries.join(','));
  return md;
}

// Parse `--flag value` / `--flag=value` options; returns { positional, options }.
// `multi` names flags that may repeat (collected into arrays); `booleans` take no value.
function parseArgs(argv, { booleans = [], multi = [] } = {}) {
  const positional = [];
  const options = {};
  for (const name of multi) options[name] = [];
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--') || arg === '--') {
      positional.push(arg);
      continue;
    }
    let name = arg.slice(2);
    let value;
    const eq = name.indexOf('=');
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    } else if (booleans.includes(name)) {
      value = true;
    } else {
      i += 1;
      if (i >= argv.length) throw new Error(`option --${name} needs a value`);
      value = argv[i];
    }
    if (multi.includes(name)) options[name].push(value);
    else options[name] = value;
  }
  return { positional, options };
}

// `--global k=v` values: JSON when the value parses as JSON, else the text itself.
function parseGlobals(pairs) {
  const out = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new Error(`--global ${JSON.stringify(pair)} must look like KEY=VALUE`);
    out[pair.slice(0, eq)] = jsonOrText(pair.slice(eq + 1));
  }
  return out;
}

function jsonOrText(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// Plain JSON value -> google.protobuf.Value. The well-known types come from protobufjs's
// bundled definitions, whose field names are camelCase even with `keepCase: true`.
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === 'object') return { structValue: toStruct(value) };
  throw new TypeError(`cannot send ${typeof value} as google.protobuf.Value`);
}

function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object || {})) fields[key] = toValue(value);
  return { fields };
}

// google.protobuf.Value as decoded with `oneofs: true` (`kind` names the set field) -> JSON.
function fromValue(v) {
  if (!v || !v.kind) return null;
  const inner = v[v.kind];
  switch (v.kind) {
    case 'structValue':
      return fromStruct(inner);
    case 'listValue':
      return ((inner && inner.values) || []).map(fromValue);
    case 'nullValue':
      return null;
    default:
      return inner; // numberValue, stringValue, boolValue
  }
}

function fromStruct(s) {
  const out = {};
  for (const [key, value] of Object.entries((s && s.fields) || {})) out[key] = fromValue(value);
  return out;
}

function timestampToIso(ts) {
  if (!ts) return null;
  const millis = Number(ts.seconds) * 1000 + Math.floor(Number(ts.nanos || 0) / 1e6);
  return new Date(millis).toISOString();
}

// A failed call's error as one JSON-ready object: status code and message, the ErrorInfo,
// and the CallChain frames (entry first, failure point last). Works without details too.
function decodeError(err) {
  const out = {
    code: grpc.status[err.code] || String(err.code),
    message: err.details || err.message,
    reason: null,
    domain: null,
    metadata: {},
    elided_frames: 0,
    frames: [],
  };
  const raw = err.metadata ? err.metadata.get(DETAILS_TRAILER) : [];
  if (!raw.length) return out;
  const root = errorTypes();
  const status = root.lookupType('google.rpc.Status').decode(raw[0]);
  out.message = status.message || out.message;
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    if (typeName === 'google.rpc.ErrorInfo') {
      const info = root.lookupType(typeName).decode(any.value);
      out.reason = info.reason;
      out.domain = info.domain;
      out.metadata = { ...info.metadata };
    } else if (typeName === 'lazygrpc.v1.CallChain') {
      const chain = root.lookupType(typeName).toObject(
        root.lookupType(typeName).decode(any.value),
        { defaults: true, longs: Number },
      );
      out.elided_frames = chain.elided_frames;
      out.frames = chain.frames.map((f) => ({ ...f, time: timestampToIso(f.time) }));
    }
  }
  return out;
}

// `gateway.answer → retriever.search: ValueError: bad query` (as Python's RemoteError prints)
function chainSummary(error) {
  if (!error.frames.length) return `${error.code}: ${error.message}`;
  const path = error.frames.map((f) => `${f.service}.${f.method}`).join(' → ');
  const last = error.frames[error.frames.length - 1];
  return `${path}: ${last.error_type}: ${last.message}`;
}

// Print a failed call: the JSON object on stdout, a readable chain on stderr; exit code 1.
function reportError(err) {
  const error = decodeError(err);
  error.chain = chainSummary(error);
  process.stdout.write(`${JSON.stringify({ error })}\n`);
  process.stderr.write(`error: ${error.chain}\n`);
  error.frames.forEach((f, i) => {
    process.stderr.write(
      `  ${i + 1}. ${f.service}.${f.method} (${f.host}:${f.pid}) ${f.error_type}: ${f.message}\n`,
    );
  });
  process.exitCode = 1;
}

function usage(text) {
  process.stderr.write(`${text}\n`);
  process.exit(2);
}

module.exports = {
  chainSummary,
  decodeError,
  fromValue,
  grpc,
  jsonOrText,
  loadServices,
  parseArgs,
  parseGlobals,
  parseTarget,
  reportError,
  sessionMetadata,
  toStruct,
  toValue,
  usage,
};
