#!/usr/bin/env python3
"""A loopback reverse proxy that adds `Authorization: Bearer TOKEN` to every request.

The MCP conformance suite sends no token; rather than weaken labops' auth, the test harness puts
this proxy in front of `labops serve`. Everything else (Host header included, so DNS-rebinding
checks still see the client's Host) is passed through, and responses stream (SSE).

    python3 token_proxy.py --listen-port 0 --upstream http://127.0.0.1:8080 --token-file FILE
prints the port it listens on, then serves until killed.
"""

import argparse
import asyncio

import aiohttp
from aiohttp import web

HOP = {'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailers',
       'transfer-encoding', 'upgrade', 'content-length'}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--listen-port', type=int, default=0)
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--token-file', required=True)
    args = ap.parse_args()
    token = open(args.token_file).read().strip()
    session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))

    async def handle(request):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers['Authorization'] = 'Bearer ' + token
        body = await request.read()
        async with session.request(request.method, args.upstream + request.path_qs, headers=headers,
                                   data=body, allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=16 * 1024 ** 2)
    app.router.add_route('*', '/{tail:.*}', handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', args.listen_port)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == '__main__':
    asyncio.run(main())
