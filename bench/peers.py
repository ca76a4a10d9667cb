#!/usr/bin/env python3
"""labops next to three Python MCP servers for Proxmox from PyPI, on the same fakepve labs.

    python3 bench/peers.py [--calls 200] [--warmup 10] [--starts 3] [--budget 180]
                           [--labs ref,50x20] [--servers labops,mcp-proxmox,...]

One run starts two fakepve labs (testkit/fakepve_lab.py): the 6-guest reference homelab
(../shared/reference/homelab/fakepve-lab.json) and a generated 50 nodes x 20 guests lab (750 VMs,
250 containers). Against each, with the official MCP Python client (`mcp`) over stdio, it measures
labops (target/release/labops, LABOPS_BENCH_BIN to override) and the peers `mcp-proxmox`,
`proxmox-mcp-server` and `proxmox-mcp-plus`:

  * time from spawn to the first complete answer (spawn -> initialize -> first list call that
    holds every VM), median of --starts fresh processes; for labops both with its SQLite store
    primed by an earlier `labops status` (its normal restart) and cold (empty data dir);
  * with every server running at once: latency of an MCP ping, of "list all VMs" and of "list the
    VMs of one node" (p50/p99 over --calls calls after --warmup), called in rounds (each round
    calls every server once), so load from elsewhere on the shared cores hits all alike; a series
    stops early after --budget seconds (the count used is recorded); the time the SDK client
    spends re-validating structuredContent against the tool's outputSchema; RSS (VmRSS) after
    the calls;
  * the same ping and listings through a bare JSON-RPC stdio client (no SDK): the servers' own time;
  * the same again through the official TypeScript SDK's client (bench/ts-client, the SDK Claude
    Code and the MCP inspector are built on; `npm ci` there when missing) and the official Rust
    SDK's client (bench/rust-client, rmcp; built when missing), all servers at once;
  * correctness probes on the reference lab: look a guest up by name (haos), and list VMs on the
    node "no-such-node";
  * fakepve's own answer time for the API requests the peers make (their floor).

The peers are installed into venvs under $LABOPS_BENCH_CACHE/<name> (default /tmp/labops-bench)
with `python3 -m venv` + `pip install NAME` when missing. Everything listens on 127.0.0.1; every
process started here is stopped by its own PID at the end. Prints the tables; writes the raw
numbers to bench/results/peers.json.
"""

import argparse
import asyncio
import contextlib
import datetime
import gc
import http.client
import json
import os
import pathlib
import platform
import re
import secrets
import select
import signal
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('LABOPS_TEST_SHARED', ROOT.parent / 'shared'))
REFERENCE = SHARED / 'reference' / 'homelab' / 'fakepve-lab.json'
LABOPS = os.environ.get('LABOPS_BENCH_BIN', str(ROOT / 'target' / 'release' / 'labops'))
CACHE = pathlib.Path(os.environ.get('LABOPS_BENCH_CACHE', '/tmp/labops-bench'))
RESULTS = ROOT / 'bench' / 'results' / 'peers.json'

TOKEN_USER, TOKEN_ID = 'root@pam', 'labops-bench'
CALL_TIMEOUT = 120.0       # one MCP call
SESSION_TIMEOUT = 1200.0   # everything on one lab

# The labs: the reference homelab, and a generated one (kind 'lxc' for every 4th guest).
LABS = {
    'ref': {'title': 'reference homelab (5 nodes, 5 VMs + 1 CT)', 'args': ['--guests', str(REFERENCE)],
            'vms': 5, 'node': 'chief-horse', 'node_vms': 1},
    '50x20': {'title': 'generated 50 nodes x 20 guests (750 VMs + 250 CTs)', 'args': ['--generate', '50x20'],
              'vms': 750, 'node': 'node-07', 'node_vms': 15},
}


# ---------------------------------------------------------------- how each server is driven

def json_text(result):
    """The first text block of a tool result, parsed as JSON."""
    return json.loads(result.content[0].text)


def count_labops(result):
    return len(result.structured_content['rows'])


def count_json_list(result):
    return len(json_text(result))


def count_qemu(result):
    return sum(1 for r in json_text(result) if r.get('type') == 'qemu')


def count_plus(result):
    return len(re.findall(r'^\[vm\] .*\(ID: \d+\)$', result.content[0].text, re.M))


def token_env(lab, **extra):
    env = {'PROXMOX_HOST': '127.0.0.1', 'PROXMOX_PORT': str(lab['port']),
           'PROXMOX_VERIFY_SSL': 'true', 'REQUESTS_CA_BUNDLE': lab['cafile']}
    env.update(extra)
    return env


