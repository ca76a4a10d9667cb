// The official MCP TypeScript SDK's client over stdio, driven by bench/peers.py.
//
// Reads one JSON spec on stdin:
//   {calls, warmup, budget_s, servers: [{name, command, args, env, cwd,
//     list_all: {tool, args} | null, list_node: {tool, args} | null}]}
// opens every server at once (Client + StdioClientTransport, `listTools` first so the SDK checks
// structuredContent against each tool's outputSchema, as it does for any client), then times
// `ping`, the list-all call and the one-node call in rounds: each round calls every server once,
// in reversed order every other round, so load from elsewhere hits all alike. A series stops
// after `calls` rounds, or after `budget_s` seconds once 20 rounds are done.
// Prints one JSON object: per server, the latencies in seconds per series, the SDK's own part of
// each (the call's time minus the transport's trip, see watchWire) and the last answer of each
// listing (for peers.py to check the VM count), or the error that stopped it.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const spec = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const out = {};
const live = [];

for (const s of spec.servers) {
  out[s.name] = { series: {}, own: {}, last: {} };
  try {
    const transport = new StdioClientTransport({ command: s.command, args: s.args, env: s.env, cwd: s.cwd, stderr: 'ignore' });
    const client = new Client({ name: 'labops-bench-ts', version: '0' });
    await client.connect(transport);
    out[s.name].tools = (await client.listTools()).tools.length;
    out[s.name].pid = transport.pid;
    const t = { s, client, transport };
    watchWire(t);
    live.push(t);
  } catch (e) {
    out[s.name].error = String(e);
  }
}

// Times each request's trip through the transport (from the SDK handing the message to the
// transport until the answer line arrives, parsed) so that the SDK's own work on a call
// (building the request, validating the result and its structuredContent) is the rest.
function watchWire(t) {
  const tr = t.transport;
  const send = tr.send.bind(tr);
  tr.send = (message, options) => {
    t.sentAt = performance.now();
    return send(message, options);
  };
  const onmessage = tr.onmessage;
  tr.onmessage = (message, extra) => {
    if (message.id !== undefined && ('result' in message || 'error' in message)) t.arrivedAt = performance.now();
    onmessage?.(message, extra);
  };
}

async function call(t, key) {
  if (key === 'ping') return t.client.ping();
  const { tool, args } = t.s[key];
  const r = await t.client.callTool({ name: tool, arguments: args });
  if (r.isError) throw new Error(`${tool} failed: ${JSON.stringify(r.content).slice(0, 300)}`);
  return r;
}

for (const key of ['ping', 'list_all', 'list_node']) {
  let group = live.filter((t) => !out[t.s.name].error && (key === 'ping' || t.s[key]));
  for (const t of group) {
    try {
      for (let i = 0; i < spec.warmup; i++) await call(t, key);
      out[t.s.name].series[key] = [];
      out[t.s.name].own[key] = [];
    } catch (e) {
      out[t.s.name].error = String(e);
    }
  }
  group = group.filter((t) => !out[t.s.name].error);
  const start = performance.now();
  for (let i = 0; i < spec.calls && group.length; i++) {
    for (const t of i % 2 === 0 ? group : [...group].reverse()) {
      try {
        const t0 = performance.now();
        const r = await call(t, key);
        const t1 = performance.now();
        out[t.s.name].series[key].push((t1 - t0) / 1000);
        out[t.s.name].own[key].push((t1 - t0 - (t.arrivedAt - t.sentAt)) / 1000);
        if (key !== 'ping') out[t.s.name].last[key] = r;
      } catch (e) {
        out[t.s.name].error = String(e);
      }
    }
    group = group.filter((t) => !out[t.s.name].error);
    if ((performance.now() - start) / 1000 > spec.budget_s && i + 1 >= 20) break;
  }
}

for (const t of live) {
  try {
    await t.client.close();
  } catch (e) {
    // already gone
  }
}
process.stdout.write(JSON.stringify(out) + '\n');
