#!/usr/bin/env python3
"""Serve a fakepve lab for labops' demo, tests and benchmarks, with a fault-injection channel.

    python3 testkit/fakepve_lab.py --guests ../shared/reference/homelab/fakepve-lab.json \
        --dir .demo/pve --port 0 [--token 'root@pam!labops=SECRET'] [--generate 50x20]

Starts fakepve (the PyPI package) on 127.0.0.1 with a certificate written to DIR/fakepve.crt,
registers API tokens (fakepve's HTTP token endpoint registers nothing), and prints one JSON line on
stdout once it listens: {"url", "cafile", "control", "password", "pid"}.

The control channel is plain HTTP on 127.0.0.1 (never exposed): POST /call with
{"method": NAME, "args": [...], "kwargs": {...}} runs one of fakepve's scenario methods
(set_node_offline, lose_quorum, regain_quorum, fail, slow_network, flaky_network,
revoke_tickets, hold_config_lock, ...) on the live fake; POST /reset clears injected failures and
network trouble; GET /state answers {"nodes", "guests", "writes"} for assertions.
"""

import argparse
import asyncio
import json
import urllib.parse
import os
import sys

from aiohttp import web
from fakepve import FakePve
from fakepve.certs import make_cert

ALLOWED = {
    'set_node_offline', 'lose_quorum', 'regain_quorum', 'fail', 'slow_network', 'flaky_network',
    'revoke_tickets', 'hold_config_lock', 'release_config_lock', 'snapshot_lock', 'unlock',
}


def body_vmid(body):
    """The `vmid` a recorded request body (JSON or form) carries, or ''."""
    try:
        text = body.decode() if isinstance(body, (bytes, bytearray)) else str(body)
    except UnicodeDecodeError:
        return ''
    try:
        data = json.loads(text)
        return str(data.get('vmid', '')) if isinstance(data, dict) else ''
    except ValueError:
        return urllib.parse.parse_qs(text).get('vmid', [''])[0]


def load_guests(path, generate):
    guests = []
    if path:
        with open(path) as fh:
            guests = json.load(fh)['guests']
    if generate:
        nodes, per_node = (int(x) for x in generate.lower().split('x'))
        vmid = 1000
        for n in range(nodes):
            node = 'node-{0:02d}'.format(n + 1)
            for g in range(per_node):
                vmid += 1
                kind = 'lxc' if g % 4 == 3 else 'qemu'
                guests.append({'vmid': vmid, 'type': kind, 'node': node,
                               'name': '{0}-{1}-{2:02d}'.format('ct' if kind == 'lxc' else 'vm', node, g + 1),
                               'status': 'running' if g % 5 else 'stopped',
                               'config': {'memory': 2048, 'cores': 2}})
    return guests


def add_guests(pve, guests):
    for guest in guests:
        if guest.get('type', 'qemu') == 'lxc':
            pve.add_ct(guest['vmid'], guest.get('name'), node=guest.get('node', 'pve1'),
                       status=guest.get('status', 'stopped'), config=guest.get('config', {}))
        else:
            pve.add_vm(guest['vmid'], guest['name'], node=guest.get('node', 'pve1'),
                       status=guest.get('status', 'stopped'), config=guest.get('config', {}))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--guests', help='fakepve guests file')
    ap.add_argument('--generate', help='NODESxGUESTS: add a generated lab (50x20 = 1,000 guests)')
    ap.add_argument('--dir', required=True, help='where to write the certificate')
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--password', default='secret')
    ap.add_argument('--token', action='append', default=[], help='USER@REALM!ID=SECRET to register')
    ap.add_argument('--time-scale', type=float, default=0.0)
    args = ap.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    certfile, keyfile, _ = make_cert(args.dir, hosts=(args.host,))
    pve = FakePve(user='root@pam', password=args.password, host=args.host, port=args.port)
    pve.time_scale = args.time_scale
    guests = load_guests(args.guests, args.generate)
    add_guests(pve, guests)
    # fakepve seeds a node 'pve1'; a lab file describes the whole cluster, so drop seeded nodes
    # that hold none of its guests.
    used = {g.get('node', 'pve1') for g in guests}
    for node in [n for n in pve.nodes if n not in used]:
        del pve.nodes[node]
    for t in args.token:
        tokenid, _, secret = t.partition('=')
        pve.apitokens[tokenid] = secret
    await pve.start(certfile, keyfile)
    os.remove(keyfile)

    async def call(request):
        body = await request.json()
        name = body.get('method')
        if name not in ALLOWED:
            return web.json_response({'error': 'method not allowed: {0!r}; allowed: {1}'.format(
                name, sorted(ALLOWED))}, status=400)
        result = getattr(pve, name)(*body.get('args', []), **body.get('kwargs', {}))
        if asyncio.iscoroutine(result):
            result = await result
        return web.json_response({'ok': True})

    async def reset(request):
        pve.failures.clear()
        pve.network.update(latency=0.0, jitter=0.0, node_latency={}, drop_rate=0.0, hang_rate=0.0)
        pve.quorate = True
        for state in pve.nodes.values():
            state['online'] = True
        return web.json_response({'ok': True})

    async def state(request):
        guests = [{'vmid': g.vmid, 'name': g.name, 'node': g.node, 'status': g.status,
                   'type': 'qemu' if g in pve.vms else 'lxc', 'snapshots': sorted(g.snapshots),
                   'config': {k: v for k, v in g.config.items() if isinstance(v, (str, int, float, bool))}}
                  for g in list(pve.vms) + list(pve.cts)]
        # Every request that could change something, in order: tests count side effects with it.
        writes = [[m, p, body_vmid(b)] for (m, p, b) in pve.requests if m != 'GET']
        return web.json_response({'nodes': pve.nodes, 'guests': guests, 'requests': len(pve.requests),
                                  'writes': writes})

    app = web.Application()
    app.router.add_post('/call', call)
    app.router.add_post('/reset', reset)
    app.router.add_get('/state', state)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0)
    await site.start()
    control = 'http://127.0.0.1:{0}'.format(runner.addresses[0][1])
    print(json.dumps({'url': pve.url, 'cafile': certfile, 'control': control, 'password': args.password,
                      'pid': os.getpid()}), flush=True)
    await asyncio.Event().wait()


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