SERVERS = {
    'labops': {
        'lang': 'Rust',
        'list_all': ('list_entities', lambda lab: {'kind': 'vm'}, count_labops),
        'list_node': ('list_entities', lambda lab: {'kind': 'vm', 'node': lab['node']}, count_labops),
        'probes': {
            'lookup_by_name': ('resolve', {'name': 'haos'}),
            'unknown_node': ('list_entities', {'kind': 'vm', 'node': 'no-such-node'}),
            'typo_node': ('list_entities', {'kind': 'vm', 'node': 'chief-hrose'}),
        },
    },
    'mcp-proxmox': {
        'package': 'mcp-proxmox', 'module': 'mcp_proxmox', 'entry': 'mcp-proxmox', 'lang': 'Python',
        # mcp_proxmox/config.py: PROXMOX_HOST, PROXMOX_PORT, PROXMOX_TOKEN_ID ('user@realm!id'),
        # PROXMOX_TOKEN_SECRET, PROXMOX_VERIFY_SSL (default false); API tokens only.
        'env': lambda lab: token_env(lab, PROXMOX_TOKEN_ID='{0}!{1}'.format(TOKEN_USER, TOKEN_ID),
                                     PROXMOX_TOKEN_SECRET=lab['secret']),
        # tools/discovery.py: list_vms(node=None, status=None) = GET /cluster/resources?type=vm,
        # qemu only, filtered client-side.
        'list_all': ('list_vms', lambda lab: {}, count_json_list),
        'list_node': ('list_vms', lambda lab: {'node': lab['node']}, count_json_list),
        'probes': {
            'unknown_node': ('list_vms', {'node': 'no-such-node'}),
            'guest_by_vmid': ('get_guest_status', {'vmid': 116}),
        },
        'lookup_note': 'no tool takes a guest name (every guest tool takes a VMID); the client must '
                       'list every VM and search the text itself',
    },
    'proxmox-mcp-server': {
        'package': 'proxmox-mcp-server', 'module': 'proxmox_mcp', 'entry': 'proxmox-mcp-server', 'lang': 'Python',
        # proxmox_mcp/client.py: PROXMOX_HOST, PROXMOX_PORT, PROXMOX_USER, PROXMOX_TOKEN_NAME +
        # PROXMOX_TOKEN_VALUE (or PROXMOX_PASSWORD), PROXMOX_VERIFY_SSL (default off).
        'env': lambda lab: token_env(lab, PROXMOX_USER=TOKEN_USER, PROXMOX_TOKEN_NAME=TOKEN_ID,
                                     PROXMOX_TOKEN_VALUE=lab['secret']),
        # tools/qemu.py: list_vms(node) is per node (GET /nodes/{node}/qemu); the cluster-wide VM
        # list is tools/cluster.py get_cluster_resources(type='vm') (qemu and lxc).
        'list_all': ('get_cluster_resources', lambda lab: {'type': 'vm'}, count_qemu),
        'list_node': ('list_vms', lambda lab: {'node': lab['node']}, count_json_list),
        'probes': {
            'unknown_node': ('list_vms', {'node': 'no-such-node'}),
            'unknown_node_containers': ('list_containers', {'node': 'no-such-node'}),
        },
        'lookup_note': 'no tool takes a guest name (guest tools take node + VMID); the client must '
                       'list every guest and search the text itself',
    },
    'proxmox-mcp-plus': {
        'package': 'proxmox-mcp-plus', 'module': 'proxmox_mcp', 'entry': 'proxmox-mcp-plus', 'lang': 'Python',
        # proxmox_mcp/config/loader.py (no PROXMOX_MCP_CONFIG file): PROXMOX_HOST, PROXMOX_PORT,
        # PROXMOX_USER, PROXMOX_TOKEN_NAME, PROXMOX_TOKEN_VALUE, PROXMOX_VERIFY_SSL (default true;
        # false is refused unless PROXMOX_DEV_MODE); jobs SQLite at PROXMOX_JOBS_SQLITE_PATH.
        'env': lambda lab: token_env(lab, PROXMOX_USER=TOKEN_USER, PROXMOX_TOKEN_NAME=TOKEN_ID,
                                     PROXMOX_TOKEN_VALUE=lab['secret'],
                                     PROXMOX_JOBS_SQLITE_PATH=str(lab['tmp'] / 'plus-jobs.sqlite3')),
        # tools/vm.py: get_vms() = GET /cluster/resources?type=vm, formatted as text; no node filter.
        'list_all': ('get_vms', lambda lab: {}, count_plus),
        'list_node': None,
        'probes': {
            'unknown_node': ('get_vms', {'node': 'no-such-node'}),
            'unknown_node_status': ('get_node_status', {'node': 'no-such-node'}),
        },
        'lookup_note': 'no read-only tool takes a guest name: VM tools take node + VMID; only the '
                       'container power/resize tools (start_container, ...) accept a name selector',
    },
}


# ---------------------------------------------------------------- processes

STARTED = []   # PIDs started here, stopped by PID at the end


def ppid_of(pid):
    try:
        stat = pathlib.Path('/proc/{0}/stat'.format(pid)).read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(')') + 2:].split()[1])


def children(pid):
    out = []
    for p in os.listdir('/proc'):
        if p.isdigit() and ppid_of(int(p)) == pid:
            out.append(int(p))
    return out


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def status_kb(pid, field):
    try:
        for line in pathlib.Path('/proc/{0}/status'.format(pid)).read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory(pid):
    kids = descendants(pid)
    rss = status_kb(pid, 'VmRSS')
    return {'rss_kb': rss, 'hwm_kb': status_kb(pid, 'VmHWM'), 'children': len(kids),
            'tree_rss_kb': (rss or 0) + sum(status_kb(k, 'VmRSS') or 0 for k in kids)}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return ppid_of(pid) is not None


