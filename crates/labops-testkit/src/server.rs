//! The HTTP side: routes Kubernetes API paths to the store, answers errors as `Status`
//! objects, and streams watches as newline-delimited JSON events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::Router;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{Method, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::resources::{self, ResourceType, AGGREGATED_CONTENT_TYPE};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Deleted, Event, EventType, Sub, WriteCtx};
use crate::{RequestRecord, Shared};

/// The router: every path goes through [`handle`].
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: u16, value: &Value) -> Response {
    let mut resp = Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_json())
}

async fn handle(State(sh): State<Arc<Shared>>, method: Method, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let resp = dispatch(&sh, &method, &headers, &path, &query, &body).unwrap_or_else(|e| error_response(&e));
    sh.record(RequestRecord { method: method.to_string(), path, query, status: resp.status().as_u16() });
    resp
}

/// Query parameters by name (the last one wins).
struct Query(HashMap<String, String>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

fn dispatch(sh: &Arc<Shared>, method: &Method, headers: &HeaderMap, path: &str, query: &str, body: &[u8]) -> Result<Response, ApiError> {
    if let Some(token) = &sh.token {
        let want = format!("Bearer {token}");
        if headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return Err(ApiError::from_code(401));
        }
    }
    let fail = sh.fail_all.load(Ordering::SeqCst);
    if fail != 0 {
        return Err(ApiError::from_code(fail));
    }
    let q = Query(crate::util::parse_query(query).into_iter().collect());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let aggregated = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|first| first.contains("as=APIGroupDiscoveryList")));
    let discovery = |doc: Option<Value>| -> Result<Response, ApiError> {
        if *method != Method::GET {
            return Err(ApiError::from_code(405));
        }
        doc.map(|d| json_response(200, &d)).ok_or_else(|| ApiError::from_code(404))
    };
    let aggregated_response = |core: bool| -> Result<Response, ApiError> {
        if *method != Method::GET {
            return Err(ApiError::from_code(405));
        }
        let doc = sh.read(|st| resources::aggregated(&st.resources, core));
        let mut resp = json_response(200, &doc);
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(AGGREGATED_CONTENT_TYPE));
        Ok(resp)
    };
    match segs.as_slice() {
        ["version"] => discovery(Some(resources::version_info())),
        ["healthz" | "readyz" | "livez"] => {
            let mut resp = Response::new(Body::from("ok"));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(resp)
        }
        ["api"] if aggregated => aggregated_response(true),
        ["apis"] if aggregated => aggregated_response(false),
        ["api"] => discovery(Some(resources::core_versions(&sh.addr.to_string()))),
        ["apis"] => discovery(Some(sh.read(|st| resources::group_list(&st.resources)))),
        ["apis", g] => discovery(sh.read(|st| resources::group(&st.resources, g))),
        ["api", v] => discovery(sh.read(|st| resources::resource_list(&st.resources, "", v))),
        ["apis", g, v] => discovery(sh.read(|st| resources::resource_list(&st.resources, g, v))),
        ["api", v, rest @ ..] => resource(sh, method, headers, &q, "", v, rest, body),
        ["apis", g, v, rest @ ..] => resource(sh, method, headers, &q, g, v, rest, body),
        _ => Err(ApiError::from_code(404)),
    }
}

