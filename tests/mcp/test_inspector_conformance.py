"""The MCP inspector CLI (stdio and HTTP) and the MCP conformance suite against labops.

The conformance suite sends no bearer token, so it talks to labops through token_proxy.py. Its
results are printed (they appear in CI output); scenarios labops is expected to fail are listed
with their reasons in conformance-baseline.yml, and the suite fails on any other failure and on
a listed scenario that starts passing.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from test_mcp_clients import LABOPS, ROOT, TOOLS, free_port, lab, served  # noqa: F401 (fixtures)

HERE = pathlib.Path(__file__).resolve().parent
BIN = HERE / 'node_modules' / '.bin'


def inspector(*args, target, tool_error=False):
    """Runs the inspector CLI; it exits 5 when a tool answers isError."""
    out = subprocess.run([str(BIN / 'mcp-inspector'), '--cli', *target, *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == (5 if tool_error else 0), out.stderr + out.stdout
    return json.loads(out.stdout)


@pytest.mark.parametrize('transport', ['stdio', 'http'])
def test_inspector_lists_and_calls_every_tool(lab, served, transport):
    def run(method, *extra, tool_error=False):
        # The inspector's --tool-arg takes several values: the target goes before it, and
        # stdio server arguments follow `--`.
        named = [a for a in extra if not a.startswith('--tool-arg')]
        opts = ['--method', method]
        if '--tool-name' in extra:
            i = extra.index('--tool-name')
            opts += ['--tool-name', extra[i + 1]]
            named = list(extra[:i]) + list(extra[i + 2:])
        if transport == 'stdio':
            target = [*opts, LABOPS, *named, '--', '--config', lab['config'], 'mcp']
        else:
            target = [served['url'], '--transport', 'http', '--header', 'Authorization: Bearer ' + served['token'],
                      *opts, *named]
        return inspector(target=target, tool_error=tool_error)

    tools = run('tools/list')['tools']
    assert {t['name'] for t in tools} == TOOLS
    calls = {
        'inventory_summary': [],
        'list_entities': ['--tool-arg', 'kind=lxc'],
        'k8s_workloads': [],
        'get_entity': ['--tool-arg', 'name=proxmox-backup-server'],
        'resolve': ['--tool-arg', 'name=still-fawn'],
        'node_status': ['--tool-arg', 'name=fun-bedbug'],
        'guest_status': ['--tool-arg', 'name=114'],
        'impact_of': ['--tool-arg', 'name=pumped-piglet'],
    }
    for name, args in calls.items():
        r = run('tools/call', '--tool-name', name, *args)
        assert not r.get('isError'), (name, r)
        assert 'freshness' in r['structuredContent'], name
    assert 'runs' in run('tools/call', '--tool-name', 'list_runs')['structuredContent']
    lxcs = run('tools/call', '--tool-name', 'list_entities', '--tool-arg', 'kind=lxc')['structuredContent']
    assert [dict(zip(lxcs['columns'], row))['id'] for row in lxcs['rows']] == ['lxc/103']
    assert run('tools/call', '--tool-name', 'guest_status', '--tool-arg', 'name=114')['structuredContent']['guest']['name'] == 'k3s-vm-fun-bedbug'
    bad = run('tools/call', '--tool-name', 'get_entity', '--tool-arg', 'name=fun-bedbog', tool_error=True)
    assert bad.get('isError') is True
    assert 'fun-bedbug' in bad['content'][0]['text']
    res = run('resources/read', '--uri', 'labops://inventory')
    assert len(json.loads(res['contents'][0]['text'])['entities']) == 22
    assert {p['name'] for p in run('prompts/list')['prompts']} == {'diagnose', 'plan_change'}


def test_conformance_suite(lab, served, tmp_path):
    token = tmp_path / 'token'
    token.write_text(served['token'])
    upstream = served['url'].rsplit('/mcp', 1)[0]
    proxy = subprocess.Popen([sys.executable, str(HERE / 'token_proxy.py'), '--upstream', upstream,
                              '--token-file', str(token)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proxy.stdout.readline())
        out = subprocess.run([str(BIN / 'conformance'), 'server', '--url', 'http://127.0.0.1:{0}/mcp'.format(port),
                              '--expected-failures', str(HERE / 'conformance-baseline.yml')],
                             capture_output=True, text=True, timeout=900)
        summary = out.stdout[out.stdout.find('=== SUMMARY ==='):]
        print(summary)  # the suite's results, in CI output
        assert out.returncode == 0, summary + out.stderr[-2000:]
    finally:
        proxy.kill()
        proxy.wait()