def stop(pid, grace=3.0):
    """Stops one process started here (and its children), by PID."""
    if not alive(pid):
        return
    kids = descendants(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in [pid] + kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.time() + grace
        while time.time() < deadline and alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if not alive(pid):
            return


@contextlib.asynccontextmanager
async def spawned(command, args, env, cwd, errlog):
    """An MCP stdio session to a fresh server; yields (session, pid)."""
    before = set(children(os.getpid()))
    params = StdioServerParameters(command=command, args=args, env=env, cwd=str(cwd))
    pid = None
    try:
        async with stdio_client(params, errlog=errlog) as (read, write):
            new = [c for c in children(os.getpid()) if c not in before]
            if len(new) != 1:
                raise RuntimeError('expected one new child process, found {0}'.format(new))
            pid = new[0]
            STARTED.append(pid)
            async with ClientSession(read, write) as session:
                yield session, pid
    finally:
        if pid is not None:
            stop(pid)


# ---------------------------------------------------------------- fakepve

def start_lab(key, tmp):
    secret = secrets.token_hex(16)
    d = tmp / key
    d.mkdir()
    err = open(d / 'fakepve.log', 'w')
    proc = subprocess.Popen([sys.executable, str(ROOT / 'testkit' / 'fakepve_lab.py'), '--dir', str(d / 'pve'),
                             '--host', '127.0.0.1', '--port', '0',
                             '--token', '{0}!{1}={2}'.format(TOKEN_USER, TOKEN_ID, secret)] + LABS[key]['args'],
                            stdout=subprocess.PIPE, stderr=err, text=True)
    STARTED.append(proc.pid)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ''
    if not line:
        raise RuntimeError('fakepve ({0}) did not start; see {1}'.format(key, d / 'fakepve.log'))
    info = json.loads(line)
    lab = dict(LABS[key], key=key, url=info['url'], cafile=info['cafile'], password=info['password'],
               port=int(info['url'].rsplit(':', 1)[1]), secret=secret, tmp=d, proc=proc)
    (d / 'pw').write_text(info['password'] + '\n')
    return lab


def labops_config(lab, data_dir):
    cfg = data_dir.parent / (data_dir.name + '.toml')
    cfg.write_text('[lab]\nname = "bench {0}"\n[state]\ndata_dir = "{1}"\n[proxmox]\nurl = "{2}"\nuser = "root@pam"\n'
                   'password_file = "{3}"\nca_file = "{4}"\n'.format(lab['key'], data_dir, lab['url'],
                                                                   lab['tmp'] / 'pw', lab['cafile']))
    return cfg


def fakepve_floor(lab, path, n=50):
    """fakepve's own answer time for one API GET, over one kept-alive TLS connection."""
    ctx = ssl.create_default_context(cafile=lab['cafile'])
    conn = http.client.HTTPSConnection('127.0.0.1', lab['port'], context=ctx, timeout=60)
    hdr = {'Authorization': 'PVEAPIToken={0}!{1}={2}'.format(TOKEN_USER, TOKEN_ID, lab['secret'])}
    lat, size = [], 0
    try:
        for i in range(n + 5):
            t = time.perf_counter()
            conn.request('GET', path, headers=hdr)
            body = conn.getresponse().read()
            if i >= 5:
                lat.append(time.perf_counter() - t)
            size = len(body)
    finally:
        conn.close()
    return dict(summarize(lat), path=path, bytes=size)


# ---------------------------------------------------------------- peers' venvs

def ensure_peer(name):
    spec = SERVERS[name]
    venv = CACHE / name
    entry = venv / 'bin' / spec['entry']
    if not entry.exists():
        print('installing {0} into {1} ...'.format(spec['package'], venv), flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet',
                        '--disable-pip-version-check', spec['package']], check=True, timeout=1200)
    out = subprocess.run([str(venv / 'bin' / 'python'), '-c',
                          'import importlib.metadata as m, sys; print(m.version(sys.argv[1]), m.version("mcp"), '
                          'm.version("proxmoxer"), sys.version.split()[0])', spec['package']],
                         check=True, capture_output=True, text=True, timeout=60).stdout.split()
    return {'command': str(entry), 'args': [], 'version': out[0], 'mcp_sdk': out[1], 'proxmoxer': out[2],
            'python': out[3], 'venv': str(venv)}


# ---------------------------------------------------------------- measuring

def pct(sorted_values, q):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def summarize(lat):
    s = sorted(lat)
    ms = lambda v: None if v is None else round(v * 1000, 3)
    return {'n': len(s), 'p50_ms': ms(pct(s, 0.50)), 'p99_ms': ms(pct(s, 0.99)), 'mean_ms': ms(statistics.fmean(s)),
            'min_ms': ms(s[0]), 'max_ms': ms(s[-1])}


async def call(session, tool, args):
    with anyio.fail_after(CALL_TIMEOUT):
        return await session.call_tool(tool, args)


def answer_bytes(result):
    n = sum(len(c.text) for c in result.content if getattr(c, 'text', None) is not None)
    if result.structured_content is not None:
        n += len(json.dumps(result.structured_content))
    return n


def check(result, count, expect, tool):
    if result.is_error:
        raise RuntimeError('{0} failed: {1}'.format(tool, result.content[0].text[:300] if result.content else result))
    got = count(result)
    if got != expect:
        raise RuntimeError('{0} answered {1} VMs, expected {2}'.format(tool, got, expect))


class RawStdio:
    """A bare JSON-RPC-over-stdio client (no SDK): the server's own time plus two pipe hops."""

    def __init__(self, command, args, env, cwd, errlog):
        full = dict((k, os.environ[k]) for k in ('HOME', 'LOGNAME', 'PATH', 'SHELL', 'TERM', 'USER')
                    if k in os.environ)
        full.update(env)
        self.proc = subprocess.Popen([command] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=errlog, env=full, cwd=str(cwd))
        STARTED.append(self.proc.pid)
        self.id = 0

    def rpc(self, method, params=None, notify=False, parse=True):
        """One request; with parse=False the answer line is matched by its id, not decoded (the
        decoding is the client's cost, not the server's)."""
        msg = {'jsonrpc': '2.0', 'method': method}
        if params is not None:
            msg['params'] = params
        if not notify:
            self.id += 1
            msg['id'] = self.id
        self.proc.stdin.write((json.dumps(msg) + '\n').encode())
        self.proc.stdin.flush()
        if notify:
            return None
        deadline = time.time() + CALL_TIMEOUT
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError('server closed stdout')
            if not parse:
                ends = line[:64] + line[-64:]
                if re.search(rb'"id"\s*:\s*%d\b' % self.id, ends) and b'"error"' not in line[:64]:
                    return line
            m = json.loads(line)
            if m.get('id') == self.id:
                if 'error' in m:
                    raise RuntimeError('{0}: {1}'.format(method, m['error']))
                return m['result']
        raise RuntimeError('{0}: no answer'.format(method))

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        stop(self.proc.pid)