fn write_ctx(headers: &HeaderMap, q: &Query) -> WriteCtx {
    let agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).and_then(|ua| ua.split('/').next()).filter(|s| !s.is_empty());
    WriteCtx {
        manager: q.get("fieldManager").or(agent).unwrap_or("unknown").to_string(),
        dry_run: q.get("dryRun") == Some("All"),
        force: q.flag("force"),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as JSON: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn resource(
    sh: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    q: &Query,
    group: &str,
    version: &str,
    rest: &[&str],
    body: &[u8],
) -> Result<Response, ApiError> {
    // Resolve /namespaces/{ns}/{plural}/... first, then /{plural}/...
    let owned = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let resolved: Option<(usize, Option<String>, Vec<String>)> = sh.read(|st| {
        if let ["namespaces", ns, plural, tail @ ..] = rest
            && let Some(i) = st.find_plural(group, version, plural).filter(|i| st.resources[*i].namespaced) {
                return Some((i, Some(ns.to_string()), owned(tail)));
            }
        let (plural, tail) = rest.split_first()?;
        let i = st.find_plural(group, version, plural)?;
        Some((i, None, owned(tail)))
    });
    let (res, ns, tail) = resolved.ok_or_else(|| ApiError::from_code(404))?;
    let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
    let rt: ResourceType = sh.read(|st| st.resources[res].clone());
    if !rt.namespaced && ns.is_some() {
        return Err(ApiError::from_code(404));
    }
    let ctx = write_ctx(headers, q);
    match tail.as_slice() {
        [] => collection(sh, method, q, res, &rt, ns.as_deref(), &ctx, body),
        [name] | [name, _] => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::from_code(404));
            }
            let sub = match tail.get(1) {
                None => Sub::Main,
                Some(&"status") if rt.has_status => Sub::Status,
                Some(&"scale") if rt.has_scale => Sub::Scale,
                Some(_) => return Err(ApiError::from_code(404)),
            };
            object(sh, method, headers, res, &rt, ns.as_deref().unwrap_or_default(), name, sub, &ctx, body)
        }
        _ => Err(ApiError::from_code(404)),
    }
}

#[allow(clippy::too_many_arguments)]
fn collection(
    sh: &Arc<Shared>,
    method: &Method,
    q: &Query,
    res: usize,
    rt: &ResourceType,
    ns: Option<&str>,
    ctx: &WriteCtx,
    body: &[u8],
) -> Result<Response, ApiError> {
    match *method {
        Method::GET if q.flag("watch") => watch(sh, q, res, rt, ns),
        Method::GET => list(sh, q, res, rt, ns),
        Method::POST => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::from_code(405));
            }
            let obj = parse_body(body)?;
            let created = sh.write(|st| st.create(res, ns, obj, ctx))?;
            Ok(json_response(201, &created))
        }
        Method::DELETE => {
            let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), rt).map_err(ApiError::bad_request)?;
            let items = sh.write(|st| st.delete_collection(res, ns, &labels, &fields, ctx.dry_run))?;
            let rv = sh.read(|st| st.rv);
            Ok(json_response(200, &list_doc(rt, rv, items, None, None)))
        }
        _ => Err(ApiError::from_code(405)),
    }
}

fn list_doc(rt: &ResourceType, rv: u64, items: Vec<Value>, cont: Option<String>, remaining: Option<usize>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items})
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

fn too_large(rv: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {current}"));
    e.details = Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}));
    e
}

fn key_of(obj: &Value) -> (String, String) {
    let m = |f: &str| obj.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default().to_string();
    (m("namespace"), m("name"))
}

