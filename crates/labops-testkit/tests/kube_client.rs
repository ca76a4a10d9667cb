//! kube-rs against the fake API server: the client, reflectors and discovery used exactly as
//! labops uses them against a real cluster, through a kubeconfig the fake writes.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use labops_testkit::{FakeKube, Options, ResourceType};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn config_for(kube: &FakeKube, dir: &Path) -> Config {
    let kc = Kubeconfig::read_from(kube.kubeconfig(dir)).expect("kubeconfig parses");
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig is usable")
}

async fn client_for(kube: &FakeKube, dir: &Path) -> Client {
    Client::try_from(config_for(kube, dir).await).expect("client")
}

/// Polls until `f` holds, failing the test after [`WAIT`].
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api_code(e: &kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "k3s-1", "containers": [{"name": "main", "image": "nginx:1.27"}]},
        "status": {"phase": "Running"}
    })
}

fn names(store: &Store<Pod>) -> BTreeSet<String> {
    store.state().iter().map(|p| p.name_any()).collect()
}

#[tokio::test]
async fn pod_list_get_create_replace_delete_round_trip() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let pp = PostParams::default();

    // The namespace does not exist yet: 404 like the real server.
    let web: Pod = serde_json::from_value(pod("apps", "web-1", json!({"app": "web"}))).unwrap();
    let err = pods.create(&pp, &web).await.unwrap_err();
    assert_eq!(api_code(&err), (404, "NotFound".into()));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
    let ns = namespaces.create(&pp, &ns).await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));

    let created = pods.create(&pp, &web).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"), "status is not set through the main resource");
    assert_eq!(api_code(&pods.create(&pp, &web).await.unwrap_err()), (409, "AlreadyExists".into()));

    let other: Pod = serde_json::from_value(pod("apps", "db-0", json!({"app": "db"}))).unwrap();
    pods.create(&pp, &other).await.unwrap();
    kube.apply(pod("default", "elsewhere", json!({"app": "web"})));

    let got = pods.get("web-1").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(api_code(&pods.get("nope").await.unwrap_err()), (404, "NotFound".into()));

    let listed = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["db-0", "web-1"]);
    let list_rv: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv > rv1);
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(pods.list(&sel("app=web")).await.unwrap().items.len(), 1);
    assert_eq!(pods.list(&sel("app!=web")).await.unwrap().items[0].name_any(), "db-0");
    assert_eq!(pods.list(&sel("!app")).await.unwrap().items.len(), 0);
    assert_eq!(pods.list(&sel("app in (db,web)")).await.unwrap().items.len(), 2);
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(all.list(&sel("app=web")).await.unwrap().items.len(), 2, "all namespaces");
    let by_field = all.list(&ListParams::default().fields("metadata.namespace=default,spec.nodeName=k3s-1")).await.unwrap();
    assert_eq!(by_field.items[0].name_any(), "elsewhere");
    let bad = all.list(&ListParams::default().fields("spec.containers=x")).await.unwrap_err();
    assert_eq!(api_code(&bad), (400, "BadRequest".into()));

    // Replace: a stale resourceVersion conflicts, the current one wins and bumps generation.
    let mut stale = got.clone();
    stale.metadata.resource_version = Some("1".into());
    assert_eq!(api_code(&pods.replace("web-1", &pp, &stale).await.unwrap_err()), (409, "Conflict".into()));
    let mut newer = got.clone();
    newer.spec.as_mut().unwrap().containers[0].image = Some("nginx:1.28".into());
    let replaced = pods.replace("web-1", &pp, &newer).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    // Delete answers the pod; a deployment's delete answers a Status.
    let deleted = pods.delete("web-1", &DeleteParams::default()).await.unwrap();
    assert_eq!(deleted.left().expect("pods answer the object").name_any(), "web-1");
    assert_eq!(api_code(&pods.get("web-1").await.unwrap_err()), (404, "NotFound".into()));
    assert_eq!(api_code(&pods.delete("web-1", &DeleteParams::default()).await.unwrap_err()).0, 404);
    assert!(kube.get("v1", "Pod", Some("apps"), "web-1").is_none());

    let deployments: Api<Deployment> = Api::namespaced(client, "apps");
    kube.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
                      "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}}));
    let status = deployments.delete("web", &DeleteParams::default()).await.unwrap().right().expect("a Status");
    assert!(status.is_success());
}

