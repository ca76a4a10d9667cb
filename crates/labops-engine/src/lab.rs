//! The live lab: one refresh loop per inventory source, the merged snapshot, and the audit writer.
//!
//! Each source is reconciled on its own schedule. A successful refresh replaces that source's
//! part, is saved to the store, and rebuilds the snapshot; a failed one keeps the last good part
//! and records the error, so answers are served from the last good data and say it is degraded.
//! On start the stored parts are loaded first, so the first answer comes at once.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use labops_core::inventory::{Inventory, Part, SharedPart};
use labops_core::source::SourceStatus;
use labops_integrations::{kubernetes, proxmox};
use labops_store::{AuditEntry, Store};
use tokio::sync::{mpsc, watch};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One configured inventory source.
#[derive(Debug)]
pub enum SourceSpec {
    /// A Proxmox VE cluster, polled.
    Proxmox {
        /// The API client.
        client: Arc<proxmox::Client>,
        /// Time between refreshes.
        interval: Duration,
    },
    /// A Kubernetes cluster, watched.
    Kubernetes {
        /// How to reach it.
        settings: kubernetes::Settings,
        /// How often the watch cache is folded into the snapshot.
        interval: Duration,
    },
    /// Hosts declared in the config.
    Static {
        /// The hosts as a part.
        part: Part,
    },
}

impl SourceSpec {
    fn name(&self) -> &'static str {
        match self {
            SourceSpec::Proxmox { .. } => proxmox::SOURCE,
            SourceSpec::Kubernetes { .. } => kubernetes::SOURCE,
            SourceSpec::Static { .. } => labops_integrations::static_hosts::SOURCE,
        }
    }

    fn endpoint(&self) -> String {
        match self {
            SourceSpec::Proxmox { client, .. } => client.url().to_string(),
            SourceSpec::Kubernetes { settings, .. } => settings
                .kubeconfig
                .as_ref()
                .map(|p| format!("kubeconfig {}", p.display()))
                .unwrap_or_else(|| "inferred kubeconfig".into()),
            SourceSpec::Static { .. } => "config [[hosts]]".into(),
        }
    }
}

/// The merged view of the lab at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The inventory; shared between snapshots that differ only in source status.
    pub inventory: Arc<Inventory>,
    /// Every configured source's status.
    pub sources: Vec<SourceStatus>,
    /// Increases with every rebuild.
    pub generation: u64,
}

#[derive(Default)]
struct State {
    /// Each source's last good part, its entities shared with the inventory built from it.
    parts: BTreeMap<String, SharedPart>,
    /// Set when a part changed since the inventory was last built.
    dirty: bool,
    inventory: Arc<Inventory>,
    statuses: BTreeMap<String, SourceStatus>,
    generation: u64,
}