fn list(sh: &Arc<Shared>, q: &Query, res: usize, rt: &ResourceType, ns: Option<&str>) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), rt).map_err(ApiError::bad_request)?;
    let limit = q.get("limit").map(|l| l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))).transpose()?.filter(|l| *l > 0);
    let rv = q.get("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = q.get("resourceVersionMatch").filter(|s| !s.is_empty());
    let invalid = |msg: &str| ApiError::new(422, "Invalid", format!("ListOptions.meta.k8s.io \"\" is invalid: {msg}"));
    let cont = q.get("continue").filter(|s| !s.is_empty());
    if cont.is_some() && rv.is_some_and(|r| r != "0") {
        return Err(invalid("resourceVersion: Forbidden: specifying resource version is not allowed when using continue"));
    }
    if rv_match.is_some() && rv.is_none() {
        return Err(invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"));
    }
    if rv_match == Some("Exact") && rv == Some("0") {
        return Err(invalid("resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
    }
    if let Some(m) = rv_match.filter(|m| !matches!(*m, "Exact" | "NotOlderThan")) {
        return Err(invalid(&format!("resourceVersionMatch: Unsupported value: \"{m}\"")));
    }
    let after = match cont {
        Some(c) => {
            let mut parts = c.splitn(3, '/');
            let (Some(rv), Some(cns), Some(cname)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
            };
            Some((parse_rv(rv)?, (cns.to_string(), cname.to_string())))
        }
        None => None,
    };
    sh.read(|st| {
        let snapshot = match (&after, rv, rv_match) {
            (Some((crv, _)), _, _) => {
                if *crv < st.compacted {
                    return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
                }
                *crv
            }
            (None, Some(r), Some("Exact")) => {
                let r = parse_rv(r)?;
                if r > st.rv {
                    return Err(too_large(r, st.rv));
                }
                r
            }
            (None, Some(r), _) if r != "0" => {
                let r = parse_rv(r)?;
                if r > st.rv {
                    return Err(too_large(r, st.rv));
                }
                st.rv
            }
            _ => st.rv,
        };
        let mut items: Vec<Value> = st.at(res, ns, snapshot)?.into_iter().filter(|o| labels.matches(o) && fields.matches(o)).collect();
        if let Some((_, key)) = &after {
            items.retain(|o| key_of(o) > *key);
        }
        let (mut cont, mut remaining) = (None, None);
        if let Some(limit) = limit
            && items.len() > limit {
                let rest = items.split_off(limit);
                let (lns, lname) = key_of(items.last().expect("limit > 0"));
                cont = Some(format!("{snapshot}/{lns}/{lname}"));
                if q.get("labelSelector").is_none_or(str::is_empty) && q.get("fieldSelector").is_none_or(str::is_empty) {
                    remaining = Some(rest.len());
                }
            }
        Ok(json_response(200, &list_doc(rt, snapshot, items, cont, remaining)))
    })
}

#[allow(clippy::too_many_arguments)]
fn object(
    sh: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    res: usize,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    sub: Sub,
    ctx: &WriteCtx,
    body: &[u8],
) -> Result<Response, ApiError> {
    match *method {
        Method::GET => {
            let obj = sh.read(|st| st.get(res, ns, name).cloned()).ok_or_else(|| ApiError::not_found(rt, name))?;
            let obj = if sub == Sub::Scale { crate::store::scale_of(rt, &obj) } else { obj };
            Ok(json_response(200, &obj))
        }
        Method::PUT => {
            let obj = parse_body(body)?;
            let out = sh.write(|st| st.replace(res, ns, name, obj, sub, ctx))?;
            let out = if sub == Sub::Scale { crate::store::scale_of(rt, &out) } else { out };
            Ok(json_response(200, &out))
        }
        Method::PATCH => {
            let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let (out, created) = sh.write(|st| st.patch(res, ns, name, ct, body, sub, ctx))?;
            let out = if sub == Sub::Scale { crate::store::scale_of(rt, &out) } else { out };
            Ok(json_response(if created { 201 } else { 200 }, &out))
        }
        Method::DELETE if sub == Sub::Main => {
            let opts = if body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { parse_body(body)? };
            let dry = ctx.dry_run || opts.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|v| v == "All"));
            match sh.write(|st| st.delete(res, ns, name, &opts, dry))? {
                Deleted::Object(o) => Ok(json_response(200, &o)),
                Deleted::Status(s) => Ok(json_response(200, &s)),
            }
        }
        _ => Err(ApiError::from_code(405)),
    }
}

/// Counts an open watch for as long as its stream lives.
struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One open watch stream.
struct Watch {
    sh: Arc<Shared>,
    res: usize,
    kind: String,
    api_version: String,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    /// Everything up to this rv has been considered.
    last_rv: u64,
    pending: VecDeque<Value>,
    deadline: Instant,
    next_bookmark: Instant,
    interval: Duration,
    changes: tokio::sync::watch::Receiver<u64>,
    control: tokio::sync::watch::Receiver<u64>,
    epoch: u64,
    done: bool,
    _guard: WatchGuard,
}

fn event(ty: &str, obj: &Value) -> Value {
    json!({"type": ty, "object": obj})
}

impl Watch {
    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn in_scope(&self, obj: &Value) -> bool {
        self.ns.as_deref().is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    }

    /// The event a watcher with these selectors sees for a change, as the API server's
    /// watch cache does: objects moving into the selection are ADDED, out of it DELETED.
    fn translate(&self, ev: &Event) -> Option<Value> {
        if ev.res != self.res || !self.in_scope(&ev.obj) {
            return None;
        }
        match ev.ty {
            EventType::Added => self.selects(&ev.obj).then(|| event("ADDED", &ev.obj)),
            EventType::Deleted => self.selects(&ev.obj).then(|| event("DELETED", &ev.obj)),
            EventType::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.selects(p));
                match (before, self.selects(&ev.obj)) {
                    (true, true) => Some(event("MODIFIED", &ev.obj)),
                    (false, true) => Some(event("ADDED", &ev.obj)),
                    (true, false) => {
                        let mut gone = ev.prev.clone().unwrap_or_default();
                        gone["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
                        Some(event("DELETED", &gone))
                    }
                    (false, false) => None,
                }
            }
        }
    }

    fn bookmark(&self, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": self.last_rv.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event("BOOKMARK", &json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": meta}))
    }

    /// Queues the events after `last_rv`, or the 410 error when they are no longer kept.
    fn catch_up(&mut self) {
        let sh = self.sh.clone();
        sh.read(|st| {
            if self.last_rv < st.compacted {
                let e = ApiError::gone(format!("too old resource version: {} ({})", self.last_rv, st.compacted));
                self.pending.push_back(event("ERROR", &e.to_json()));
                self.done = true;
                return;
            }
            let out: Vec<Value> = st.events_after(self.last_rv).filter_map(|ev| self.translate(ev)).collect();
            self.pending.extend(out);
            self.last_rv = st.rv;
        });
    }

    /// The next line of the stream, or `None` when the watch ends.
    async fn next_line(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                return Some((Ok(Bytes::from(line)), self));
            }
            if self.done || *self.control.borrow() != self.epoch {
                return None;
            }
            self.changes.borrow_and_update();
            self.catch_up();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let wake = if self.bookmarks { self.deadline.min(self.next_bookmark) } else { self.deadline };
            tokio::select! {
                r = self.changes.changed() => if r.is_err() { return None },
                r = self.control.changed() => if r.is_err() { return None },
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= self.deadline {
                        return None;
                    }
                    let bm = self.bookmark(false);
                    self.pending.push_back(bm);
                    self.next_bookmark = Instant::now() + self.interval;
                }
            }
        }
    }
}

