//! The object store behind the fake API server: objects per resource, a global
//! resourceVersion counter (like etcd's revision), a bounded event history for watches, and
//! the write semantics of the real API server (create, update, patch, apply, delete, status
//! and scale subresources, finalizers, generation, managed fields).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Map, Value};

use crate::fields::{self, Scope};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::util::{now_rfc3339, Rng};

/// (namespace or empty for cluster-scoped, name).
pub(crate) type Key = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, kept in the history that watches replay from.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// Index of the resource type.
    pub res: usize,
    pub ty: EventType,
    /// The object after the change; for deletions the last state with the deletion's rv.
    pub obj: Value,
    /// The object before the change (`None` for creations).
    pub prev: Option<Value>,
}

/// A failure answered as a Kubernetes `Status` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

fn details(rt: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": rt.plural});
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    d
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    /// An error for a status code alone, with the reason Kubernetes uses for it.
    pub(crate) fn from_code(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "the server rejected our request for an unknown reason"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden"),
            404 => ("NotFound", "the server could not find the requested resource"),
            405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
            409 => ("Conflict", "the server reported a conflict"),
            410 => ("Expired", "the resource version is too old"),
            429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
            500 => ("InternalError", "an error on the server has prevented the request from succeeding"),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504 => ("Timeout", "the server was unable to return a response in the time allotted"),
            _ => ("", "the server answered with an error"),
        };
        Self::new(code, reason, message)
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(details(rt, name)),
            ..Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified()))
        }
    }

    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(details(rt, name)),
            ..Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", rt.qualified()))
        }
    }

    pub(crate) fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self {
            details: Some(details(rt, name)),
            ..Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {why}", rt.qualified()))
        }
    }

    pub(crate) fn stale(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(rt, name, "the object has been modified; please apply your changes to the latest version and try again")
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(rt: &ResourceType, name: &str, message: &str) -> Self {
        let mut d = json!({"name": name, "kind": rt.kind});
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        Self { details: Some(d), ..Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {message}", rt.kind)) }
    }

    pub(crate) fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object.
    pub(crate) fn to_json(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// Which endpoint a write came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Main,
    Status,
    Scale,
}

impl Sub {
    fn name(self) -> Option<&'static str> {
        match self {
            Sub::Main => None,
            Sub::Status => Some("status"),
            Sub::Scale => Some("scale"),
        }
    }
}

/// Per-request write options.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteCtx {
    /// Field manager (`fieldManager`, else the User-Agent's product).
    pub manager: String,
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    /// `force=true` on server-side apply.
    pub force: bool,
}

/// How a write's managedFields are produced.
enum Managers<'a> {
    /// A non-apply write by this manager.
    Update(&'a str),
    /// Already computed (server-side apply).
    Keep,
    /// In-process write: keep what the object says, else the stored entries.
    Raw,
}

/// The answer to a delete.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// Answered with the object (deleted, or marked for deletion while finalizers remain).
    Object(Value),
    /// Answered with a success `Status`.
    Status(Value),
}

/// All server state.
#[derive(Debug)]
pub(crate) struct State {
    pub resources: Vec<ResourceType>,
    objects: Vec<BTreeMap<Key, Value>>,
    /// The latest resourceVersion handed out.
    pub rv: u64,
    history: VecDeque<Event>,
    history_cap: usize,
    /// Events up to and including this rv may be gone: watches and snapshots from an older
    /// rv answer 410 Expired.
    pub compacted: u64,
    rng: Rng,
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).map(str::to_string)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata object")
}

/// The object without metadata and status: what a generation change is about.
fn spec_part(obj: &Value) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        m.remove(k);
    }
    m
}

fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    o
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

fn valid_name(rt: &ResourceType, name: &str) -> Result<(), String> {
    let label = rt.kind == "Namespace";
    let max = if label { 63 } else { 253 };
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() <= max && name.chars().all(ok_char) && edge(name.chars().next()) && edge(name.chars().last()) {
        return Ok(());
    }
    let what = if label { "RFC 1123 label" } else { "RFC 1123 subdomain" };
    let dot = if label { "" } else { " or '.'" };
    Err(format!(
        "metadata.name: Invalid value: \"{name}\": a lowercase {what} must consist of lower case alphanumeric \
         characters, '-'{dot}, and must start and end with an alphanumeric character"
    ))
}