/// Runs a reflector on pods in all namespaces the way labops does, recording errors.
fn start_reflector(client: Client, config: watcher::Config) -> (Store<Pod>, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let api: Api<Pod> = Api::all(client);
    let (reader, writer) = reflector::store();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                errs.lock().unwrap().push(e.to_string());
            }
        }
    });
    (reader, errors, task)
}

fn count(kube: &FakeKube, watch: bool) -> usize {
    kube.requests().iter().filter(|r| r.path == "/api/v1/pods" && r.method == "GET" && r.is_watch() == watch).count()
}

#[tokio::test]
async fn reflector_follows_watch_events_and_relists_after_410() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    kube.apply(pod("default", "a", json!({})));

    let (store, errors, task) = start_reflector(client, watcher::Config::default());
    eventually("initial list", || names(&store) == BTreeSet::from(["a".into()])).await;
    eventually("watch open", || kube.open_watches() == 1).await;
    assert_eq!(count(&kube, false), 1);

    // Changes after the list arrive over the watch, not through another list.
    kube.apply(pod("default", "b", json!({})));
    eventually("b via watch", || names(&store).contains("b")).await;
    kube.set_status("v1", "Pod", Some("default"), "b", json!({"phase": "Succeeded"}));
    eventually("b's status via watch", || {
        store.state().iter().any(|p| p.name_any() == "b" && p.status.as_ref().unwrap().phase.as_deref() == Some("Succeeded"))
    })
    .await;
    kube.delete("v1", "Pod", Some("default"), "a");
    eventually("a deleted via watch", || !names(&store).contains("a")).await;
    assert_eq!(count(&kube, false), 1, "no re-list so far");
    assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());

    // Compaction: the open watch gets an in-stream 410 and the reflector re-lists.
    kube.compact();
    eventually("re-list after in-stream 410", || count(&kube, false) == 2).await;
    eventually("410 reported", || errors.lock().unwrap().iter().any(|e| e.contains("410") || e.contains("too old"))).await;
    kube.apply(pod("default", "c", json!({})));
    eventually("c after recovery", || names(&store) == BTreeSet::from(["b".into(), "c".into()])).await;

    // Closed stream + compaction: the reconnecting watch is answered 410 and re-lists again.
    eventually("watch open again", || kube.open_watches() == 1).await;
    kube.expire_watches();
    eventually("re-list after 410 on reconnect", || count(&kube, false) == 3).await;
    kube.delete("v1", "Pod", Some("default"), "b");
    eventually("b deleted after second recovery", || names(&store) == BTreeSet::from(["c".into()])).await;

    // A closed stream without compaction resumes from its resourceVersion: no re-list.
    eventually("watch open once more", || kube.open_watches() == 1).await;
    kube.close_watches();
    kube.apply(pod("default", "d", json!({})));
    eventually("d after resume", || names(&store).contains("d")).await;
    assert_eq!(count(&kube, false), 3);
    task.abort();
}

#[tokio::test]
async fn reflector_keeps_last_data_while_the_api_is_down_and_catches_up() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    kube.apply(pod("default", "a", json!({})));
    let (store, errors, task) = start_reflector(client, watcher::Config::default());
    eventually("initial list", || names(&store).contains("a")).await;

    kube.set_offline(true).await;
    eventually("errors while offline", || !errors.lock().unwrap().is_empty()).await;
    assert_eq!(names(&store), BTreeSet::from(["a".into()]), "the store keeps the last good data");
    kube.apply(pod("default", "b", json!({})));
    kube.set_offline(false).await;
    eventually("catches up after the outage", || names(&store).contains("b")).await;
    task.abort();
}

