#!/usr/bin/env node
'use strict';
// Call a module through lazygrpc.v1.ModuleService with a JSON input.
//
//   node call.js HOST:PORT MODULE [INPUT_JSON] [--stream] [--kwargs JSON]
//                [--session ID] [--global KEY=VALUE]... [--timeout SECONDS]
//   node call.js grpc://HOST:PORT/MODULE [INPUT_JSON] ...
//
// Call prints {"output": VALUE}; --stream uses Stream and prints one JSON line per event
// ({"seq", "source", "kind", "value"}, kind = delta | intermediate | result).
// On error it decodes grpc-status-details-bin (google.rpc.Status with google.rpc.ErrorInfo and
// lazygrpc.v1.CallChain), prints {"error": {..., "frames": [...], "chain": "a.m → b.m: T: msg"}}
// on stdout and the chain on stderr, and exits 1.

const lib = require('./lib');

const HELP =
  'usage: node call.js HOST:PORT MODULE [INPUT_JSON] [--stream] [--kwargs JSON] ' +
  '[--session ID] [--global KEY=VALUE]... [--timeout SECONDS]';

function main() {
  let args;
  try {
    args = lib.parseArgs(process.argv.slice(2), { booleans: ['stream'], multi: ['global'] });
  } catch (e) {
    return lib.usage(`${e.message}\n${HELP}`);
  }
  const positional = [...args.positional];
  const opts = args.options;
  if (!positional.length) return lib.usage(HELP);
  const { address, path } = lib.parseTarget(positional.shift());
  const module = path || positional.shift();
  if (!module) return lib.usage(HELP);

  let kwargs = {};
  try {
    if (opts.kwargs) kwargs = JSON.parse(opts.kwargs);
  } catch (e) {
    return lib.usage(`--kwargs must be a JSON object: ${e.message}\n${HELP}`);
  }
  const request = { module, kwargs: lib.toStruct(kwargs) };
  if (positional.length) request.input = lib.toValue(lib.jsonOrText(positional[0]));
  const metadata = lib.sessionMetadata({
    session: opts.session,
    globals: lib.parseGlobals(opts.global),
  });
  const callOptions = {};
  if (opts.timeout !== undefined) {
    callOptions.deadline = new Date(Date.now() + Number(opts.timeout) * 1000);
  }

  const v1 = lib.loadServices();
  const client = new v1.ModuleService(address, lib.grpc.credentials.createInsecure());
  if (opts.stream) {
    const call = client.Stream(request, metadata, callOptions);
    call.on('data', (ev) => {
      // `body` names the oneof member that is set: delta, intermediate or result.
      const value = lib.fromValue(ev[ev.body]);
      const line = { seq: ev.seq, source: ev.source, kind: ev.body, value };
      process.stdout.write(`${JSON.stringify(line)}\n`);
    });
    call.on('error', (err) => {
      lib.reportError(err);
      client.close();
    });
    call.on('end', () => client.close());
  } else {
    client.Call(request, metadata, callOptions, (err, response) => {
      if (err) lib.reportError(err);
      else process.stdout.write(`${JSON.stringify({ output: lib.fromValue(response.output) })}\n`);
      client.close();
    });
  }
  return undefined;
}

main();
