//! The official MCP Rust SDK's client (rmcp) over stdio, driven by bench/peers.py.
//!
//! Reads one JSON spec on stdin (the one bench/ts-client/client.mjs reads):
//! `{calls, warmup, budget_s, servers: [{name, command, args, env, cwd, list_all: {tool, args} | null,
//! list_node: ...}]}`, opens every server at once, lists its tools, then times `ping`, the
//! list-all call and the one-node call in rounds (each round calls every server once, in reversed
//! order every other round; a series stops after `calls` rounds, or after `budget_s` seconds once
//! 20 rounds are done). Prints one JSON object: per server, the latencies in seconds per series
//! and the last answer of each listing, or the error that stopped it.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Instant;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientRequest};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

struct Server {
    name: String,
    spec: Value,
    client: RunningService<RoleClient, ()>,
}

/// One timed call: the SDK's request and its typed answer, nothing else (the caller turns the
/// answer into JSON after the clock stops).
async fn call(s: &Server, key: &str) -> Result<Option<CallToolResult>, String> {
    if key == "ping" {
        s.client.peer().send_request(ClientRequest::PingRequest(Default::default())).await.map_err(|e| e.to_string())?;
        return Ok(None);
    }
    let l = &s.spec[key];
    let tool = l["tool"].as_str().unwrap_or_default().to_string();
    let args = l["args"].as_object().cloned().unwrap_or_default();
    let r = s.client.call_tool(CallToolRequestParams::new(tool.clone()).with_arguments(args)).await.map_err(|e| e.to_string())?;
    if r.is_error == Some(true) {
        return Err(format!("{tool} failed: {}", serde_json::to_string(&r.content).unwrap_or_default().chars().take(300).collect::<String>()));
    }
    Ok(Some(r))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("spec on stdin");
    let spec: Value = serde_json::from_str(&input).expect("spec is JSON");
    let (calls, warmup, budget) = (spec["calls"].as_u64().unwrap_or(200), spec["warmup"].as_u64().unwrap_or(10), spec["budget_s"].as_f64().unwrap_or(180.0));
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut live = Vec::new();
    for s in spec["servers"].as_array().cloned().unwrap_or_default() {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        out.insert(name.clone(), json!({"series": {}, "last": {}}));
        let mut cmd = tokio::process::Command::new(s["command"].as_str().unwrap_or_default());
        cmd.args(s["args"].as_array().into_iter().flatten().filter_map(Value::as_str));
        cmd.env_clear();
        for (k, v) in s["env"].as_object().into_iter().flatten() {
            cmd.env(k, v.as_str().unwrap_or_default());
        }
        cmd.current_dir(s["cwd"].as_str().unwrap_or("."));
        let started = async {
            let (transport, _stderr) = TokioChildProcess::builder(cmd).stderr(std::process::Stdio::null()).spawn().map_err(|e| e.to_string())?;
            let pid = transport.id();
            let client = ().serve(transport).await.map_err(|e| e.to_string())?;
            let tools = client.list_all_tools().await.map_err(|e| e.to_string())?.len();
            Ok::<_, String>((client, pid, tools))
        };
        match started.await {
            Ok((client, pid, tools)) => {
                out.insert(name.clone(), json!({"series": {}, "last": {}, "pid": pid, "tools": tools}));
                live.push(Server { name, spec: s, client });
            }
            Err(e) => {
                out.get_mut(&name).expect("inserted")["error"] = json!(e);
            }
        }
    }
    for key in ["ping", "list_all", "list_node"] {
        let mut group: Vec<usize> = (0..live.len()).filter(|&i| out[&live[i].name].get("error").is_none() && (key == "ping" || !live[i].spec[key].is_null())).collect();
        for &i in &group {
            let mut failed = None;
            for _ in 0..warmup {
                if let Err(e) = call(&live[i], key).await {
                    failed = Some(e);
                    break;
                }
            }
            let o = out.get_mut(&live[i].name).expect("inserted");
            match failed {
                Some(e) => o["error"] = json!(e),
                None => o["series"][key] = json!([]),
            }
        }
        group.retain(|&i| out[&live[i].name].get("error").is_none());
        let start = Instant::now();
        for round in 0..calls {
            let order: Vec<usize> = if round % 2 == 0 { group.clone() } else { group.iter().rev().copied().collect() };
            for i in order {
                let t0 = Instant::now();
                let r = call(&live[i], key).await;
                let dt = t0.elapsed().as_secs_f64();
                let o = out.get_mut(&live[i].name).expect("inserted");
                match r {
                    Ok(last) => {
                        o["series"][key].as_array_mut().expect("series").push(json!(dt));
                        if let Some(last) = last {
                            o["last"][key] = serde_json::to_value(&last).unwrap_or_default();
                        }
                    }
                    Err(e) => o["error"] = json!(e),
                }
            }
            group.retain(|&i| out[&live[i].name].get("error").is_none());
            if group.is_empty() || (start.elapsed().as_secs_f64() > budget && round + 1 >= 20) {
                break;
            }
        }
    }
    for s in live {
        let _ = s.client.cancel().await;
    }
    println!("{}", serde_json::to_string(&out).expect("JSON"));
}