#[tokio::test]
async fn failures_answer_status_objects() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    let pods: Api<Pod> = Api::all(client.clone());

    kube.fail_requests(Some(500));
    assert_eq!(api_code(&pods.list(&ListParams::default()).await.unwrap_err()), (500, "InternalError".into()));
    kube.fail_requests(None);
    pods.list(&ListParams::default()).await.unwrap();

    // kube-rs retries 503 by default; without the retry layer it surfaces at once.
    let mut config = config_for(&kube, dir.path()).await;
    config.default_retry = false;
    let no_retry: Api<Pod> = Api::all(Client::try_from(config).unwrap());
    kube.set_unavailable(true);
    assert_eq!(api_code(&no_retry.list(&ListParams::default()).await.unwrap_err()), (503, "ServiceUnavailable".into()));
    kube.set_unavailable(false);

    kube.fail_watches(true);
    no_retry.list(&ListParams::default()).await.unwrap();
    let err = no_retry.watch(&WatchParams::default(), "0").await.err().expect("watch refused");
    assert_eq!(api_code(&err).0, 503);
    kube.fail_watches(false);

    // Bearer tokens are checked when configured.
    let secured = FakeKube::start_with(Options { token: Some("s3cret".into()), ..Options::default() }).await;
    let ok: Api<Namespace> = Api::all(client_for(&secured, dir.path()).await);
    assert_eq!(ok.list(&ListParams::default()).await.unwrap().items.len(), 4, "system namespaces");
    let anonymous: Api<Namespace> = Api::all(Client::try_from(Config::new(secured.url().parse().unwrap())).unwrap());
    assert_eq!(api_code(&anonymous.list(&ListParams::default()).await.unwrap_err()), (401, "Unauthorized".into()));
}

fn deployment(replicas: i32, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
        },
        "status": {"readyReplicas": 99}
    })
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_tracks_managers() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let ssa = PatchParams::apply("labops");

    let created = deployments.patch("web", &ssa, &Patch::Apply(deployment(2, json!({"team": "a", "tier": "web"})))).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(created.status.as_ref().unwrap().ready_replicas, None, "status is not applied through the main resource");
    let mf = created.metadata.managed_fields.as_ref().unwrap();
    assert_eq!((mf[0].manager.as_deref(), mf[0].operation.as_deref()), (Some("labops"), Some("Apply")));
    assert!(kube.requests().iter().any(|r| r.method == "PATCH" && r.status == 201));

    // Re-apply: replicas change (generation 2) and the dropped label goes away.
    let updated = deployments.patch("web", &ssa, &Patch::Apply(deployment(3, json!({"team": "a"})))).await.unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(updated.labels().keys().collect::<Vec<_>>(), ["team"]);
    assert_eq!(updated.metadata.uid, created.metadata.uid);

    // The same apply again is a no-op: no new resourceVersion.
    let again = deployments.patch("web", &ssa, &Patch::Apply(deployment(3, json!({"team": "a"})))).await.unwrap();
    assert_eq!(again.metadata.resource_version, updated.metadata.resource_version);

    // Another manager changing an owned field conflicts unless it forces.
    let other = PatchParams::apply("someone-else");
    let err = deployments.patch("web", &other, &Patch::Apply(deployment(5, json!({})))).await.unwrap_err();
    let kube::Error::Api(status) = &err else { panic!("{err:?}") };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains(".spec.replicas") && status.message.contains("labops"), "{}", status.message);
    let forced = deployments.patch("web", &other.clone().force(), &Patch::Apply(deployment(5, json!({})))).await.unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(5));

    // Merge patch on metadata leaves generation alone; the status subresource changes status only.
    let merged = deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}))).await.unwrap();
    assert_eq!(merged.labels().get("x").map(String::as_str), Some("y"));
    assert_eq!(merged.metadata.generation, Some(3));
    let with_status = deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"readyReplicas": 5}, "spec": {"replicas": 1}})))
        .await
        .unwrap();
    assert_eq!(with_status.status.unwrap().ready_replicas, Some(5));
    assert_eq!(with_status.spec.unwrap().replicas, Some(5), "spec is not changed through /status");

    // Scale subresource.
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(5));
    deployments.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await.unwrap();
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(0));

    // A cluster-scoped kind and a kind without status subresource also apply.
    let leases: Api<Lease> = Api::namespaced(deployments.clone().into_client(), "kube-node-lease");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "k3s-1"},
                       "spec": {"holderIdentity": "k3s-1", "leaseDurationSeconds": 40}});
    let lease = leases.patch("k3s-1", &ssa, &Patch::Apply(lease)).await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("k3s-1"));
    let nodes: Api<Node> = Api::all(leases.into_client());
    let node = nodes.patch("k3s-1", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "k3s-1", "labels": {"role": "worker"}}}))).await.unwrap();
    assert_eq!(node.metadata.namespace, None);
    assert_eq!(kube.list("Node").len(), 1);
}