def excerpt(result, limit=400):
    text = ' '.join(c.text for c in result.content if getattr(c, 'text', None) is not None)
    text = re.sub(r'\s+', ' ', text).strip()
    out = {'is_error': bool(result.is_error), 'text': text[:limit] + ('...' if len(text) > limit else '')}
    if result.structured_content is not None:
        sc = json.dumps(result.structured_content)
        out['structured'] = sc[:limit] + ('...' if len(sc) > limit else '')
    return out


def launch(name, lab, run):
    """(command, args, env) for a server against a lab."""
    if name == 'labops':
        return LABOPS, ['--config', str(run['config']), 'mcp'], {}
    spec = SERVERS[name]
    return run['command'], run['args'], spec['env'](lab)


async def first_answer(name, lab, run, cwd, errlog):
    """Spawn -> initialize -> first list call holding every VM; seconds for each step.

    A call that answers before the server has the VMs (labops before its store is loaded or its
    first refresh is done) does not count: the call is repeated every 5 ms until it does.
    """
    tool, mkargs, count = SERVERS[name]['list_all']
    command, args, env = launch(name, lab, run)
    t0 = time.perf_counter()
    with anyio.fail_after(SESSION_TIMEOUT):
        async with spawned(command, args, env, cwd, errlog) as (session, pid):
            await session.initialize()
            t_init = time.perf_counter()
            calls = 0
            while True:
                r = await call(session, tool, mkargs(lab))
                calls += 1
                if not r.is_error and count(r) == lab['vms']:
                    break
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError('{0}: first answer incomplete: {1}'.format(name, excerpt(r)))
                await anyio.sleep(0.005)
            t_done = time.perf_counter()
    return {'initialize_s': t_init - t0, 'first_list_s': t_done - t0, 'list_calls': calls}


class Target:
    """One server on one lab, and what was measured of it."""

    def __init__(self, name, lab, run):
        self.name, self.lab, self.run, self.spec = name, lab, run, SERVERS[name]
        self.cwd = lab['tmp'] / ('work-' + name)
        self.cwd.mkdir(exist_ok=True)
        self.errlog = open(lab['tmp'] / (name + '.stderr.log'), 'a')
        self.out = {'lab': lab['key']}
        self.session = self.pid = self.raw = None
        self.wire, self.sdk_own = None, {}   # watch_wire: dispatcher trips; SDK's own time per call
        self.gc_pauses = {}                  # per series: the client's GC pauses inside a timed call

    @property
    def ok(self):
        return 'error' not in self.out

    def fail(self, e):
        inner = e
        while isinstance(inner, BaseExceptionGroup) and inner.exceptions:
            inner = inner.exceptions[0]
        self.out['error'] = '{0}: {1}'.format(type(inner).__name__, inner)
        print('  {0} on {1}: {2}'.format(self.name, self.lab['key'], self.out['error']), flush=True)

    def listing(self, key):
        """(tool, args, count, expected VMs) of the 'list_all' or 'list_node' call, or None."""
        if not self.spec[key]:
            return None
        tool, mkargs, count = self.spec[key]
        return tool, mkargs(self.lab), count, self.lab['vms' if key == 'list_all' else 'node_vms']


async def rounds(targets, one, opts):
    """Timed calls in rounds: each round calls every server once (order reversed every other
    round), so background load on the shared cores hits all servers alike. Stops after
    opts.calls rounds, or after opts.budget seconds once 20 rounds are done."""
    lat = {t: [] for t in targets}
    live, t_start = list(targets), time.perf_counter()
    for i in range(opts.calls):
        for t in (live if i % 2 == 0 else live[::-1]):
            try:
                lat[t].append(await one(t))
            except Exception as e:  # a failing server leaves the rotation, the others go on
                t.fail(e)
        live = [t for t in live if t.ok]
        if not live or (time.perf_counter() - t_start > opts.budget and i + 1 >= 20):
            break
    return {t: summarize(v) for t, v in lat.items() if v and t.ok}


