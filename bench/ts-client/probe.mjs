import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
const [cmd, ...args] = process.argv.slice(2);
const n = 1000;
async function series(client, label, f) {
  for (let i = 0; i < 50; i++) await f();
  const t = [];
  for (let i = 0; i < n; i++) { const t0 = performance.now(); await f(); t.push(performance.now() - t0); }
  t.sort((a, b) => a - b);
  console.log(label, 'p50', t[n >> 1].toFixed(3), 'p90', t[Math.floor(n * 0.9)].toFixed(3));
}
for (const list of [false, true]) {
  const transport = new StdioClientTransport({ command: cmd, args, stderr: 'ignore' });
  const client = new Client({ name: 'probe', version: '0' });
  await client.connect(transport);
  if (list) await client.listTools();
  await new Promise((r) => setTimeout(r, 1500));
  await series(client, `listTools=${list} ping`, () => client.ping());
  await series(client, `listTools=${list} list vm`, () => client.callTool({ name: 'list_entities', arguments: { kind: 'vm' } }));
  await series(client, `listTools=${list} node`, () => client.callTool({ name: 'list_entities', arguments: { node: process.env.NODE_NAME || 'chief-horse', kind: 'vm' } }));
  await client.close();
}
