//! Workflow engine throughput and restart, on SQLite (a file in a temp dir, WAL, as in
//! production):
//!
//! 1. 1,000 runs of 10 no-op steps (`milestone`, a chain), driven at once: step transitions
//!    (a step entering `running` or `succeeded`) per second, every one a committed transaction
//!    with its event.
//! 2. Restart with 1,000 runs in flight: each run's first step is left `running` by a driver
//!    that died (as after a SIGKILL); a new engine resumes them all (verify, record, move on
//!    to the next step, which waits for a human). Time from start to all 1,000 resumed.
//!
//!     cargo bench -p labops-engine --bench runs

use std::sync::Arc;
use std::time::Instant;

use labops_core::workflow::{self, Bindings};
use labops_engine::runs::basic::{ExternalTask, Milestone};
use labops_engine::runs::{Driven, Engine, Registry};
use labops_store::Store;
use labops_store::runs::NewEvent;

fn plan(text: &str) -> workflow::Plan {
    let (w, report) = workflow::check(text);
    assert!(report.is_valid(), "{:?}", report.errors);
    workflow::plan(&w.unwrap(), &Bindings::new()).unwrap()
}

fn chain(n: usize) -> String {
    let mut t = "apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: noop\nspec:\n  resources:\n".to_string();
    for i in 0..n {
        let deps = if i == 0 { String::new() } else { format!("s{}", i - 1) };
        t += &format!("    - name: s{i}\n      type: milestone\n      dependencies: [{deps}]\n");
    }
    t
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Milestone)).register(Arc::new(ExternalTask));
    r
}

async fn throughput(runs: usize, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.db")).await.unwrap();
    let engine = Engine::new(store.clone(), registry(), 8, 4);
    let p = plan(&chain(steps));
    let t = Instant::now();
    for _ in 0..runs {
        engine.submit(&p, "bench").await.unwrap();
    }
    let submit = t.elapsed();
    let t = Instant::now();
    let results = engine.resume_all().await.unwrap();
    let elapsed = t.elapsed();
    assert_eq!(results.len(), runs);
    assert!(results.iter().all(|(_, d)| *d == Driven::Finished { outcome: "succeeded".into() }));
    let transitions = runs * steps * 2;
    println!(
        "{runs} runs x {steps} no-op steps: {transitions} step transitions in {:.2} s = {:.0} transitions/s ({:.0} steps/s); submitting the runs took {:.2} s",
        elapsed.as_secs_f64(),
        transitions as f64 / elapsed.as_secs_f64(),
        (runs * steps) as f64 / elapsed.as_secs_f64(),
        submit.as_secs_f64()
    );
}

async fn restart(runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let text = "apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: inflight\nspec:\n  resources:\n    - name: work\n      type: milestone\n    - name: owner\n      type: external-task\n      dependencies: [work]\n";
    {
        let store = Store::open(&path).await.unwrap();
        let engine = Engine::new(store.clone(), registry(), 8, 4);
        let p = plan(text);
        for _ in 0..runs {
            let id = engine.submit(&p, "bench").await.unwrap();
            // As a killed driver leaves it: owned by a dead process, first step running.
            assert!(store.claim_run(id, "pid:999999999:1", 0, |_, _| false).await.unwrap());
            let mut s = store.run_steps(id).await.unwrap().remove(0);
            s.state = "running".into();
            s.attempt = 1;
            store.save_step(id, &s, 0, &NewEvent::step("work", "step_started", serde_json::Value::Null)).await.unwrap();
        }
    }
    let t = Instant::now();
    let store = Store::open(&path).await.unwrap();
    let engine = Engine::new(store, registry(), 8, 4);
    let results = engine.resume_all().await.unwrap();
    let elapsed = t.elapsed();
    assert_eq!(results.len(), runs);
    assert!(results.iter().all(|(_, d)| matches!(d, Driven::Waiting { .. })), "every run moved on to its human step");
    println!("restart with {runs} runs in flight: all resumed (interrupted step verified, next step waiting) in {:.3} s", elapsed.as_secs_f64());
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        throughput(1000, 10).await;
        restart(1000).await;
    });
}