async def sdk_phase(targets, opts):
    """All servers open at once through the SDK: ping, listings, client-side check, memory, probes."""
    async with contextlib.AsyncExitStack() as stack:
        for t in targets:
            try:
                command, args, env = launch(t.name, t.lab, t.run)
                t.session, t.pid = await stack.enter_async_context(spawned(command, args, env, t.cwd, t.errlog))
                with anyio.fail_after(CALL_TIMEOUT):
                    await t.session.initialize()
                    t.out['tools'] = len((await t.session.list_tools()).tools)
                t.out['memory_idle'] = memory(t.pid)
            except Exception as e:
                t.fail(e)
        live = [t for t in targets if t.ok]

        async def ping(t):
            with anyio.fail_after(CALL_TIMEOUT):
                t0 = time.perf_counter()
                await t.session.send_ping()
                return time.perf_counter() - t0
        for t in live:
            for _ in range(opts.warmup):
                await ping(t)
        for t, v in (await rounds(live, ping, opts)).items():
            t.out['ping'] = v

        for key in ('list_all', 'list_node'):
            group = [t for t in live if t.ok and t.listing(key)]
            last = {}
            for t in group:
                tool, args, count, expect = t.listing(key)
                try:
                    for _ in range(opts.warmup):
                        r = await call(t.session, tool, args)
                        check(r, count, expect, tool)
                    last[t] = r
                except Exception as e:
                    t.fail(e)

            async def one(t, key=key):
                tool, args, count, expect = t.listing(key)
                gc0, t0 = GC_MS[0], time.perf_counter()
                r = await call(t.session, tool, args)
                dt = time.perf_counter() - t0
                if GC_MS[0] - gc0 > 1:
                    # The client's own garbage collector stopped this call (a full collection
                    # after decoding many objects): the client's time, recorded with the call.
                    t.gc_pauses.setdefault(key, []).append(round(GC_MS[0] - gc0, 1))
                if r.is_error:
                    check(r, count, expect, tool)
                last[t] = r
                if t.wire:
                    t.sdk_own.setdefault(key, []).append(dt - t.wire.pop())
                return dt
            for t in group:
                watch_wire(t)
            for t, v in (await rounds([t for t in group if t.ok], one, opts)).items():
                tool, args, count, expect = t.listing(key)
                check(last[t], count, expect, tool)
                # The SDK client re-validates structuredContent against the tool's outputSchema
                # on every call (ClientSession.validate_tool_result): time that alone.
                chk = []
                for _ in range(min(50, v['n'])):
                    t0 = time.perf_counter()
                    await t.session.validate_tool_result(tool, last[t])
                    chk.append(time.perf_counter() - t0)
                t.out[key] = dict(v, tool=tool, args=args, planned=opts.calls, vms=expect,
                                  answer_bytes=answer_bytes(last[t]), budget_cut=v['n'] < opts.calls,
                                  client_validate_p50_ms=summarize(chk)['p50_ms'])
                if t.sdk_own.get(key):
                    t.out[key]['sdk_own_p50_ms'] = summarize(t.sdk_own[key])['p50_ms']
                t.out[key]['client_gc_pauses_over_1ms'] = sorted(t.gc_pauses.get(key, []), reverse=True)

        for t in live:
            if t.ok:
                t.out['memory'] = memory(t.pid)
        if targets and targets[0].lab['key'] == 'ref':
            for t in [t for t in live if t.ok]:
                try:
                    t.out['probes'] = await probes(t)
                except Exception as e:
                    t.fail(e)


GC_MS = [0.0]   # time the benchmark's own Python process spent in its garbage collector


def _gc_clock(phase, info, started=[0.0]):
    if phase == 'start':
        started[0] = time.perf_counter()
    else:
        GC_MS[0] += (time.perf_counter() - started[0]) * 1000


gc.callbacks.append(_gc_clock)


def watch_wire(t):
    """Times each request's trip through the SDK's JSON-RPC dispatcher (writing the request,
    the server's work, reading the answer line) so that the SDK's own work on a call (building
    the request, validating the result and its structuredContent) is the rest of the call's time.
    Uses the Python SDK 2.x's private `_dispatcher`; without it the split is left out."""
    dispatcher = getattr(t.session, '_dispatcher', None)
    if dispatcher is None or t.wire is not None:
        return
    t.wire, inner = [], dispatcher.send_raw_request

    async def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return await inner(*a, **k)
        finally:
            t.wire.append(time.perf_counter() - t0)
    dispatcher.send_raw_request = timed


async def probes(t):
    spec, out = t.spec, {}
    counters = {spec[k][0]: spec[k][2] for k in ('list_all', 'list_node') if spec[k]}
    for key, (tool, args) in spec['probes'].items():
        r = await call(t.session, tool, args)
        out[key] = dict(excerpt(r), tool=tool, args=args)
        if tool in counters and not r.is_error:
            with contextlib.suppress(Exception):
                out[key]['vms_in_answer'] = counters[tool](r)
    if 'lookup_note' in spec:
        tool, args, _, _ = t.listing('list_all')
        r = await call(t.session, tool, args)
        out['lookup_by_name'] = {'supported': False, 'note': spec['lookup_note'],
                                 'haos_in_full_listing': 'haos' in excerpt(r, 10 ** 7)['text']}
    return out


async def bare_phase(targets, opts):
    """The same calls through RawStdio (no SDK): the server's own time plus the pipes."""
    from mcp import types
    live = []
    try:
        for t in targets:
            try:
                command, args, env = launch(t.name, t.lab, t.run)
                t.raw = RawStdio(command, args, env, t.cwd, t.errlog)
                t.raw.rpc('initialize', {'protocolVersion': '2025-06-18', 'capabilities': {},
                                         'clientInfo': {'name': 'labops-bench-bare', 'version': '0'}})
                t.raw.rpc('notifications/initialized', notify=True)
                t.out['bare'] = {}
                live.append(t)
            except Exception as e:
                t.fail(e)
        for key in ('ping', 'list_all', 'list_node'):
            group = []
            for t in live:
                if not t.ok or (key != 'ping' and not t.listing(key)):
                    continue
                if key == 'ping':
                    req = ('ping', None)
                else:
                    tool, args, count, expect = t.listing(key)
                    req = ('tools/call', {'name': tool, 'arguments': args})
                try:
                    for _ in range(opts.warmup):
                        r = t.raw.rpc(*req)
                    if key != 'ping':
                        check(types.CallToolResult.model_validate(r), count, expect, tool)
                    group.append((t, req))
                except Exception as e:
                    t.fail(e)
            reqs = dict(group)

            async def one(t):
                t0 = time.perf_counter()
                t.raw.rpc(*reqs[t], parse=False)
                return time.perf_counter() - t0
            for t, v in (await rounds(list(reqs), one, opts)).items():
                t.out['bare'][key] = v
    finally:
        for t in targets:
            if t.raw:
                t.raw.close()


