#!/usr/bin/env node
'use strict';
// Stream lazygrpc.v1.ModelService/Generate and print each chunk as it arrives, one JSON line
// per chunk: {"index", "text", "finish_reason", "usage"}; usage is set on the last chunk only.
//
//   node generate.js HOST:PORT "your prompt" [--session ID] [--global KEY=VALUE]...
//                    [--max-tokens N] [--timeout SECONDS]

const lib = require('./lib');

const HELP =
  'usage: node generate.js HOST:PORT PROMPT [--session ID] [--global KEY=VALUE]... ' +
  '[--max-tokens N] [--timeout SECONDS]';

function main() {
  let args;
  try {
    args = lib.parseArgs(process.argv.slice(2), { multi: ['global'] });
  } catch (e) {
    return lib.usage(`${e.message}\n${HELP}`);
  }
  const [target, prompt] = args.positional;
  if (!target || prompt === undefined) return lib.usage(HELP);
  const opts = args.options;
  const { address } = lib.parseTarget(target);

  const v1 = lib.loadServices();
  const client = new v1.ModelService(address, lib.grpc.credentials.createInsecure());
  // Session globals travel as W3C baggage: this sends `baggage: lazy.user=%22node%22`.
  const metadata = lib.sessionMetadata({
    session: opts.session || `node-${process.pid}-${Date.now()}`,
    globals: { user: 'node', ...lib.parseGlobals(opts.global) },
  });
  const request = { input: prompt, params: {} };
  if (opts['max-tokens'] !== undefined) request.params.max_tokens = Number(opts['max-tokens']);
  const callOptions = {};
  if (opts.timeout !== undefined) {
    callOptions.deadline = new Date(Date.now() + Number(opts.timeout) * 1000);
  }

  const call = client.Generate(request, metadata, callOptions);
  call.on('data', (chunk) => {
    const line = {
      index: chunk.index,
      text: chunk.text,
      finish_reason: chunk.finish_reason,
      usage: chunk.usage, // null except on the last chunk
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  });
  call.on('error', (err) => {
    lib.reportError(err);
    client.close();
  });
  call.on('end', () => client.close());
  return undefined;
}

main();