#[tokio::test]
async fn discovery_describes_the_served_resources() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;

    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    for g in ["apps", "networking.k8s.io", "coordination.k8s.io"] {
        assert!(names.contains(&g), "{g} in {names:?}");
    }

    for discovery in [
        Discovery::new(client.clone()).run().await.unwrap(),
        Discovery::new(client.clone()).run_aggregated().await.unwrap(),
    ] {
        let (ar, caps) = discovery.resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")).expect("deployments");
        assert_eq!(ar.plural, "deployments");
        assert_eq!(caps.scope, Scope::Namespaced);
        assert!(caps.operations.iter().any(|v| v == "watch"));
        assert!(caps.subresources.iter().any(|(r, _)| r.plural == "status"));
        let (_, caps) = discovery.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Node")).expect("nodes");
        assert_eq!(caps.scope, Scope::Cluster);
        assert!(discovery.resolve_gvk(&GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress")).is_some());
        assert!(discovery.resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease")).is_some());
    }

    // A resource registered at run time is discovered and served like a custom resource.
    kube.register(ResourceType::new("labops.dev/v1", "Widget", "widgets", true).with_status());
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery.resolve_gvk(&GroupVersionKind::gvk("labops.dev", "v1", "Widget")).expect("widgets");
    assert_eq!(caps.scope, Scope::Namespaced);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let w = json!({"apiVersion": "labops.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}});
    widgets.patch("w1", &PatchParams::apply("labops"), &Patch::Apply(w)).await.unwrap();
    let listed = widgets.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["spec"]["size"], 3);
    assert_eq!(kube.list("Widget").len(), 1);
}

#[tokio::test]
async fn watches_follow_selectors_and_stream_initial_events() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    kube.apply(pod("default", "web-1", json!({"app": "web"})));
    kube.apply(pod("default", "db-0", json!({"app": "db"})));

    // rv=0: synthetic ADDED for what matches now, then live changes; leaving the selection
    // is a DELETED, entering it an ADDED.
    let stream = pods.watch(&WatchParams::default().labels("app=web"), "0").await.unwrap();
    futures::pin_mut!(stream);
    let mut next = async || -> (String, String) {
        let ev = tokio::time::timeout(WAIT, stream.try_next()).await.expect("event in time").unwrap().expect("stream open");
        match ev {
            WatchEvent::Added(p) => ("ADDED".into(), p.name_any()),
            WatchEvent::Modified(p) => ("MODIFIED".into(), p.name_any()),
            WatchEvent::Deleted(p) => ("DELETED".into(), p.name_any()),
            WatchEvent::Bookmark(_) => ("BOOKMARK".into(), String::new()),
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(next().await, ("ADDED".into(), "web-1".into()));
    kube.apply(pod("default", "web-1", json!({"app": "web", "v": "2"})));
    assert_eq!(next().await, ("MODIFIED".into(), "web-1".into()));
    kube.apply(pod("default", "web-1", json!({"app": "old"})));
    assert_eq!(next().await, ("DELETED".into(), "web-1".into()));
    kube.apply(pod("default", "db-0", json!({"app": "web"})));
    assert_eq!(next().await, ("ADDED".into(), "db-0".into()));

    // A watch from an old resourceVersion replays what happened since, in order.
    let rv = kube.resource_version();
    kube.apply(pod("default", "x", json!({})));
    kube.delete("v1", "Pod", Some("default"), "x");
    let replay: Vec<_> = pods.watch(&WatchParams::default().timeout(1), &rv.to_string()).await.unwrap().try_collect().await.unwrap();
    let kinds: Vec<&str> = replay
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Deleted(_) => "DELETED",
            _ => "OTHER",
        })
        .collect();
    assert_eq!(kinds, ["ADDED", "DELETED"]);

    // Streaming lists (sendInitialEvents) with a reflector, and paged lists.
    let (store, errors, task) = start_reflector(client.clone(), watcher::Config::default().streaming_lists());
    eventually("streaming list", || names(&store) == BTreeSet::from(["web-1".into(), "db-0".into()])).await;
    kube.apply(pod("kube-system", "coredns", json!({})));
    eventually("watch after streaming list", || names(&store).contains("coredns")).await;
    assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());
    task.abort();
    let (store, errors, task) = start_reflector(client, watcher::Config::default().page_size(1));
    eventually("paged list", || names(&store).len() == 3).await;
    assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());
    task.abort();
}