struct Shared {
    name: String,
    demo: bool,
    state: tokio::sync::Mutex<State>,
    current: RwLock<Arc<Snapshot>>,
    store: Option<Store>,
    audit: Option<mpsc::Sender<AuditMsg>>,
    generation: watch::Sender<u64>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A handle on the live lab; cheap to clone.
#[derive(Clone)]
pub struct Lab {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

/// Options for [`Lab::start`].
#[derive(Debug)]
pub struct LabOptions {
    /// The lab's name, shown in answers.
    pub name: String,
    /// True for the demo lab: every answer says so.
    pub demo: bool,
    /// The sources.
    pub sources: Vec<SourceSpec>,
}

impl Lab {
    /// Loads stored snapshots, starts one refresh loop per source, and returns at once.
    pub async fn start(opts: LabOptions, store: Option<Store>) -> Lab {
        let mut state = State::default();
        let configured: BTreeMap<&'static str, String> =
            opts.sources.iter().map(|s| (s.name(), s.endpoint())).collect();
        for (name, endpoint) in &configured {
            state.statuses.insert(name.to_string(), SourceStatus::pending(*name, endpoint));
        }
        if let Some(store) = &store {
            match store.load_snapshots().await {
                Ok(snaps) => {
                    for s in snaps {
                        // Only sources still configured, at the same endpoint.
                        if configured.get(s.source.as_str()) == Some(&s.endpoint) {
                            let st = state.statuses.get_mut(&s.source).expect("configured");
                            st.last_success_ms = Some(s.taken_ms);
                            st.entities = s.part.entities.len();
                            st.warnings = vec!["loaded from the store; not refreshed since labops started".into()];
                            state.parts.insert(s.source, s.part.share());
                            state.dirty = true;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "stored snapshots could not be loaded; starting empty"),
            }
        }
        let audit = store.clone().map(spawn_audit_writer);
        let (generation, _) = watch::channel(0);
        let lab = Lab {
            shared: Arc::new(Shared {
                name: opts.name,
                demo: opts.demo,
                state: tokio::sync::Mutex::new(state),
                current: RwLock::new(Arc::new(Snapshot::default())),
                store,
                audit,
                generation,
                tasks: std::sync::Mutex::new(Vec::new()),
            }),
        };
        {
            let mut st = lab.shared.state.lock().await;
            lab.rebuild(&mut st);
        }
        for spec in opts.sources {
            let l = lab.clone();
            let handle = tokio::spawn(async move { l.run_source(spec).await });
            lab.shared.tasks.lock().expect("tasks lock").push(handle);
        }
        lab
    }

    /// A lab from fixed parts, with no refresh loops (for tests and benchmarks).
    pub fn from_parts(name: &str, parts: Vec<(SourceStatus, Part)>) -> Lab {
        let mut state = State { dirty: true, ..State::default() };
        for (status, part) in parts {
            state.parts.insert(status.name.clone(), part.share());
            state.statuses.insert(status.name.clone(), status);
        }
        let (generation, _) = watch::channel(0);
        let lab = Lab {
            shared: Arc::new(Shared {
                name: name.into(),
                demo: false,
                state: tokio::sync::Mutex::new(State::default()),
                current: RwLock::new(Arc::new(Snapshot::default())),
                store: None,
                audit: None,
                generation,
                tasks: std::sync::Mutex::new(Vec::new()),
            }),
        };
        lab.rebuild(&mut state);
        lab
    }

    /// Writes every audit record given so far, then stops the refresh loops: how a process
    /// ends its lab.
    pub async fn close(&self) {
        self.flush_audit().await;
        self.shutdown();
    }

    /// Stops the refresh loops.
    pub fn shutdown(&self) {
        for t in self.shared.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// True for the demo lab.
    pub fn is_demo(&self) -> bool {
        self.shared.demo
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.current.read().expect("snapshot lock").clone()
    }

    /// Waits until the snapshot generation passes `after`, or the timeout.
    pub async fn wait_for_generation(&self, after: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.generation.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|g| *g > after)).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits until every source has reported once (successfully or not), or the timeout.
    pub async fn wait_until_reported(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snap = self.snapshot();
            if snap.sources.iter().all(|s| s.last_attempt_ms.is_some()) {
                return true;
            }
            if !self.wait_for_generation(snap.generation, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
                return false;
            }
        }
    }

    /// Records an action in the audit log without waiting for the disk.
    /// The record is written within [`AUDIT_GATHER`] with whatever else came meanwhile, in one
    /// transaction; [`Lab::flush_audit`] waits for everything recorded so far.
    pub fn audit(&self, entry: AuditEntry) {
        if let Some(tx) = &self.shared.audit
            && let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(AuditMsg::Entry(entry))
        {
            // Never drop an audit record: wait for room in the background.
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Waits until every audit record given so far is written (before the process exits).
    pub async fn flush_audit(&self) {
        if let Some(tx) = &self.shared.audit {
            let (done, written) = tokio::sync::oneshot::channel();
            if tx.send(AuditMsg::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        }
    }

    /// The store, when there is one.
    pub fn store(&self) -> Option<&Store> {
        self.shared.store.as_ref()
    }

    fn rebuild(&self, st: &mut State) {
        st.generation += 1;
        if st.dirty || st.generation == 1 {
            st.inventory = Arc::new(Inventory::build_shared(st.parts.values()));
            st.dirty = false;
        }
        let snap = Snapshot {
            inventory: st.inventory.clone(),
            sources: st.statuses.values().cloned().collect(),
            generation: st.generation,
        };
        let mut current = self.shared.current.write().expect("snapshot lock");
        let rebuilt = !Arc::ptr_eq(&current.inventory, &st.inventory);
        let old = std::mem::replace(&mut *current, Arc::new(snap));
        drop(current);
        self.shared.generation.send_replace(st.generation);
        if rebuilt {
            // The previous inventory is freed here unless an answer in flight still holds it.
            drop(old);
            trim_heap();
        }
    }

    async fn report(&self, source: &str, outcome: Result<(Part, Vec<String>), String>) {
        let now = now_ms();
        // A good part is stored before it is published: what answers show survives a restart.
        if let (Some(store), Ok((part, _))) = (&self.shared.store, &outcome) {
            let endpoint = self.shared.state.lock().await.statuses.get(source).map(|s| s.endpoint.clone());
            if let Err(e) = store.save_snapshot(source, endpoint.as_deref().unwrap_or(""), now, part).await {
                tracing::warn!(source, error = %e, "the snapshot could not be saved");
            }
        }
        let mut st = self.shared.state.lock().await;
        let status = st.statuses.entry(source.to_string()).or_insert_with(|| SourceStatus::pending(source, ""));
        status.last_attempt_ms = Some(now);
        match outcome {
            Ok((part, warnings)) => {
                status.last_success_ms = Some(now);
                status.last_error = None;
                status.warnings = warnings;
                status.entities = part.entities.len();
                if !st.parts.get(source).is_some_and(|p| p.same_as(&part)) {
                    st.parts.insert(source.to_string(), part.share());
                    st.dirty = true;
                }
            }
            Err(e) => {
                if status.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(source, error = %e, "inventory source failed; serving its last good snapshot");
                }
                status.last_error = Some(e);
            }
        }
        self.rebuild(&mut st);
    }

    /// Like [`Lab::report`] for the watch cache: data and error can come together (the cache
    /// keeps serving while a watch retries).
    async fn report_cache(&self, source: &str, part: Part, error: Option<String>) {
        match error {
            None => self.report(source, Ok((part, Vec::new()))).await,
            Some(e) => {
                let now = now_ms();
                let mut st = self.shared.state.lock().await;
                let status = st.statuses.entry(source.to_string()).or_insert_with(|| SourceStatus::pending(source, ""));
                status.last_attempt_ms = Some(now);
                status.last_error = Some(e);
                if !part.entities.is_empty() && !st.parts.get(source).is_some_and(|p| p.same_as(&part)) {
                    st.statuses.get_mut(source).expect("inserted above").entities = part.entities.len();
                    st.parts.insert(source.to_string(), part.share());
                    st.dirty = true;
                }
                self.rebuild(&mut st);
            }
        }
    }

    async fn run_source(&self, spec: SourceSpec) {
        let name = spec.name();
        match spec {
            SourceSpec::Static { part } => self.report(name, Ok((part, Vec::new()))).await,
            SourceSpec::Proxmox { client, interval } => loop {
                let outcome = client.fetch().await.map(|f| proxmox::to_part(&f)).map_err(|e| e.to_string());
                self.report(name, outcome).await;
                tokio::time::sleep(interval).await;
            },
            SourceSpec::Kubernetes { settings, interval } => {
                let client = loop {
                    match kubernetes::client(&settings).await {
                        Ok((c, _)) => break c,
                        Err(e) => {
                            self.report(name, Err(e.to_string())).await;
                            tokio::time::sleep(interval.max(Duration::from_secs(5))).await;
                        }
                    }
                };
                let cache = kubernetes::Cache::start(&client);
                // Rebuild only when a watch delivered something or the health changed.
                let mut last: Option<(u64, Option<String>)> = None;
                loop {
                    tokio::time::sleep(interval).await;
                    if cache.health().is_err() && cache.synced() {
                        cache.recheck().await;
                    }
                    let health = cache.health().err();
                    if !cache.synced() && health.is_none() {
                        continue;
                    }
                    let current = (cache.changes(), health);
                    if last.as_ref() != Some(&current) {
                        self.report_cache(name, cache.part(), current.1.clone()).await;
                        last = Some(current);
                    }
                }
            }
        }
    }
}

/// Hands the heap's free pages back to the kernel. glibc keeps what a thread frees in that
/// thread's arena, and a rebuild frees the whole previous inventory: without this, `labops serve`
/// on 50 nodes / 1,000 guests / 5,000 pods crept from 105 to 140 MiB resident within a minute of
/// refreshes, with 50 MB of live heap (BENCHMARKS.md). It walks every arena once
/// (1-2 ms with the big lab), after a rebuild, not on any answer's path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "malloc_trim is a plain FFI call; the workspace's one unsafe block")]
fn trim_heap() {
    let started = std::time::Instant::now();
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it walks it.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    tracing::debug!(released, micros = started.elapsed().as_micros() as u64, "heap trimmed after a rebuild");
}

/// Other allocators return freed memory themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// How long the audit writer gathers records after the first of a burst: a burst of tool calls
/// is one transaction, and a lone call costs its answer no disk work on the way.
pub const AUDIT_GATHER: Duration = Duration::from_millis(20);

enum AuditMsg {
    Entry(AuditEntry),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The audit writer. It waits on the channel only for the first record of a burst: that send
/// wakes it (a thread wake-up on the answer's path). While records keep coming it sleeps on its
/// own timer between writes, so the calls of a busy conversation find it asleep on the timer and
/// wake nobody; after a quiet [`AUDIT_GATHER`] it goes back to waiting on the channel.
fn spawn_audit_writer(store: Store) -> mpsc::Sender<AuditMsg> {
    let (tx, mut rx) = mpsc::channel::<AuditMsg>(4096);
    tokio::spawn(async move {
        let mut msgs = Vec::with_capacity(256);
        while rx.recv_many(&mut msgs, 256).await > 0 {
            loop {
                // Gather the rest of the burst, unless someone is waiting for the disk.
                if !msgs.iter().any(|m| matches!(m, AuditMsg::Flush(_))) {
                    tokio::time::sleep(AUDIT_GATHER).await;
                }
                while msgs.len() < 1024
                    && let Ok(m) = rx.try_recv()
                {
                    msgs.push(m);
                }
                if msgs.is_empty() {
                    break;
                }
                write_audit(&store, &mut msgs).await;
            }
        }
    });
    tx
}

/// Writes the gathered records in one statement, then answers the flushes among them.
async fn write_audit(store: &Store, msgs: &mut Vec<AuditMsg>) {
    let mut batch = Vec::with_capacity(msgs.len());
    let mut waiting = Vec::new();
    for m in msgs.drain(..) {
        match m {
            AuditMsg::Entry(e) => batch.push(e),
            AuditMsg::Flush(done) => waiting.push(done),
        }
    }
    if !batch.is_empty()
        && let Err(err) = store.audit_batch(&batch).await
    {
        tracing::warn!(error = %err, records = batch.len(), "audit records could not be written");
    }
    for done in waiting {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labops_core::inventory::{Entity, EntityKind};
    use labops_core::source::SourceState;

    fn part(names: &[&str]) -> Part {
        let mut p = Part::default();
        for (i, n) in names.iter().enumerate() {
            let mut e = Entity::new(EntityKind::Vm, format!("vm/{}", 100 + i), *n, "running", "proxmox");
            e.vmid = Some(100 + i as u32);
            p.entities.push(e);
        }
        p
    }

    #[tokio::test]
    async fn failures_keep_the_last_good_part_and_unchanged_parts_share_the_inventory() {
        let store = Store::in_memory().await.unwrap();
        let lab = Lab::start(LabOptions { name: "t".into(), demo: false, sources: vec![] }, Some(store.clone())).await;

        lab.report("proxmox", Ok((part(&["a", "b"]), vec![]))).await;
        let first = lab.snapshot();
        assert_eq!(first.inventory.entities().len(), 2);
        assert_eq!(first.sources[0].state(), SourceState::Healthy);
        // Stored before it was published.
        assert_eq!(store.load_snapshots().await.unwrap()[0].part.entities.len(), 2);

        lab.report("proxmox", Err("connection refused".into())).await;
        let failed = lab.snapshot();
        assert_eq!(failed.inventory.entities().len(), 2, "the last good part is still served");
        assert_eq!(failed.sources[0].state(), SourceState::Degraded);
        assert!(failed.generation > first.generation);
        assert!(Arc::ptr_eq(&failed.inventory, &first.inventory), "a failure does not rebuild the inventory");

        lab.report("proxmox", Ok((part(&["a", "b"]), vec![]))).await;
        let same = lab.snapshot();
        assert_eq!(same.sources[0].state(), SourceState::Healthy);
        assert!(Arc::ptr_eq(&same.inventory, &first.inventory), "an unchanged part does not rebuild it");

        lab.report("proxmox", Ok((part(&["a", "b", "c"]), vec!["node pve is offline".into()]))).await;
        let changed = lab.snapshot();
        assert_eq!(changed.inventory.entities().len(), 3);
        assert_eq!(changed.sources[0].state(), SourceState::Degraded, "source warnings degrade it");
    }

    /// The audit record of a test's call number `i`.
    fn record(i: i64) -> AuditEntry {
        AuditEntry {
            at_ms: i,
            actor: "test".into(),
            action: format!("a{i}"),
            target: None,
            outcome: "ok".into(),
            detail: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn audit_records_are_written_in_order() {
        let store = Store::in_memory().await.unwrap();
        let lab = Lab::start(LabOptions { name: "t".into(), demo: false, sources: vec![] }, Some(store.clone())).await;
        for i in 0..50 {
            lab.audit(record(i));
        }
        lab.flush_audit().await;
        assert_eq!(store.audit_recent(100).await.unwrap().len(), 50, "all written once flushed");
        let newest = store.audit_recent(1).await.unwrap();
        assert_eq!(newest[0].action, "a49");
    }

    /// Without anyone flushing: records of a steady stream, and a lone record after a quiet spell
    /// (when the writer is back to waiting on the channel), all reach the disk on their own.
    #[tokio::test]
    async fn audit_records_reach_the_disk_without_a_flush() {
        let store = Store::in_memory().await.unwrap();
        let lab = Lab::start(LabOptions { name: "t".into(), demo: false, sources: vec![] }, Some(store.clone())).await;
        let written = |n: usize| {
            let store = store.clone();
            async move {
                for _ in 0..200 {
                    if store.audit_recent(1000).await.unwrap().len() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{n} audit records were not written within 2 s");
            }
        };
        for i in 0..30 {
            lab.audit(record(i));
            tokio::time::sleep(AUDIT_GATHER / 4).await;
        }
        written(30).await;
        tokio::time::sleep(AUDIT_GATHER * 5).await;
        lab.audit(record(30));
        written(31).await;
        assert_eq!(store.audit_recent(1).await.unwrap()[0].action, "a30");
    }
}
