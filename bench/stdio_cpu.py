#!/usr/bin/env python3
"""labops' own cost per MCP call over stdio: latency and CPU per thread, with a bare client.

    $LABOPS_TEST_ENV/venv/bin/python bench/stdio_cpu.py [--lab ref|50x20] [--calls 2000]
        [--gap 0.004] [--tool list_entities] [--args '{"kind": "vm"}']

Starts a fakepve lab (testkit/fakepve_lab.py) and `labops mcp` against it (target/release/labops,
LABOPS_BENCH_BIN to override), then sends `ping` and the tool call --calls times each through a
bare JSON-RPC client (bench/peers.py's RawStdio: no SDK, the answer line is not decoded), waiting
--gap seconds between calls (0 for back to back; a few ms leaves the caches as cold as when an
MCP client's turns come between). Prints p50/p90 latency and the CPU time each labops thread
(from /proc/PID/task) spent per call, which shows work done off the answer's path (the audit
writer and SQLite's worker thread) as well as on it (`mcp-stdio`).
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import peers  # noqa: E402


def thread_cpu_ms(pid):
    tick = os.sysconf('SC_CLK_TCK')
    out = {}
    for tid in os.listdir('/proc/{0}/task'.format(pid)):
        try:
            stat = open('/proc/{0}/task/{1}/stat'.format(pid, tid)).read()
        except OSError:
            continue
        name = stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat.rsplit(')', 1)[1].split()
        out['{0} {1}'.format(name, tid)] = (int(fields[11]) + int(fields[12])) * 1000.0 / tick
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--lab', default='ref', choices=sorted(peers.LABS))
    ap.add_argument('--calls', type=int, default=2000)
    ap.add_argument('--gap', type=float, default=0.004)
    ap.add_argument('--tool', default='list_entities')
    ap.add_argument('--args', default='{"kind": "vm"}')
    opts = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix='labops-stdio-cpu-'))
    lab = peers.start_lab(opts.lab, tmp)
    client = None
    try:
        data = tmp / 'data'
        data.mkdir()
        cfg = peers.labops_config(lab, data)
        client = peers.RawStdio(peers.LABOPS, ['--config', str(cfg), 'mcp'], {}, tmp, open(tmp / 'labops.log', 'w'))
        client.rpc('initialize', {'protocolVersion': '2025-06-18', 'capabilities': {},
                                  'clientInfo': {'name': 'labops-stdio-cpu', 'version': '0'}})
        client.rpc('notifications/initialized', notify=True)
        time.sleep(2)  # the first refresh
        call = ('tools/call', {'name': opts.tool, 'arguments': json.loads(opts.args)})
        for _ in range(50):
            client.rpc(*call, parse=False)
        for label, req in (('ping', ('ping', None)), (opts.tool, call)):
            before, lat = thread_cpu_ms(client.proc.pid), []
            for _ in range(opts.calls):
                t0 = time.perf_counter()
                client.rpc(*req, parse=False)
                lat.append((time.perf_counter() - t0) * 1000)
                if opts.gap:
                    time.sleep(opts.gap)
            after = thread_cpu_ms(client.proc.pid)
            lat.sort()
            per_thread = {k: round((v - before.get(k, 0.0)) / opts.calls, 3) for k, v in after.items() if v > before.get(k, 0.0)}
            print('{0:<16} p50 {1:.3f} ms  p90 {2:.3f} ms  CPU per call: {3:.3f} ms {4}'.format(
                label, lat[len(lat) // 2], lat[int(len(lat) * 0.9)], sum(per_thread.values()), per_thread))
    finally:
        if client:
            client.close()
        peers.stop(lab['proc'].pid)


if __name__ == '__main__':
    main()