#[tokio::test]
async fn paged_lists_are_consistent_snapshots() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pods: Api<Pod> = Api::namespaced(client_for(&kube, dir.path()).await, "default");
    for name in ["a", "b", "c"] {
        kube.apply(pod("default", name, json!({})));
    }
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    let token = first.metadata.continue_.clone().expect("continue token");

    // Changes after the first page do not show in the rest of the same list.
    kube.apply(pod("default", "d", json!({})));
    kube.delete("v1", "Pod", Some("default"), "c");
    let rest = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(rest.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(rest.metadata.continue_, None);
    assert_eq!(rest.metadata.resource_version, first.metadata.resource_version);

    kube.compact();
    let err = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err();
    assert_eq!(api_code(&err), (410, "Expired".into()));
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pods: Api<Pod> = Api::namespaced(client_for(&kube, dir.path()).await, "default");
    let mut p = pod("default", "held", json!({}));
    p["metadata"]["finalizers"] = json!(["labops.dev/hold"]);
    pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap()).await.unwrap();

    let marked = pods.delete("held", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(pods.get("held").await.is_ok(), "still there while the finalizer is");
    pods.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(api_code(&pods.get("held").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn wire_format_matches_the_api_server() {
    let kube = FakeKube::start_with(Options { bookmark_interval: Duration::from_millis(100), ..Options::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&kube, dir.path()).await;
    let get = |uri: &str| http::Request::get(uri).body(Vec::new()).unwrap();
    kube.apply(pod("default", "a", json!({"app": "web"})));

    let list: Value = serde_json::from_str(&client.request_text(get("/api/v1/pods")).await.unwrap()).unwrap();
    assert_eq!((list["kind"].as_str(), list["apiVersion"].as_str()), (Some("PodList"), Some("v1")));
    assert_eq!(list["metadata"]["resourceVersion"], json!(kube.resource_version().to_string()));
    let item = &list["items"][0];
    assert_eq!((item["kind"].as_str(), item["apiVersion"].as_str()), (Some("Pod"), Some("v1")));
    for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
        assert!(item["metadata"].get(field).is_some(), "{field}");
    }

    // Errors are Status objects with details.
    let err = client.request_text(get("/api/v1/namespaces/default/pods/nope")).await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!("{err:?}") };
    assert_eq!((status.code, status.reason.as_str(), status.message.as_str()), (404, "NotFound", "pods \"nope\" not found"));
    assert_eq!(status.details.unwrap().kind, "pods");

    // Idle watches get bookmarks; a compacted resourceVersion gets an in-stream 410.
    let rv = kube.resource_version();
    let text = client.request_text(get(&format!("/api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"))).await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l["type"] == "BOOKMARK"), "{text}");
    assert_eq!(lines[0]["object"]["metadata"]["resourceVersion"], json!(rv.to_string()));
    kube.compact();
    let text = client.request_text(get(&format!("/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion={rv}"))).await.unwrap();
    let line: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["type"], "ERROR");
    assert_eq!((line["object"]["kind"].as_str(), line["object"]["code"].as_u64()), (Some("Status"), Some(410)));
    assert_eq!(line["object"]["reason"], "Expired");

    // Without a resourceVersion, a watch starts with the current objects.
    let text = client.request_text(get("/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1")).await.unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("a")));
}