/// The status a new object starts with when its resource has a status subresource.
fn initial_status(rt: &ResourceType) -> Value {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => json!({"phase": "Pending"}),
        ("", "Namespace") => json!({"phase": "Active"}),
        ("", "Service") => json!({"loadBalancer": {}}),
        _ => json!({}),
    }
}

impl State {
    pub(crate) fn new(resources: Vec<ResourceType>, history_cap: usize) -> Self {
        let objects = resources.iter().map(|_| BTreeMap::new()).collect();
        Self { resources, objects, rv: 1, history: VecDeque::new(), history_cap: history_cap.max(1), compacted: 0, rng: Rng::new() }
    }

    /// Adds a resource type (or returns the existing one with the same group/version/plural).
    pub(crate) fn register(&mut self, rt: ResourceType) -> usize {
        if let Some(i) = self.find_plural(&rt.group, &rt.version, &rt.plural) {
            self.resources[i] = rt;
            return i;
        }
        self.resources.push(rt);
        self.objects.push(BTreeMap::new());
        self.resources.len() - 1
    }

    pub(crate) fn find_plural(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.resources.iter().position(|r| r.group == group && r.version == version && r.plural == plural)
    }

    pub(crate) fn find_kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.resources.iter().position(|r| r.api_version() == api_version && r.kind == kind)
    }

    fn namespaces_res(&self) -> Option<usize> {
        self.find_plural("", "v1", "namespaces")
    }

    pub(crate) fn get(&self, res: usize, ns: &str, name: &str) -> Option<&Value> {
        self.objects[res].get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a resource, optionally in one namespace, ordered by namespace and name.
    pub(crate) fn current(&self, res: usize, ns: Option<&str>) -> Vec<Value> {
        self.objects[res].iter().filter(|((n, _), _)| ns.is_none_or(|want| n == want)).map(|(_, v)| v.clone()).collect()
    }

    /// Objects of a resource as they were at `rv`, rebuilt by undoing later events.
    pub(crate) fn at(&self, res: usize, ns: Option<&str>, rv: u64) -> Result<Vec<Value>, ApiError> {
        if rv >= self.rv {
            return Ok(self.current(res, ns));
        }
        if rv < self.compacted {
            return Err(ApiError::gone(format!("The resourceVersion for the provided list is too old: {rv} ({})", self.compacted)));
        }
        let mut objs = self.objects[res].clone();
        for ev in self.history.iter().rev().take_while(|e| e.rv > rv).filter(|e| e.res == res) {
            let key = (meta(&ev.obj, "namespace").unwrap_or_default(), meta(&ev.obj, "name").unwrap_or_default());
            match (&ev.ty, &ev.prev) {
                (EventType::Added, _) | (_, None) => {
                    objs.remove(&key);
                }
                (_, Some(prev)) => {
                    objs.insert(key, prev.clone());
                }
            }
        }
        Ok(objs.into_iter().filter(|((n, _), _)| ns.is_none_or(|want| n == want)).map(|(_, v)| v).collect())
    }

    /// Events after `rv`, oldest first.
    pub(crate) fn events_after(&self, rv: u64) -> impl Iterator<Item = &Event> {
        let start = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(start..)
    }

    /// Forgets all history and moves the resourceVersion on (without a change), so every
    /// rv handed out so far, the latest included, answers 410 Expired.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
    }

    fn push_event(&mut self, ev: Event) {
        self.history.push_back(ev);
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = self.compacted.max(old.rv);
            }
        }
    }

    /// Stores `obj` (create or modify) under a new resourceVersion and records the event.
    fn commit(&mut self, res: usize, mut obj: Value, prev: Option<Value>) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let key = (meta(&obj, "namespace").unwrap_or_default(), meta(&obj, "name").unwrap_or_default());
        self.objects[res].insert(key, obj.clone());
        let ty = if prev.is_some() { EventType::Modified } else { EventType::Added };
        self.push_event(Event { rv: self.rv, res, ty, obj: obj.clone(), prev });
        obj
    }

    /// Removes an object under a new resourceVersion and records the event.
    fn commit_delete(&mut self, res: usize, key: &Key) -> Option<Value> {
        let prev = self.objects[res].remove(key)?;
        self.rv += 1;
        let mut obj = prev.clone();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.push_event(Event { rv: self.rv, res, ty: EventType::Deleted, obj: obj.clone(), prev: Some(prev) });
        Some(obj)
    }

    /// Checks type fields and names a new object: apiVersion/kind, name or generateName,
    /// namespace against the URL.
    fn normalize_new(&mut self, res: usize, url_ns: Option<&str>, mut obj: Value) -> Result<Value, ApiError> {
        let rt = self.resources[res].clone();
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request was in an unknown format"));
        }
        check_type(&rt, &obj)?;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let m = meta_mut(&mut obj);
        let name = match m.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match m.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", self.rng.suffix()),
                None => {
                    return Err(ApiError::invalid(&rt, "", "metadata.name: Required value: name or generateName is required"))
                }
            },
        };
        valid_name(&rt, &name).map_err(|e| ApiError::invalid(&rt, &name, &e))?;
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        let body_ns = m.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string);
        if rt.namespaced {
            let ns = match (url_ns, body_ns) {
                (Some(u), Some(b)) if u != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                (Some(u), _) => u.to_string(),
                (None, Some(b)) => b,
                (None, None) => return Err(ApiError::bad_request(format!("{} {name:?}: metadata.namespace is required", rt.kind))),
            };
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        Ok(obj)
    }

    /// Stores a new object: namespace must exist, name must be free; server-owned metadata
    /// and the initial status are set.
    fn finish_create(&mut self, res: usize, mut obj: Value, managers: Managers, ctx: &WriteCtx) -> Result<Value, ApiError> {
        let rt = self.resources[res].clone();
        let ns = meta(&obj, "namespace").unwrap_or_default();
        let name = meta(&obj, "name").unwrap_or_default();
        if rt.namespaced {
            let ns_res = self.namespaces_res().expect("namespaces are always served");
            match self.get(ns_res, "", &ns) {
                None => return Err(ApiError::not_found(&self.resources[ns_res], &ns)),
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", rt.qualified()),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.get(res, &ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt, &name));
        }
        let now = now_rfc3339();
        let uid = self.rng.uid();
        let m = meta_mut(&mut obj);
        for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            m.remove(k);
        }
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(now));
        m.insert("generation".into(), json!(1));
        if rt.has_status {
            obj["status"] = initial_status(&rt);
        }
        if let Managers::Update(manager) = managers {
            meta_mut(&mut obj).remove("managedFields");
            let scope = Scope::Main { status_subresource: rt.has_status };
            fields::record_update(&mut obj, None, manager, scope, None, &rt.api_version(), &now);
        }
        if ctx.dry_run {
            return Ok(obj);
        }
        Ok(self.commit(res, obj, None))
    }

    /// `POST` to a collection.
    pub(crate) fn create(&mut self, res: usize, url_ns: Option<&str>, body: Value, ctx: &WriteCtx) -> Result<Value, ApiError> {
        if meta(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        let obj = self.normalize_new(res, url_ns, body)?;
        self.finish_create(res, obj, Managers::Update(&ctx.manager), ctx)
    }

    /// The shared tail of every update: server-owned fields from the stored object, status or
    /// spec kept per subresource, generation, managed fields, no-op detection, and deletion
    /// once the last finalizer is gone.
    fn finish_update(
        &mut self,
        res: usize,
        old: Value,
        mut new: Value,
        sub: Sub,
        managers: Managers,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let rt = self.resources[res].clone();
        if sub == Sub::Status {
            // Only status changes through /status; metadata and spec stay as stored.
            let mut merged = old.clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    merged.as_object_mut().expect("object").remove("status");
                }
            }
            if let Some(mf) = new.pointer("/metadata/managedFields") {
                meta_mut(&mut merged).insert("managedFields".into(), mf.clone());
            }
            new = merged;
        } else if rt.has_status && !matches!(managers, Managers::Raw) {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
        let m = meta_mut(&mut new);
        let raw = matches!(managers, Managers::Raw);
        for k in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            if raw && m.contains_key(k) && !matches!(k, "name" | "namespace") {
                continue; // in-process writes may set these
            }
            match old_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        if !rt.namespaced {
            m.remove("namespace");
        }
        if spec_part(&old) != spec_part(&new) && !(raw && new.pointer("/metadata/generation") != old.pointer("/metadata/generation")) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        let now = now_rfc3339();
        match managers {
            Managers::Update(manager) => {
                let scope = if sub == Sub::Status { Scope::Status } else { Scope::Main { status_subresource: rt.has_status } };
                fields::record_update(&mut new, Some(&old), manager, scope, sub.name(), &rt.api_version(), &now);
            }
            Managers::Keep => {}
            Managers::Raw => {
                if new.pointer("/metadata/managedFields").is_none()
                    && let Some(mf) = old.pointer("/metadata/managedFields") {
                        meta_mut(&mut new).insert("managedFields".into(), mf.clone());
                    }
            }
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(old);
        }
        if ctx.dry_run {
            return Ok(new);
        }
        let stored = self.commit(res, new, Some(old));
        if stored.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&stored) {
            let key = (meta(&stored, "namespace").unwrap_or_default(), meta(&stored, "name").unwrap_or_default());
            return Ok(self.commit_delete(res, &key).unwrap_or(stored));
        }
        Ok(stored)
    }

    fn stored(&self, res: usize, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get(res, ns, name).cloned().ok_or_else(|| ApiError::not_found(&self.resources[res], name))
    }

    /// `PUT` to an object, its `/status` or its `/scale`.
    pub(crate) fn replace(&mut self, res: usize, ns: &str, name: &str, body: Value, sub: Sub, ctx: &WriteCtx) -> Result<Value, ApiError> {
        let rt = self.resources[res].clone();
        let old = self.stored(res, ns, name)?;
        if !body.is_object() {
            return Err(ApiError::bad_request("the body of the request was in an unknown format"));
        }
        if sub != Sub::Scale {
            check_type(&rt, &body)?;
        }
        check_identity(&rt, ns, name, &body)?;
        if meta(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty() && Some(&rv) != meta(&old, "resourceVersion").as_ref()) {
            return Err(ApiError::stale(&rt, name));
        }
        let new = if sub == Sub::Scale { scaled(&rt, &old, &body)? } else { body };
        self.finish_update(res, old, new, sub, Managers::Update(&ctx.manager), ctx)
    }

    /// `PATCH` with a JSON merge, strategic merge (handled as JSON merge), JSON or apply patch.
    /// Answers the object and whether it was created (apply only).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        sub: Sub,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), ApiError> {
        let rt = self.resources[res].clone();
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if media == "application/apply-patch+yaml" {
            return self.apply_patch(res, ns, name, body, sub, ctx);
        }
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let old = self.stored(res, ns, name)?;
        let mut target = if sub == Sub::Scale { scale_of(&rt, &old) } else { old.clone() };
        match media {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                fields::merge_patch(&mut target, &patch);
            }
            "application/json-patch+json" => {
                fields::json_patch(&mut target, &patch).map_err(|e| ApiError::invalid(&rt, name, &e))?;
            }
            other => {
                return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})")));
            }
        }
        // A patch that sets metadata.resourceVersion is a precondition on it.
        if let Some(rv) = meta(&target, "resourceVersion")
            && Some(rv) != meta(&old, "resourceVersion") {
                return Err(ApiError::stale(&rt, name));
            }
        check_identity(&rt, ns, name, &target)?;
        let new = if sub == Sub::Scale { scaled(&rt, &old, &target)? } else { target };
        Ok((self.finish_update(res, old, new, sub, Managers::Update(&ctx.manager), ctx)?, false))
    }

    fn apply_patch(&mut self, res: usize, ns: &str, name: &str, body: &[u8], sub: Sub, ctx: &WriteCtx) -> Result<(Value, bool), ApiError> {
        let rt = self.resources[res].clone();
        let mut applied: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding apply patch (the fake API server reads JSON apply bodies only): {e}"))
        })?;
        if !applied.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
        if sub == Sub::Scale {
            return Err(ApiError::new(415, "UnsupportedMediaType", "apply patches on /scale are not supported by the fake API server"));
        }
        for field in ["apiVersion", "kind"] {
            if applied.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(format!("{field} must be set")));
            }
        }
        check_type(&rt, &applied)?;
        check_identity(&rt, ns, name, &applied)?;
        if applied.pointer("/metadata/managedFields").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let m = meta_mut(&mut applied);
        m.insert("name".into(), json!(name));
        if rt.namespaced {
            m.insert("namespace".into(), json!(ns));
        }
        let want_rv = meta(&applied, "resourceVersion").filter(|rv| !rv.is_empty());
        let scope = if sub == Sub::Status { Scope::Status } else { Scope::Main { status_subresource: rt.has_status } };
        let now = now_rfc3339();
        let conflict = |c: Vec<fields::Conflict>| {
            let causes: Vec<Value> = c
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field}))
                .collect();
            let listed: Vec<String> = c.iter().map(|c| format!("conflict with \"{}\" using {}: {}", c.manager, c.api_version, c.field)).collect();
            let mut e = ApiError::stale(&rt, name);
            e.message = format!("Apply failed with {} conflict{}: {}", c.len(), if c.len() == 1 { "" } else { "s" }, listed.join("; "));
            if let Some(d) = e.details.as_mut() {
                d["causes"] = Value::Array(causes);
            }
            e
        };
        match self.get(res, ns, name).cloned() {
            None => {
                if want_rv.is_some() {
                    return Err(ApiError::not_found(&rt, name));
                }
                if sub != Sub::Main {
                    return Err(ApiError::not_found(&rt, name));
                }
                let mut obj = fields::apply(None, &applied, &ctx.manager, ctx.force, scope, &rt.api_version(), &now).map_err(conflict)?;
                let m = meta_mut(&mut obj);
                m.insert("name".into(), json!(name));
                if rt.namespaced {
                    m.insert("namespace".into(), json!(ns));
                }
                let obj = self.normalize_new(res, Some(ns).filter(|_| rt.namespaced), obj)?;
                Ok((self.finish_create(res, obj, Managers::Keep, ctx)?, true))
            }
            Some(old) => {
                if want_rv.is_some() && want_rv != meta(&old, "resourceVersion") {
                    return Err(ApiError::stale(&rt, name));
                }
                let new = fields::apply(Some(&old), &applied, &ctx.manager, ctx.force, scope, &rt.api_version(), &now).map_err(conflict)?;
                Ok((self.finish_update(res, old, new, sub, Managers::Keep, ctx)?, false))
            }
        }
    }

    /// `DELETE` an object, honouring preconditions and finalizers; deleting a namespace
    /// deletes its contents.
    pub(crate) fn delete(&mut self, res: usize, ns: &str, name: &str, opts: &Value, dry_run: bool) -> Result<Deleted, ApiError> {
        let rt = self.resources[res].clone();
        let old = self.stored(res, ns, name)?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
            let have = meta(&old, "uid").unwrap_or_default();
            if uid != have {
                return Err(ApiError::conflict(&rt, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}")));
            }
        }
        if let Some(rv) = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str) {
            let have = meta(&old, "resourceVersion").unwrap_or_default();
            if rv != have {
                return Err(ApiError::conflict(&rt, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}")));
            }
        }
        if dry_run {
            return Ok(Deleted::Object(old));
        }
        if rt.kind == "Namespace" && rt.group.is_empty() {
            self.delete_namespace_contents(name);
        }
        let key = (ns.to_string(), name.to_string());
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(Deleted::Object(old));
            }
            let mut marked = old.clone();
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok(Deleted::Object(self.commit(res, marked, Some(old))));
        }
        let gone = self.commit_delete(res, &key).expect("object exists");
        if rt.group.is_empty() && matches!(rt.kind.as_str(), "Pod" | "Namespace") {
            return Ok(Deleted::Object(gone));
        }
        let mut d = details(&rt, name);
        d["uid"] = json!(meta(&old, "uid").unwrap_or_default());
        Ok(Deleted::Status(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})))
    }

    fn delete_namespace_contents(&mut self, ns: &str) {
        for res in 0..self.resources.len() {
            if !self.resources[res].namespaced {
                continue;
            }
            let keys: Vec<Key> = self.objects[res].keys().filter(|(n, _)| n == ns).cloned().collect();
            for key in keys {
                let obj = self.objects[res][&key].clone();
                if has_finalizers(&obj) {
                    if obj.pointer("/metadata/deletionTimestamp").is_none() {
                        let mut marked = obj.clone();
                        meta_mut(&mut marked).insert("deletionTimestamp".into(), json!(now_rfc3339()));
                        self.commit(res, marked, Some(obj));
                    }
                } else {
                    self.commit_delete(res, &key);
                }
            }
        }
    }

    /// `DELETE` on a collection: deletes what the selectors match; answers the list of them.
    pub(crate) fn delete_collection(
        &mut self,
        res: usize,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields_sel: &FieldSelector,
        dry_run: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let targets: Vec<Value> = self.current(res, ns).into_iter().filter(|o| labels.matches(o) && fields_sel.matches(o)).collect();
        let mut out = Vec::new();
        for t in targets {
            let (ons, name) = (meta(&t, "namespace").unwrap_or_default(), meta(&t, "name").unwrap_or_default());
            match self.delete(res, &ons, &name, &Value::Null, dry_run)? {
                Deleted::Object(o) => out.push(o),
                Deleted::Status(_) => out.push(t),
            }
        }
        Ok(out)
    }

    /// In-process create-or-replace: the object is stored as given (status included);
    /// missing server fields are filled, uid and creationTimestamp kept from a stored object.
    pub(crate) fn put_raw(&mut self, obj: Value) -> Result<Value, String> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).ok_or("the object has no apiVersion")?;
        let kind = obj.get("kind").and_then(Value::as_str).ok_or("the object has no kind")?;
        let res = self.find_kind(api_version, kind).ok_or_else(|| format!("{api_version} {kind} is not served"))?;
        let rt = self.resources[res].clone();
        let name = meta(&obj, "name").filter(|n| !n.is_empty()).ok_or("the object has no metadata.name")?;
        valid_name(&rt, &name)?;
        let ns = if rt.namespaced {
            meta(&obj, "namespace").filter(|n| !n.is_empty()).ok_or_else(|| format!("{kind} {name:?} has no metadata.namespace"))?
        } else {
            String::new()
        };
        let ctx = WriteCtx::default();
        match self.get(res, &ns, &name).cloned() {
            Some(old) => self.finish_update(res, old, obj, Sub::Main, Managers::Raw, &ctx).map_err(|e| e.message),
            None => {
                let mut obj = obj;
                let uid = self.rng.uid();
                let m = meta_mut(&mut obj);
                m.remove("resourceVersion");
                if !rt.namespaced {
                    m.remove("namespace");
                }
                m.entry("uid").or_insert_with(|| json!(uid));
                m.entry("creationTimestamp").or_insert_with(|| json!(now_rfc3339()));
                m.entry("generation").or_insert_with(|| json!(1));
                Ok(self.commit(res, obj, None))
            }
        }
    }

    /// In-process delete: removes the object at once, whatever its finalizers.
    pub(crate) fn delete_raw(&mut self, res: usize, ns: &str, name: &str) -> Option<Value> {
        let rt = &self.resources[res];
        if rt.kind == "Namespace" && rt.group.is_empty() {
            for r in 0..self.resources.len() {
                if self.resources[r].namespaced {
                    let keys: Vec<Key> = self.objects[r].keys().filter(|(n, _)| n == name).cloned().collect();
                    for key in keys {
                        self.commit_delete(r, &key);
                    }
                }
            }
        }
        self.commit_delete(res, &(ns.to_string(), name.to_string()))
    }
}