TS_CLIENT = ROOT / 'bench' / 'ts-client'


def ensure_ts_client():
    """The TypeScript SDK client's packages (pinned in bench/ts-client/package-lock.json)."""
    if not (TS_CLIENT / 'node_modules' / '@modelcontextprotocol' / 'sdk').is_dir():
        subprocess.run(['npm', 'ci', '--no-audit', '--no-fund'], cwd=str(TS_CLIENT), check=True, timeout=600)
    return subprocess.run(['node', '-p', "JSON.parse(require('fs').readFileSync('node_modules/@modelcontextprotocol/sdk/package.json')).version"],
                          cwd=str(TS_CLIENT), capture_output=True, text=True, check=True).stdout.strip()


RUST_CLIENT = ROOT / 'bench' / 'rust-client'


def ensure_rust_client():
    """The Rust SDK client (bench/rust-client, rmcp pinned in its Cargo.toml), built when missing."""
    subprocess.run(['cargo', 'build', '--quiet', '--release', '--manifest-path', str(RUST_CLIENT / 'Cargo.toml')],
                   check=True, timeout=1200)
    return '3.11.0'


CLIENTS = {
    'ts': lambda: ['node', str(TS_CLIENT / 'client.mjs')],
    'rust': lambda: [str(RUST_CLIENT / 'target' / 'release' / 'labops-bench-rust-client')],
}