fn watch(sh: &Arc<Shared>, q: &Query, res: usize, rt: &ResourceType, ns: Option<&str>) -> Result<Response, ApiError> {
    let fail = sh.fail_watch.load(Ordering::SeqCst);
    if fail != 0 {
        return Err(ApiError::from_code(fail));
    }
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), rt).map_err(ApiError::bad_request)?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true");
    let rv = q.get("resourceVersion").unwrap_or_default();
    if send_initial == Some(true) {
        let invalid = |msg: &str| ApiError::new(422, "Invalid", format!("ListOptions.meta.k8s.io \"\" is invalid: {msg}"));
        if q.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(invalid("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
        }
        if !bookmarks {
            return Err(invalid("allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"));
        }
    }
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).filter(|t| *t > 0).unwrap_or(1800);
    let now = Instant::now();
    sh.open_watches.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(sh.clone());
    let mut w = Watch {
        sh: sh.clone(),
        res,
        kind: rt.kind.clone(),
        api_version: rt.api_version(),
        ns: ns.map(str::to_string),
        labels,
        fields,
        bookmarks,
        last_rv: 0,
        pending: VecDeque::new(),
        deadline: now + Duration::from_secs(timeout),
        next_bookmark: now + sh.bookmark_interval,
        interval: sh.bookmark_interval,
        changes: sh.changes.subscribe(),
        control: sh.control.subscribe(),
        epoch: 0,
        done: false,
        _guard: guard,
    };
    w.epoch = *w.control.borrow_and_update();
    let synthetic = send_initial == Some(true) || ((rv.is_empty() || rv == "0") && send_initial != Some(false));
    sh.read(|st| {
        if synthetic || rv.is_empty() || rv == "0" {
            if synthetic {
                let initial: Vec<Value> =
                    st.current(res, ns).into_iter().filter(|o| w.selects(o)).map(|o| event("ADDED", &o)).collect();
                w.pending.extend(initial);
            }
            w.last_rv = st.rv;
        } else {
            let n = parse_rv(rv)?;
            if n > st.rv {
                return Err(too_large(n, st.rv));
            }
            w.last_rv = n;
        }
        Ok(())
    })?;
    if send_initial == Some(true) {
        let bm = w.bookmark(true);
        w.pending.push_back(bm);
    }
    let stream = futures::stream::unfold(w, Watch::next_line);
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