/// apiVersion and kind in a body, when given, must be the resource's.
fn check_type(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str).filter(|s| !s.is_empty())
        && av != rt.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
    if let Some(kind) = body.get("kind").and_then(Value::as_str).filter(|s| !s.is_empty())
        && kind != rt.kind {
            return Err(ApiError::bad_request(format!("the kind in the data ({kind}) does not match the expected kind ({})", rt.kind)));
        }
    Ok(())
}

/// Name and namespace in a body, when given, must be the URL's.
fn check_identity(rt: &ResourceType, ns: &str, name: &str, body: &Value) -> Result<(), ApiError> {
    if let Some(n) = meta(body, "name").filter(|n| !n.is_empty())
        && n != name {
            return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({name})")));
        }
    if rt.namespaced
        && let Some(n) = meta(body, "namespace").filter(|n| !n.is_empty())
            && n != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
    Ok(())
}

/// The `autoscaling/v1` `Scale` view of an object.
pub(crate) fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let mut selector = Vec::new();
    if let Some(Value::Object(labels)) = obj.pointer("/spec/selector/matchLabels") {
        for (k, v) in labels {
            selector.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    let mut m = Map::new();
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = obj.pointer(&format!("/metadata/{k}")) {
            m.insert(k.into(), v.clone());
        }
    }
    if !rt.namespaced {
        m.remove("namespace");
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": m,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector.join(","),
        },
    })
}

/// The object with `spec.replicas` taken from a `Scale`.
fn scaled(rt: &ResourceType, old: &Value, scale: &Value) -> Result<Value, ApiError> {
    let name = meta(old, "name").unwrap_or_default();
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::invalid(rt, &name, "spec.replicas: Invalid value: must be a non-negative integer"))?;
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(replicas);
    Ok(new)
}