def client_phase(via, targets, opts):
    """The same calls through another official SDK's client (`via`: 'ts' is bench/ts-client,
    'rust' is bench/rust-client; both read the same spec): all servers open at once, in rounds."""
    from mcp import types
    base = dict((k, os.environ[k]) for k in ('HOME', 'LOGNAME', 'PATH', 'SHELL', 'TERM', 'USER') if k in os.environ)
    spec = {'calls': opts.calls, 'warmup': opts.warmup, 'budget_s': opts.budget, 'servers': []}
    for t in targets:
        command, args, env = launch(t.name, t.lab, t.run)
        entry = {'name': t.name, 'command': command, 'args': args, 'env': dict(base, **env), 'cwd': str(t.cwd)}
        for key in ('list_all', 'list_node'):
            listing = t.listing(key)
            entry[key] = {'tool': listing[0], 'args': listing[1]} if listing else None
        spec['servers'].append(entry)
    proc = subprocess.run(CLIENTS[via](), input=json.dumps(spec), capture_output=True, text=True, timeout=SESSION_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError('{0} client failed: {1}'.format(via, proc.stderr[-2000:]))
    got = json.loads(proc.stdout)
    for t in targets:
        r = got.get(t.name, {})
        if r.get('pid'):
            STARTED.append(r['pid'])
        t.out[via] = {key: summarize(v) for key, v in r.get('series', {}).items() if v}
        t.out[via].update({key + '_own': summarize(v) for key, v in r.get('own', {}).items() if v})
        if r.get('error'):
            t.out[via]['error'] = r['error']
            print('  {0} on {1} ({2} client): {3}'.format(t.name, t.lab['key'], via, r['error']), flush=True)
        for key, last in r.get('last', {}).items():
            tool, args, count, expect = t.listing(key)
            check(types.CallToolResult.model_validate(last), count, expect, tool)


async def measure_lab(lab, runs, names, opts):
    targets = [Target(n, lab, runs[n]) for n in names]
    try:
        with anyio.fail_after(SESSION_TIMEOUT):
            # Time to the first complete answer: fresh processes, one server after the other.
            starts = {t: [] for t in targets}
            cold = {t: [] for t in targets if t.name == 'labops'}
            for i in range(opts.starts):
                for t in targets:
                    if not t.ok:
                        continue
                    try:
                        starts[t].append(await first_answer(t.name, lab, t.run, t.cwd, t.errlog))
                        if t in cold:  # labops with an empty data dir: its first refresh
                            run = dict(t.run, config=labops_config(lab, lab['tmp'] / 'labops-cold-{0}'.format(i)))
                            cold[t].append(await first_answer(t.name, lab, run, t.cwd, t.errlog))
                    except Exception as e:
                        t.fail(e)
            for t in targets:
                if t.ok:
                    t.out['startup'] = startup_summary(starts[t])
                    if t in cold:
                        t.out['startup_cold'] = startup_summary(cold[t])
            await sdk_phase([t for t in targets if t.ok], opts)
            await bare_phase([t for t in targets if t.ok], opts)
            for via in CLIENTS:
                client_phase(via, [t for t in targets if t.ok], opts)
    finally:
        for t in targets:
            t.errlog.close()
    for t in targets:
        t.out['loadavg_after'] = [round(x, 2) for x in os.getloadavg()]
    return {t.name: t.out for t in targets}


def startup_summary(runs):
    med = lambda k: round(statistics.median(r[k] for r in runs), 4)
    return {'runs': runs, 'initialize_s': med('initialize_s'), 'first_list_s': med('first_list_s'),
            'first_call_incomplete': sum(1 for r in runs if r['list_calls'] > 1)}


# ---------------------------------------------------------------- report

def machine():
    model = ''
    with contextlib.suppress(Exception):
        for line in subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith('Model name:'):
                model = line.split(':', 1)[1].strip()
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', str(ROOT), 'status', '--porcelain', '--', 'crates', 'Cargo.toml', 'Cargo.lock'],
                           capture_output=True, text=True).stdout.split('\n')
    st = os.stat(LABOPS)
    return {'nproc': os.cpu_count(), 'loadavg_start': [round(x, 2) for x in os.getloadavg()], 'cpu': model, 'kernel': platform.release(), 'python': platform.python_version(),
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'labops_bin': LABOPS, 'labops_bin_mtime': datetime.datetime.fromtimestamp(
                st.st_mtime, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'labops_bin_mb': round(st.st_size / 1e6, 1), 'git_head': commit,
            'git_dirty_sources': [d[3:] for d in dirty if d.strip()]}


def fmt(v, unit=''):
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        v = '{0:.2f}'.format(v) if v < 10 else '{0:.1f}'.format(v) if v < 100 else '{0:.0f}'.format(v)
    return '{0}{1}'.format(v, unit)


def table(results):
    """The main table: what a client sees through the official Python SDK."""
    rows = ['| lab | server | list-all-VMs call | calls | p50 ms | p99 ms | one node: p50 / p99 ms '
            '| RSS MiB | first answer s | answer KiB |',
            '|---|---|---|--:|--:|--:|--:|--:|--:|--:|']
    for lab_key, per in results['labs'].items():
        for name, r in per['servers'].items():
            if 'list_all' not in r:
                rows.append('| {0} | {1} | error: {2} | | | | | | | |'.format(lab_key, name, r.get('error', '?')[:120]))
                continue
            la, ln = r['list_all'], r.get('list_node')
            first = fmt(r['startup']['first_list_s'])
            if 'startup_cold' in r:
                first += ' (cold {0})'.format(fmt(r['startup_cold']['first_list_s']))
            rows.append('| {0} | {1} | `{2}` | {3} | {4} | {5} | {6} | {7} | {8} | {9} |'.format(
                lab_key, name, la['tool'] + ' ' + json.dumps(la['args']), la['n'], fmt(la['p50_ms']),
                fmt(la['p99_ms']), '{0} / {1}'.format(fmt(ln['p50_ms']), fmt(ln['p99_ms'])) if ln else 'n/a',
                fmt(r['memory']['tree_rss_kb'] / 1024), first, fmt(la['answer_bytes'] / 1024)))
    return '\n'.join(rows)


def breakdown(results):
    """Where the time goes: SDK vs bare stdio, the SDK's own schema check, fakepve's floor."""
    rows = ['| lab | server | ping p50 ms: SDK / bare | list all p50 ms: SDK / bare | one node p50 ms: SDK / bare '
            '| SDK output-schema check ms | SDK\'s own time per call ms: all / one node | fakepve GET p50 ms |',
            '|---|---|--:|--:|--:|--:|--:|--:|']
    for lab_key, per in results['labs'].items():
        floor = per['fakepve_floor']['cluster_resources_vm']['p50_ms']
        for name, r in per['servers'].items():
            if 'list_all' not in r:
                continue
            raw = r.get('bare', {})
            pair = lambda a, b: '{0} / {1}'.format(fmt(a), fmt(b))
            own = lambda key: fmt(r.get(key, {}).get('sdk_own_p50_ms')) if r.get(key) else 'n/a'
            rows.append('| {0} | {1} | {2} | {3} | {4} | {5} | {6} / {7} | {8} |'.format(
                lab_key, name, pair(r['ping']['p50_ms'], raw.get('ping', {}).get('p50_ms')),
                pair(r['list_all']['p50_ms'], raw.get('list_all', {}).get('p50_ms')),
                pair(r['list_node']['p50_ms'], raw.get('list_node', {}).get('p50_ms')) if r.get('list_node') else 'n/a',
                fmt(r['list_all']['client_validate_p50_ms']), own('list_all'), own('list_node'),
                'none (answers from memory)' if name == 'labops' else fmt(floor)))
    return '\n'.join(rows)


def clients_table(results):
    """What clients built on the official TypeScript and Rust SDKs see (p50 ms; p99 in the JSON)."""
    rows = ['| lab | server | ping: TS / Rust | list all VMs: TS / Rust | one node: TS / Rust |',
            '|---|---|--:|--:|--:|']
    for lab_key, per in results['labs'].items():
        for name, r in per['servers'].items():
            cell = lambda key: '{0} / {1}'.format(*(fmt(r.get(via, {}).get(key, {}).get('p50_ms')) for via in ('ts', 'rust')))
            rows.append('| {0} | {1} | {2} | {3} | {4} |'.format(lab_key, name, cell('ping'), cell('list_all'), cell('list_node')))
    return '\n'.join(rows)


def ratios(results):
    """fastest peer p50 / labops p50, per lab and call, through each SDK and bare."""
    out = {}
    for lab_key, per in results['labs'].items():
        s = per['servers']
        for series_key in ('list_all', 'list_node'):
            for via in ('sdk', 'ts', 'rust', 'bare'):
                get = (lambda r: r.get(series_key)) if via == 'sdk' else (lambda r, via=via: r.get(via, {}).get(series_key))
                peers = {n: get(r)['p50_ms'] for n, r in s.items() if n != 'labops' and get(r)}
                lab = get(s.get('labops', {}))
                if not peers or not lab:
                    continue
                fastest = min(peers, key=peers.get)
                row = out['{0} {1} ({2})'.format(lab_key, series_key, via)] = {
                    'fastest_peer': fastest, 'fastest_peer_p50_ms': peers[fastest],
                    'labops_p50_ms': lab['p50_ms'], 'ratio': round(peers[fastest] / lab['p50_ms'], 1)}
                if via == 'sdk':
                    own = [r[series_key]['sdk_own_p50_ms'] for r in s.values() if r.get(series_key, {}).get('sdk_own_p50_ms')]
                    pings = [r['ping']['p50_ms'] for r in s.values() if r.get('ping')]
                else:
                    own = [r[via][series_key + '_own']['p50_ms'] for r in s.values() if r.get(via, {}).get(series_key + '_own')]
                    pings = [r[via]['ping']['p50_ms'] for r in s.values() if r.get(via, {}).get('ping')]
                if own and pings:
                    # What the fastest peer's time allows through this client: a server whose tool
                    # call cost no more than the fastest ping seen (the trip there and back
                    # through the SDK's transport), with an answer the SDK handles as cheaply as
                    # the cheapest seen, would still take about min(ping) + min(own).
                    row['client_floor_ms'] = round(min(pings) + min(own), 3)
                    row['ceiling'] = round(peers[fastest] / row['client_floor_ms'], 1)
    return out


async def main():
    global LABOPS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--calls', type=int, default=200)
    ap.add_argument('--warmup', type=int, default=10)
    ap.add_argument('--starts', type=int, default=3, help='fresh processes for the first-answer time')
    ap.add_argument('--budget', type=float, default=180.0,
                    help='seconds per timed series (all servers) before it is cut, once 20 rounds are done')
    ap.add_argument('--labs', default='ref,50x20')
    ap.add_argument('--servers', default=','.join(SERVERS))
    ap.add_argument('--out', default=str(RESULTS))
    opts = ap.parse_args()

    names = [n for n in opts.servers.split(',') if n]
    results = {'machine': machine(), 'settings': {'calls': opts.calls, 'warmup': opts.warmup, 'starts': opts.starts,
                                                  'budget_s': opts.budget, 'client': 'mcp (Python SDK) ' +
                                                  __import__('importlib.metadata').metadata.version('mcp') +
                                                  ' over stdio; @modelcontextprotocol/sdk (TypeScript) ' +
                                                  ensure_ts_client() + ' and rmcp (Rust) ' + ensure_rust_client() +
                                                  ' over stdio'},
               'servers': {}, 'labs': {}}
    runs = {}
    for name in names:
        if name == 'labops':
            runs[name] = {}
            results['servers'][name] = {'version': 'git ' + results['machine']['git_head'], 'lang': 'Rust',
                                        'bin': LABOPS}
        else:
            runs[name] = ensure_peer(name)
            results['servers'][name] = dict(runs[name], lang='Python', package=SERVERS[name]['package'])

    tmp = pathlib.Path(tempfile.mkdtemp(prefix='labops-bench-'))
    # Run a private copy: a rebuild of target/release during the run must not swap the binary.
    shutil.copy2(LABOPS, tmp / 'labops')
    LABOPS = str(tmp / 'labops')
    t_run = time.time()
    try:
        for key in opts.labs.split(','):
            print('lab {0}: {1}'.format(key, LABS[key]['title']), flush=True)
            lab = start_lab(key, tmp)
            per = {'title': lab['title'], 'vms': lab['vms'], 'node': lab['node'], 'node_vms': lab['node_vms'],
                   'fakepve_floor': {}, 'servers': {}}
            per['fakepve_floor']['cluster_resources_vm'] = fakepve_floor(lab, '/api2/json/cluster/resources?type=vm')
            per['fakepve_floor']['node_qemu'] = fakepve_floor(lab, '/api2/json/nodes/{0}/qemu'.format(lab['node']))
            for name in names:
                if name == 'labops':
                    runs[name] = {'config': labops_config(lab, tmp / key / 'labops-primed')}
                    # labops reads every LABOPS_* variable as config (LABOPS_BENCH_CACHE would be
                    # an unknown section), so it gets an environment without them.
                    env = {k: v for k, v in os.environ.items() if not k.startswith('LABOPS_')}
                    primed = subprocess.run([LABOPS, '--config', str(runs[name]['config']), 'status'],
                                            capture_output=True, text=True, timeout=120, env=env)
                    if primed.returncode != 0:
                        raise RuntimeError('labops status failed: ' + primed.stderr[-2000:])
            t = time.time()
            per['servers'] = await measure_lab(lab, runs, names, opts)
            per['wall_s'] = round(time.time() - t, 1)
            results['labs'][key] = per
            stop(lab['proc'].pid)
    finally:
        for pid in STARTED:
            stop(pid)
        results['wall_s'] = round(time.time() - t_run, 1)
        results['machine']['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
        leftover = [p for p in STARTED if alive(p)]
        results['leftover_pids'] = leftover
        shutil.rmtree(tmp, ignore_errors=True)

    results['ratios'] = ratios(results)
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + '\n')

    print()
    print(table(results))
    print()
    print(breakdown(results))
    print()
    print(clients_table(results))
    print()
    for k, r in results['ratios'].items():
        print('{0}: fastest peer {1} p50 {2} ms / labops p50 {3} ms = {4}x{5}'.format(
            k, r['fastest_peer'], r['fastest_peer_p50_ms'], r['labops_p50_ms'], r['ratio'],
            '; at most about {0}x through this client (its floor: fastest ping + least own work per call = {1} ms)'.format(
                r['ceiling'], r['client_floor_ms']) if 'ceiling' in r else ''))
    for key, per in results['labs'].items():
        for path, f in per['fakepve_floor'].items():
            print('{0}: fakepve alone, GET {1}: p50 {2} ms ({3} KiB)'.format(key, f['path'], f['p50_ms'],
                                                                            round(f['bytes'] / 1024, 1)))
    print('\nraw numbers: {0}; wall {1}s; leftover processes: {2}'.format(out, results['wall_s'], leftover or 'none'))


if __name__ == '__main__':
    asyncio.run(main())
