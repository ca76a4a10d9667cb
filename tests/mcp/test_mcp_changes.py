"""Changes over MCP with the official Python SDK: a model proposes, only a human approves.

- `propose_change` records a change (grounded in the live lab) and opens its issue; nothing runs.
- A model calling an approval tool gets a refusal, and the attempt is in the audit log.
- `request_approval` asks the human through the client (MCP elicitation): a decline leaves the
  change waiting; an acceptance approves it, and labops executes it on fakepve, validates it,
  commits its documentation with `fixes #N` and closes the issue.
"""

import asyncio
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import mcp.types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from test_mcp_clients import LABOPS, ROOT, SHARED

PROPOSAL = {
    'title': 'Create an LXC for Uptime Kuma on pumped-piglet',
    'analysis': {'what': 'CT 130 for Uptime Kuma on pumped-piglet', 'why': 'watch the monitors', 'risk': 'low'},
    'roi': {'time_saved_hours_per_month': 2, 'learning_value': 3, 'complexity': 2, 'risk': 2},
}


def git(cwd, *args):
    subprocess.run(['git', '-c', 'user.name=test', '-c', 'user.email=test@localhost', *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture()
def changelab():
    """fakepve with the reference lab, and a labops config with a GitOps repository and remote."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix='labops-mcp-changes-'))
    proc = subprocess.Popen([sys.executable, str(ROOT / 'testkit' / 'fakepve_lab.py'), '--dir', str(tmp / 'pve'),
                             '--guests', str(SHARED / 'reference' / 'homelab' / 'fakepve-lab.json')],
                            stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    git(tmp, 'init', '--quiet', '--bare', '-b', 'main', 'remote.git')
    git(tmp, 'clone', '--quiet', 'remote.git', 'gitops')
    (tmp / 'gitops' / 'README.md').write_text('# GitOps\n')
    git(tmp / 'gitops', 'checkout', '--quiet', '-b', 'main')
    git(tmp / 'gitops', 'add', 'README.md')
    git(tmp / 'gitops', 'commit', '--quiet', '-m', 'Start')
    git(tmp / 'gitops', 'push', '--quiet', 'origin', 'main')
    (tmp / 'pw').write_text('secret\n')
    cfg = tmp / 'labops.toml'
    cfg.write_text('[state]\ndata_dir = "{0}"\n[proxmox]\nurl = "{1}"\nuser = "root@pam"\npassword_file = "{2}"\n'
                   'ca_file = "{3}"\n[gitops]\npath = "{4}"\nremote = "origin"\n'.format(
                       tmp / 'state', info['url'], tmp / 'pw', info['cafile'], tmp / 'gitops'))
    yield {'config': str(cfg), 'tmp': tmp, 'control': info['control']}
    proc.kill()
    proc.wait()


def audit(cfg):
    out = subprocess.run([LABOPS, '--config', cfg, 'audit', '--json', '--limit', '500'], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_a_model_proposes_and_only_the_human_approves(changelab):
    workflow = (ROOT / 'workflows' / 'lxc-service.yaml').read_text()
    asked = []
    answers = [types.ElicitResult(action='decline'),
               types.ElicitResult(action='accept', content={'approve': True, 'approver': 'ann', 'reason': ''})]

    async def human(context, params):
        asked.append(params)
        return answers.pop(0)

    async def run():
        params = StdioServerParameters(command=LABOPS, args=['--config', changelab['config'], 'mcp'])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, elicitation_callback=human) as session:
                await session.initialize()
                proposed = await session.call_tool('propose_change', {
                    'workflow_yaml': workflow, 'values': {'vmid': 130}, 'proposal': PROPOSAL})
                assert not proposed.is_error, proposed.content[0].text
                change = proposed.structured_content
                cid = change['id']
                assert change['state'] == 'awaiting_approval' and change['issue'] == 1
                assert change['history'][0]['actor'] == {'kind': 'ai', 'name': 'mcp:stdio'}
                assert 'lxc/130: new' in ' '.join(change['proposal']['analysis']['blast_radius'])

                # A model trying to approve through a tool is refused.
                with pytest.raises(Exception) as refused:
                    await session.call_tool('approve_change', {'change': cid})
                assert 'human act' in str(refused.value), refused.value
                bad = await session.call_tool('propose_change', {
                    'workflow_yaml': workflow.replace('pumped-piglet', 'pumped-piglte'), 'values': {}, 'proposal': PROPOSAL})
                assert bad.is_error and 'pumped-piglet' in bad.content[0].text, bad.content[0].text

                # The human declines: nothing changes.
                declined = await session.call_tool('request_approval', {'change': cid})
                assert declined.is_error and 'declined' in declined.content[0].text
                status = (await session.call_tool('change_status', {'change': cid})).structured_content
                assert status['state'] == 'awaiting_approval'

                # The human accepts: approved for the plan shown, then executed to the end.
                approved = await session.call_tool('request_approval', {'change': cid})
                assert not approved.is_error, approved.content[0].text
                assert approved.structured_content['approved_plan'] == change['plan_digest']
                assert cid in asked[-1].message and change['plan_digest'] in asked[-1].message
                deadline = time.time() + 60
                while True:
                    status = (await session.call_tool('change_status', {'change': cid})).structured_content
                    if status['state'] in ('closed', 'rolled_back', 'failed'):
                        break
                    assert time.time() < deadline, status
                    await asyncio.sleep(0.3)
                assert status['state'] == 'closed', status
                approval = [t for t in status['history'] if t['to'] == 'approved'][0]
                assert approval['actor'] == {'kind': 'human', 'name': 'ann'}
                assert 'elicitation' in approval['reason']
                listed = (await session.call_tool('list_changes', {'all': True})).structured_content
                assert [c['id'] for c in listed['changes']] == [cid]

    asyncio.run(run())
    assert len(asked) == 2
    log = subprocess.run(['git', 'log', '-1', '--format=%B', 'main'], cwd=changelab['tmp'] / 'remote.git',
                         check=True, capture_output=True, text=True).stdout
    assert 'fixes #1' in log, log
    entries = audit(changelab['config'])
    assert any(e['action'] == 'approve_change' and e['outcome'].startswith('refused') for e in entries), entries


def test_process_task_uses_the_clients_model_for_public_work_only(changelab):
    """No model configured: a public request is served by the client's own model through MCP
    sampling (redacted: the lab's names never reach it); a sensitive one is refused and the
    client's model is never asked."""
    sampled = []

    async def client_model(context, params):
        sampled.append(params)
        step = {'action': 'answer', 'text': 'Longhorn is simpler to run on a small cluster; Ceph scales further.',
                'entities': []}
        return types.CreateMessageResult(role='assistant', model='client-model',
                                         content=types.TextContent(type='text', text=json.dumps(step)))

    async def run():
        params = StdioServerParameters(command=LABOPS, args=['--config', changelab['config'], 'mcp'])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, sampling_callback=client_model) as session:
                await session.initialize()
                public = await session.call_tool('process_task', {'request': 'Compare Longhorn and Ceph for a small cluster'})
                sensitive = await session.call_tool('process_task', {'request': 'What runs on pumped-piglet?'})
                return public, sensitive

    public, sensitive = asyncio.run(run())
    assert not public.is_error, public
    view = public.structured_content
    assert view['kind'] == 'answer' and 'Longhorn' in view['text'], view
    assert view['providers'] == ['mcp-client/sampling'], view
    assert len(sampled) == 1, 'one step, one sampling request'
    sent = json.dumps([m.model_dump() for m in sampled[0].messages]) + (sampled[0].system_prompt or '')
    for name in ('pumped-piglet', 'still-fawn', 'chief-horse'):
        assert name not in sent, f'{name} reached the client model'
    view = sensitive.structured_content
    assert view['kind'] == 'refused' and 'never' in view['text'], view
    assert len(sampled) == 1, 'a sensitive request never goes to the client model'
    calls = [a for a in audit(changelab['config']) if a['action'] == 'ai_call']
    assert any(c['target'] == 'mcp-client/sampling' and c['outcome'] == 'ok' for c in calls), calls
