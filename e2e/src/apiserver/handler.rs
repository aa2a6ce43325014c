//! The REST protocol: routing of Kubernetes API paths, the verbs (get, list, watch, create,
//! update, patch, delete, deletecollection) with their semantics (resourceVersion conflicts,
//! status subresources, generation, finalizers, garbage collection, pagination, watch
//! resumption, bookmarks, 410 Gone), discovery, errors as `Status` objects, authorization and
//! fault injection. Entry point: [`Server::handle`].

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};
use purelb::k8s_openapi::jiff;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{
    builtin,
    faults::{FaultRequest, Faults, Verdict},
    patch::{self, PatchType},
    protobuf,
    rbac::{self, Attributes, Identity},
    registry::{Registry, ResKey, ResourceDef, View},
    selectors::{FieldSelector, LabelSelector},
    store::{ChangeKind, Store, Write},
    table,
    validation::{self, FieldValidation},
};

/// A response body: a whole JSON document or a stream of watch lines.
#[derive(Debug)]
pub enum ResponseBody {
    /// A complete body (taken on the first poll).
    Full(Option<Bytes>),
    /// Chunks as they come; the stream ends when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

/// A request as the server sees it.
#[derive(Debug)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

/// Decodes `a=b&c=%2Fd` into a map (last value wins).
#[must_use]
pub fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Resp = Response<ResponseBody>;

fn json_response(code: StatusCode, value: &Value) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `Status` failure.
#[must_use]
pub fn status_response(code: u16, reason: &str, message: &str, details: Option<Value>) -> Resp {
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        status["details"] = d;
    }
    json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &status)
}

struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }
    fn details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }
    fn into_response(self) -> Resp {
        status_response(self.code, self.reason, &self.message, self.details)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// What a path addresses.
struct Target {
    def: ResourceDef,
    version: String,
    namespace: String,
    name: String,
    subresource: String,
}

impl Target {
    fn qualified(&self) -> String {
        if self.def.group.is_empty() {
            self.def.plural.clone()
        } else {
            format!("{}.{}", self.def.plural, self.def.group)
        }
    }
    fn details(&self, name: &str) -> Value {
        json!({"name": name, "group": self.def.group, "kind": self.def.plural})
    }
    fn not_found(&self, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", self.qualified())).details(self.details(name))
    }
    fn conflict(&self, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                self.qualified()
            ),
        )
        .details(self.details(name))
    }
    fn key(&self) -> ResKey {
        self.def.storage_key()
    }
    fn resource_with_sub(&self) -> String {
        if self.subresource.is_empty() {
            self.def.plural.clone()
        } else {
            format!("{}/{}", self.def.plural, self.subresource)
        }
    }
}

/// User, token prefix, verb, resource: what [`Server`] counts requests by.
type RequestKey = (String, String, &'static str, String);

/// The emulated API server.
#[derive(Debug)]
pub struct Server {
    /// Stored objects.
    pub store: Store,
    /// Served resources.
    pub registry: RwLock<Registry>,
    /// Fault switches.
    pub faults: Faults,
    /// Bearer token → identity.
    pub tokens: Mutex<HashMap<String, Identity>>,
    /// Enforce RBAC.
    pub authorize: bool,
    /// Interval between watch bookmarks.
    pub bookmark_interval: Duration,
    /// Families new Services get by default (`["IPv4"]`, `["IPv4","IPv6"]`, ...).
    pub service_families: Vec<String>,
    next_cluster_ip: Mutex<u32>,
    /// Requests served, by user, token (its first 8 characters: processes of one service
    /// account have tokens of their own), verb and resource (`GET /_emulator/requests`): how
    /// tests measure one client's API load.
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    /// Request bodies decoded from protobuf (`/_emulator/state`, so tests see the path ran).
    protobuf_bodies: std::sync::atomic::AtomicU64,
    /// Requests answered 409 Conflict ([`Self::conflict_count`]).
    conflicts: std::sync::atomic::AtomicU64,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

/// Converts a stored core/v1 Event into its events.k8s.io/v1 shape.
fn event_core_to_v1(core: &Value) -> Value {
    let mut v1 = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": core["metadata"], "regarding": core["involvedObject"], "note": core["message"],
        "reason": core["reason"], "type": core["type"], "action": core["action"],
        "reportingController": core.get("reportingComponent").cloned().unwrap_or_else(|| core["source"]["component"].clone()),
        "reportingInstance": core.get("reportingInstance").cloned().unwrap_or_else(|| core["source"]["host"].clone()),
        "eventTime": core["eventTime"], "series": core["series"], "related": core["related"],
        "deprecatedSource": core["source"], "deprecatedFirstTimestamp": core["firstTimestamp"],
        "deprecatedLastTimestamp": core["lastTimestamp"], "deprecatedCount": core["count"],
    });
    strip_nulls(&mut v1);
    v1
}

/// Converts an events.k8s.io/v1 Event into the core/v1 shape it is stored as.
fn event_v1_to_core(v1: &Value) -> Value {
    let count = v1["series"]["count"].as_i64().or_else(|| v1["deprecatedCount"].as_i64()).unwrap_or(1);
    let last = v1["series"]["lastObservedTime"].clone();
    let mut core = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": v1["metadata"],
        "involvedObject": v1["regarding"], "message": v1["note"], "reason": v1["reason"], "type": v1["type"],
        "action": v1["action"], "reportingComponent": v1["reportingController"], "reportingInstance": v1["reportingInstance"],
        "source": if v1["deprecatedSource"].is_object() { v1["deprecatedSource"].clone() } else { json!({"component": v1["reportingController"], "host": v1["reportingInstance"]}) },
        "eventTime": v1["eventTime"], "series": v1["series"], "related": v1["related"], "count": count,
        "firstTimestamp": if v1["deprecatedFirstTimestamp"].is_null() { v1["eventTime"].clone() } else { v1["deprecatedFirstTimestamp"].clone() },
        "lastTimestamp": if !last.is_null() { last } else if v1["deprecatedLastTimestamp"].is_null() { v1["eventTime"].clone() } else { v1["deprecatedLastTimestamp"].clone() },
    });
    strip_nulls(&mut core);
    core
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|_, x| !x.is_null());
        for x in map.values_mut() {
            strip_nulls(x);
        }
    }
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Value::Object(map) = &mut v {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

impl Server {
    /// A server over `store`.
    #[must_use]
    pub fn new(store: Store, registry: Registry, authorize: bool, service_families: Vec<String>) -> Self {
        Self {
            store,
            registry: RwLock::new(registry),
            faults: Faults::default(),
            tokens: Mutex::new(HashMap::new()),
            authorize,
            bookmark_interval: Duration::from_secs(1),
            service_families,
            next_cluster_ip: Mutex::new(1),
            requests: Mutex::new(BTreeMap::new()),
            protobuf_bodies: std::sync::atomic::AtomicU64::new(0),
            conflicts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests served so far of `verb` on `resource` (with subresource), from every client.
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        let requests = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        requests.iter().filter(|((_, _, v, r), _)| *v == verb && r == resource).map(|(_, n)| n).sum()
    }

    /// Maps a bearer token to an identity.
    pub fn add_token(&self, token: &str, identity: Identity) {
        self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(token.to_owned(), identity);
    }

    /// Creates the namespaces every cluster has and registers CRDs found in the store.
    pub fn bootstrap(&self) {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let key = (String::new(), "namespaces".to_owned());
            let _ = self.store.transact::<(), ApiError>(&key, "", ns, |cur| {
                if cur.is_some() {
                    return Ok((Write::Nothing, ()));
                }
                Ok((
                    Write::Put(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now_rfc3339(),
                            "labels": {"kubernetes.io/metadata.name": ns}},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})),
                    (),
                ))
            });
        }
        let crds = self.store.all_of(&("apiextensions.k8s.io".to_owned(), "customresourcedefinitions".to_owned()));
        let mut registry = self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for crd in crds {
            if let Err(error) = registry.register_crd(&crd) {
                tracing::warn!(%error, "stored CRD cannot be served");
            }
        }
    }

    fn identity(&self, headers: &HeaderMap) -> ApiResult<(Identity, Option<String>)> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let Some(token) = token else {
            // Token-less requests are the lab's own kubectl (see e2e/README.md).
            return Ok((Identity::from_user("admin"), None));
        };
        let known = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&token).cloned();
        match known {
            Some(identity) => Ok((identity, Some(token))),
            None if !self.authorize => Ok((Identity::from_user("admin"), Some(token))),
            None => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
        }
    }

    /// Answers one request.
    pub async fn handle(self: &Arc<Self>, req: ApiRequest) -> Resp {
        if req.path.starts_with("/_emulator/") {
            return self.control(&req);
        }
        if let Some(latency) = self.late_write(&req) {
            self.faults.count(|i| i.delayed += 1);
            // Applied after the delay even when the client gave up meanwhile.
            let me = Arc::clone(self);
            let task = tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                me.handle_now(req).await
            });
            return task.await.unwrap_or_else(|e| status_response(500, "InternalError", &e.to_string(), None));
        }
        let response = self.handle_now(req).await;
        if response.status() == StatusCode::CONFLICT {
            self.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        response
    }

    /// Requests answered 409 Conflict so far (a write on an outdated resourceVersion, a create of
    /// an existing name): how benchmarks see a client's wasted writes.
    pub fn conflict_count(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long the faults hold this write before applying it (`lateWrites`).
    fn late_write(&self, req: &ApiRequest) -> Option<Duration> {
        let token = self.identity(&req.headers).ok()?.1;
        let segments: Vec<&str> = req.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let target = self.route(&segments).ok()??;
        self.faults.late_write(verb_of(&req.method, &target, &req.query), token.as_deref())
    }

    async fn handle_now(self: &Arc<Self>, mut req: ApiRequest) -> Resp {
        let (identity, token) = match self.identity(&req.headers) {
            Ok(id) => id,
            Err(e) => return e.into_response(),
        };
        let segments: Vec<&str> = req.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let target = match self.route(&segments) {
            Ok(Some(t)) => t,
            Ok(None) => return self.non_resource(&segments, &req),
            Err(e) => return e.into_response(),
        };
        let verb = verb_of(&req.method, &target, &req.query);
        *self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((
                identity.user.clone(),
                token.as_deref().map(|t| t.chars().take(8).collect()).unwrap_or_default(),
                verb,
                target.resource_with_sub(),
            ))
            .or_default() += 1;
        let content_type =
            req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if !req.body.is_empty() && content_type.starts_with(protobuf::MEDIA_TYPE) {
            // Built-in kinds from kubectl's generators and Helm's storage: stored as the JSON a real
            // server would have decoded (protobuf.rs).
            match protobuf::decode(&req.body) {
                Ok(object) => {
                    self.protobuf_bodies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    req.body = Bytes::from(object.to_string());
                    req.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Err(e @ protobuf::DecodeError::Malformed(_)) => {
                    return status_response(400, "BadRequest", &e.to_string(), None);
                }
                Err(e @ protobuf::DecodeError::Unsupported(_)) => {
                    return status_response(415, "UnsupportedMediaType", &e.to_string(), None);
                }
            }
        } else if !req.body.is_empty() && (content_type.contains("protobuf") || content_type.contains("cbor")) {
            return status_response(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"
                ),
                None,
            );
        }
        match self.faults.verdict(verb, &target.resource_with_sub(), token.as_deref()) {
            Verdict::Serve { latency } => {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
            }
            Verdict::Fail(code) => {
                return status_response(code, reason_for(code), &format!("injected failure ({code})"), None);
            }
            Verdict::Refuse => {
                return status_response(503, "ServiceUnavailable", "the server is unavailable (refused)", None);
            }
            Verdict::Hang => {
                // Never answer; the client's timeout (or disconnect) ends the request.
                futures::future::pending::<()>().await;
            }
        }
        if self.authorize {
            let resource = target.resource_with_sub();
            let attrs = Attributes {
                verb,
                group: &target.def.group,
                resource: &resource,
                namespace: &target.namespace,
                name: &target.name,
            };
            if !rbac::authorize(&self.store, &identity, &attrs) {
                let scope = if target.namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace \"{}\"", target.namespace)
                };
                let what = if target.name.is_empty() {
                    target.qualified()
                } else {
                    format!("{} \"{}\"", target.qualified(), target.name)
                };
                return ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{what} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                        identity.user, target.def.group
                    ),
                )
                .details(target.details(&target.name))
                .into_response();
            }
        }
        let result = match verb {
            "get" => self.get(&target, &req),
            "list" => return self.list(&target, &req).unwrap_or_else(ApiError::into_response),
            "watch" => return self.watch(&target, &req, token),
            "create" => self.create(&target, &req),
            "update" => self.update(&target, &req),
            "patch" => self.patch(&target, &req),
            "delete" => self.delete(&target, &req),
            "deletecollection" => self.delete_collection(&target, &req),
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        };
        match result {
            Ok((code, value)) => json_response(code, &value),
            Err(e) => e.into_response(),
        }
    }

    fn control(&self, req: &ApiRequest) -> Resp {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/_emulator/faults") => match serde_json::from_slice::<FaultRequest>(&req.body) {
                Ok(request) => {
                    self.faults.apply(request);
                    json_response(StatusCode::OK, &json!({"ok": true}))
                }
                Err(e) => status_response(400, "BadRequest", &format!("invalid fault request: {e}"), None),
            },
            ("POST", "/_emulator/tokens") => {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                match (body["token"].as_str(), body["user"].as_str()) {
                    (Some(token), Some(user)) => {
                        self.add_token(token, Identity::from_user(user));
                        json_response(StatusCode::OK, &json!({"ok": true}))
                    }
                    _ => status_response(400, "BadRequest", "body must be {\"token\": ..., \"user\": ...}", None),
                }
            }
            ("POST", "/_emulator/compact") => {
                self.store.compact();
                json_response(StatusCode::OK, &json!({"ok": true, "revision": self.store.revision()}))
            }
            ("GET", "/_emulator/requests") => {
                let requests = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let rows: Vec<Value> = requests
                    .iter()
                    .map(|((user, token, verb, resource), count)| {
                        json!({"user": user, "token": token, "verb": verb, "resource": resource, "count": count})
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({"requests": rows}))
            }
            ("GET", "/_emulator/state") => json_response(
                StatusCode::OK,
                &json!({"revision": self.store.revision(), "objects": self.store.len(), "authorize": self.authorize,
                        "protobufBodies": self.protobuf_bodies.load(std::sync::atomic::Ordering::Relaxed),
                        "injected": self.faults.injected()}),
            ),
            _ => status_response(404, "NotFound", "unknown emulator control endpoint", None),
        }
    }

    fn non_resource(&self, segments: &[&str], req: &ApiRequest) -> Resp {
        let registry = self.registry();
        let doc = match segments {
            ["version"] => Some(registry.version_doc()),
            ["api"] => Some(Registry::core_versions_doc()),
            ["api", v] => registry.resource_list_doc("", v),
            ["apis"] => Some(registry.group_list_doc()),
            ["apis", g] => registry.group_doc_for(g),
            ["apis", g, v] => registry.resource_list_doc(g, v),
            ["openapi", "v3"] => Some(registry.openapi_root()),
            ["openapi", "v3", "api", v] => registry.openapi_group_version("", v),
            ["openapi", "v3", "apis", g, v] => registry.openapi_group_version(g, v),
            ["openapi", "v2"] => {
                let mut r = Response::new(ResponseBody::Full(Some(Bytes::from(registry.openapi_v2()))));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
                );
                return r;
            }
            ["healthz" | "livez" | "readyz"] => {
                let mut r = Response::new(ResponseBody::Full(Some(Bytes::from_static(b"ok"))));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                return r;
            }
            _ => None,
        };
        let _ = req;
        match doc {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => {
                status_response(404, "NotFound", "the server could not find the requested resource", Some(json!({})))
            }
        }
    }

    /// Resolves a resource path; `Ok(None)` for non-resource paths.
    fn route(&self, segments: &[&str]) -> ApiResult<Option<Target>> {
        let (group, version, rest) = match segments {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => return Ok(None),
        };
        let (namespace, plural, name, sub): (&str, &str, &str, &str) = match rest {
            ["namespaces"] => ("", "namespaces", "", ""),
            ["namespaces", name] => ("", "namespaces", name, ""),
            ["namespaces", name, sub @ ("status" | "finalize")] => ("", "namespaces", name, sub),
            ["namespaces", ns, plural] => (ns, plural, "", ""),
            ["namespaces", ns, plural, name] => (ns, plural, name, ""),
            ["namespaces", ns, plural, name, sub] => (ns, plural, name, sub),
            [plural] => ("", plural, "", ""),
            [plural, name] => ("", plural, name, ""),
            [plural, name, sub] => ("", plural, name, sub),
            _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
        };
        let registry = self.registry();
        let def = registry
            .find(group, version, plural)
            .cloned()
            .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
        if !namespace.is_empty() && !def.namespaced {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
        if namespace.is_empty() && def.namespaced && !name.is_empty() {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
        if !(sub.is_empty() || (sub == "status" && def.status)) {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
        Ok(Some(Target {
            def,
            version: version.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            subresource: sub.to_owned(),
        }))
    }

    /// Stored form → what this resource/version shows.
    fn present(&self, target: &Target, stored: &Value) -> Value {
        let mut v = match target.def.view {
            View::EventsV1 => event_core_to_v1(stored),
            View::Own => stored.clone(),
        };
        v["apiVersion"] = json!(target.def.api_version(&target.version));
        v["kind"] = json!(target.def.kind);
        v
    }

    /// Whether `stored` already is what this resource/version shows (`api_version` is
    /// `target.def.api_version(&target.version)`): then it is shown as stored, not copied.
    fn stored_as_shown(target: &Target, api_version: &str, stored: &Value) -> bool {
        target.def.view == View::Own
            && stored["apiVersion"].as_str() == Some(api_version)
            && stored["kind"].as_str() == Some(target.def.kind.as_str())
    }

    /// [`Server::present`] without a copy when the stored form is the shown one.
    fn shown<'a>(&self, target: &Target, api_version: &str, stored: &'a Value) -> Cow<'a, Value> {
        if Self::stored_as_shown(target, api_version, stored) {
            Cow::Borrowed(stored)
        } else {
            Cow::Owned(self.present(target, stored))
        }
    }

    /// Shown form → stored form.
    fn to_storage(target: &Target, shown: &Value) -> Value {
        match target.def.view {
            View::EventsV1 => event_v1_to_core(shown),
            View::Own => shown.clone(),
        }
    }

    fn get(&self, target: &Target, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        let stored = self
            .store
            .get(&target.key(), &target.namespace, &target.name)
            .ok_or_else(|| target.not_found(&target.name))?;
        let shown = self.present(target, &stored);
        if wants_table(&req.headers) {
            return Ok((StatusCode::OK, table::table_for(&target.def, &target.version, &[shown])));
        }
        Ok((StatusCode::OK, shown))
    }

    fn selectors(req: &ApiRequest) -> ApiResult<(LabelSelector, FieldSelector)> {
        let labels = LabelSelector::parse(req.query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::new(400, "BadRequest", format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(req.query.get("fieldSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid field selector: {e}")))?;
        Ok((labels, fields))
    }

    fn list(&self, target: &Target, req: &ApiRequest) -> ApiResult<Resp> {
        let limit: usize = req.query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
        let (items, rev, offset) = if let Some(token) = req.query.get("continue").filter(|c| !c.is_empty()) {
            let (id, offset) = token
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)))
                .ok_or_else(|| ApiError::new(400, "BadRequest", "invalid continue token"))?;
            // The saved list itself, not a copy: a 100,000-object list read 500 at a time
            // copied every remaining item for every page (the allocator's first list of 50,000
            // Services took seconds of the emulator's time).
            let (items, rev) = self.store.snapshot(id).ok_or_else(|| {
                ApiError::new(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            })?;
            (items, rev, offset)
        } else {
            let (labels, fields) = Self::selectors(req)?;
            let ns = (!target.namespace.is_empty()).then_some(target.namespace.as_str());
            let (all, rev) = self.store.list(&target.key(), ns);
            // Without a selector every object is listed: none is presented (copied) to be matched.
            let items: Vec<Arc<Value>> = if !labels.is_empty() || !fields.is_empty() {
                all.into_iter()
                    .filter(|o| {
                        let shown = self.present(target, o);
                        labels.matches(&shown) && fields.matches(&shown)
                    })
                    .collect()
            } else {
                all
            };
            (Arc::new(items), rev, 0)
        };
        let mut metadata = json!({"resourceVersion": rev.to_string()});
        let end = if limit > 0 { (offset + limit).min(items.len()) } else { items.len() };
        let page = items.get(offset..end).unwrap_or_default();
        if end < items.len() {
            let id = match req.query.get("continue").filter(|c| !c.is_empty()) {
                Some(token) => token.split_once(':').and_then(|(a, _)| a.parse().ok()).unwrap_or(0),
                None => self.store.save_snapshot(Arc::clone(&items), rev),
            };
            metadata["continue"] = json!(format!("{id}:{end}"));
            metadata["remainingItemCount"] = json!(items.len() - end);
        }
        if wants_table(&req.headers) {
            let shown: Vec<Value> = page.iter().map(|o| self.present(target, o)).collect();
            let mut t = table::table_for(&target.def, &target.version, &shown);
            t["metadata"] = metadata;
            return Ok(json_response(StatusCode::OK, &t));
        }
        // Written item by item: an object stored as this version shows it is written as stored,
        // not copied first (the copies were a fifth of the allocator's first list of 50,000
        // Services).
        let api_version = target.def.api_version(&target.version);
        let mut body = serde_json::to_vec(&json!({
            "kind": format!("{}List", target.def.kind),
            "apiVersion": api_version,
            "metadata": metadata,
        }))
        .unwrap_or_default();
        body.pop(); // the closing brace
        body.extend_from_slice(b",\"items\":[");
        for (i, object) in page.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            serde_json::to_writer(&mut body, &*self.shown(target, &api_version, object))
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        }
        body.extend_from_slice(b"]}");
        let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }

    fn parse_object(target: &Target, body: &[u8]) -> ApiResult<Value> {
        let value: Value = serde_json::from_slice(body).or_else(|_| serde_yaml_ng::from_slice(body)).map_err(|e| {
            ApiError::new(400, "BadRequest", format!("the body of the request could not be decoded: {e}"))
        })?;
        if !value.is_object() {
            return Err(ApiError::new(400, "BadRequest", "the body of the request must be an object"));
        }
        let _ = target;
        Ok(value)
    }

    /// Checks a custom resource against its schema (defaults, pruning, CEL), or a built-in kind
    /// against its type (pruning, feature-gated fields, conditions: builtin.rs).
    fn validate(&self, target: &Target, object: &mut Value, old: Option<&Value>, req: &ApiRequest) -> ApiResult<()> {
        let mode = FieldValidation::parse(req.query.get("fieldValidation").map(String::as_str));
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let (pruned, errors): (Vec<String>, Vec<(String, String, &'static str)>) = if target.def.is_custom() {
            let Some(schema) = target.def.schemas.get(&target.version) else { return Ok(()) };
            let out = validation::validate_custom_resource(schema, object, old);
            (out.pruned, out.errors.into_iter().map(|e| (e.field, e.message, e.reason)).collect())
        } else {
            let minor = self.registry().minor();
            let out = builtin::check(&target.def.group, &target.def.plural, object, minor).map_err(|e| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!(
                        "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
                        kind = target.def.kind,
                        version = target.version
                    ),
                )
            })?;
            let mut errors = out.errors;
            if (target.def.group.as_str(), target.def.plural.as_str()) == ("", "services") {
                errors.extend(builtin::service_update(old, object));
            }
            (out.unknown, errors)
        };
        if mode == FieldValidation::Strict && !pruned.is_empty() {
            let unknown: Vec<String> = pruned.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                    unknown.join(", "),
                    kind = target.def.kind,
                    version = target.version
                ),
            ));
        }
        if errors.is_empty() {
            return Ok(());
        }
        let messages: Vec<&str> = errors.iter().map(|(_, m, _)| m.as_str()).collect();
        let joined = if messages.len() == 1 { messages[0].to_owned() } else { format!("[{}]", messages.join(", ")) };
        let kind_group = if target.def.group.is_empty() {
            target.def.kind.clone()
        } else {
            format!("{}.{}", target.def.kind, target.def.group)
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(
                |(f, m, r)| json!({"reason": r, "message": m.strip_prefix(&format!("{f}: ")).unwrap_or(m), "field": f}),
            )
            .collect();
        Err(ApiError::new(422, "Invalid", format!("{kind_group} \"{name}\" is invalid: {joined}"))
            .details(json!({"name": name, "group": target.def.group, "kind": target.def.kind, "causes": causes})))
    }

    fn defaults_on_create(&self, target: &Target, object: &mut Value) {
        match (target.def.group.as_str(), target.def.plural.as_str()) {
            ("", "services") => self.default_service(object),
            ("", "namespaces") => {
                let name = object["metadata"]["name"].clone();
                object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
                object["status"] = json!({"phase": "Active"});
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                object["status"] = json!({
                    "acceptedNames": object["spec"]["names"],
                    "storedVersions": object["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now_rfc3339()},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now_rfc3339()}
                    ]
                });
            }
            _ => {}
        }
    }

    fn default_service(&self, svc: &mut Value) {
        let spec = &mut svc["spec"];
        if spec["type"].is_null() {
            spec["type"] = json!("ClusterIP");
        }
        if spec["sessionAffinity"].is_null() {
            spec["sessionAffinity"] = json!("None");
        }
        let policy = spec["ipFamilyPolicy"].as_str().unwrap_or("SingleStack").to_owned();
        spec["ipFamilyPolicy"] = json!(policy);
        if spec["ipFamilies"].as_array().is_none_or(Vec::is_empty) {
            let families: Vec<String> = if policy == "SingleStack" {
                self.service_families.iter().take(1).cloned().collect()
            } else {
                self.service_families.clone()
            };
            spec["ipFamilies"] = json!(families);
        }
        if spec["clusterIP"].as_str() != Some("None") && spec["clusterIP"].is_null() {
            let n = {
                let mut next = self.next_cluster_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                *next += 1;
                *next
            };
            let ips: Vec<String> = spec["ipFamilies"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| {
                            if f == "IPv6" {
                                format!("fd00:10:96::{n:x}")
                            } else {
                                format!("10.96.{}.{}", n / 256 % 256, n % 256)
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            spec["clusterIP"] = json!(ips.first().cloned().unwrap_or_default());
            spec["clusterIPs"] = json!(ips);
        }
        let lb = spec["type"] == "LoadBalancer";
        if (lb || spec["type"] == "NodePort") && spec["externalTrafficPolicy"].is_null() {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if spec["internalTrafficPolicy"].is_null() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
        if lb && spec["allocateLoadBalancerNodePorts"].is_null() {
            spec["allocateLoadBalancerNodePorts"] = json!(true);
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for (i, port) in ports.iter_mut().enumerate() {
                if port["protocol"].is_null() {
                    port["protocol"] = json!("TCP");
                }
                if port["targetPort"].is_null() {
                    port["targetPort"] = port["port"].clone();
                }
                // 0 means "allocate one" (and is what Go's protobuf encoder writes for an unset port).
                if lb && (port["nodePort"].is_null() || port["nodePort"] == 0) {
                    port["nodePort"] = json!(30000 + (i as u64) + u64::from(self.next_port()));
                }
            }
        }
        if svc["status"].is_null() {
            svc["status"] = json!({"loadBalancer": {}});
        }
    }

    fn next_port(&self) -> u32 {
        let mut next = self.next_cluster_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *next += 1;
        *next % 2700
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.store.get(&(String::new(), "namespaces".to_owned()), "", ns).is_some()
    }

    fn create(&self, target: &Target, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        let body = Self::parse_object(target, &req.body)?;
        self.create_object(target, body, req)
    }

    fn create_object(&self, target: &Target, mut object: Value, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        if target.def.namespaced {
            let body_ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
            if !body_ns.is_empty() && body_ns != target.namespace {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            if !self.namespace_exists(&target.namespace) {
                return Err(ApiError::new(404, "NotFound", format!("namespaces \"{}\" not found", target.namespace))
                    .details(json!({"name": target.namespace, "kind": "namespaces"})));
            }
            object["metadata"]["namespace"] = json!(target.namespace);
        } else if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let mut name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            let Some(prefix) = object["metadata"]["generateName"].as_str().filter(|p| !p.is_empty()) else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        target.def.kind
                    ),
                ));
            };
            let suffix: String =
                uuid::Uuid::new_v4().simple().to_string().chars().filter(char::is_ascii_alphanumeric).take(5).collect();
            name = format!("{prefix}{suffix}");
            object["metadata"]["name"] = json!(name);
        }
        if !valid_name(&name) {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    target.def.kind
                ),
            ));
        }
        let mut object = Self::to_storage(target, &object);
        if target.def.status
            && let Some(m) = object.as_object_mut()
        {
            m.remove("status");
        }
        self.defaults_on_create(target, &mut object);
        object["apiVersion"] = json!(target.def.api_version(&target.version));
        object["kind"] = json!(target.def.kind);
        self.validate(target, &mut object, None, req)?;
        if let Some(m) = object["metadata"].as_object_mut() {
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("managedFields");
        }
        if target.def.group == "apiextensions.k8s.io" {
            let mut registry = self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.store.get(&target.key(), "", &name).is_none() {
                registry.register_crd(&object).map_err(|m| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: {m}"),
                    )
                })?;
            }
        }
        let (_, stored) = self.store.transact(&target.key(), &target.namespace, &name, |cur| {
            if cur.is_some() {
                return Err(ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", target.qualified()),
                )
                .details(target.details(&name)));
            }
            Ok((Write::Put(object), ()))
        })?;
        let stored = stored.ok_or_else(|| ApiError::new(500, "InternalError", "object vanished"))?;
        Ok((StatusCode::CREATED, self.present(target, &stored)))
    }

    /// Builds the object to store for a write of `incoming` (shown form) over `current`.
    fn merge_write(&self, target: &Target, current: &Value, incoming: &Value, req: &ApiRequest) -> ApiResult<Value> {
        let incoming = Self::to_storage(target, incoming);
        let mut next = if target.subresource == "status" {
            let mut n = current.clone();
            n["status"] = incoming["status"].clone();
            n
        } else {
            let mut n = incoming;
            if target.def.status {
                n["status"] = current["status"].clone();
            }
            n
        };
        if next["status"].is_null()
            && let Some(m) = next.as_object_mut()
        {
            m.remove("status");
        }
        // Fields the server owns.
        for field in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"] {
            match current["metadata"].get(field) {
                Some(v) => next["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if target.subresource == "status" {
            next["metadata"] = current["metadata"].clone();
        }
        if let Some(m) = next["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        next["apiVersion"] = json!(target.def.api_version(&target.version));
        next["kind"] = json!(target.def.kind);
        // Built-in kinds are checked on status writes too (Service conditions).
        if target.subresource.is_empty() || !target.def.is_custom() {
            self.validate(target, &mut next, Some(current), req)?;
        }
        if target.def.group.is_empty() && target.def.plural == "services" && target.subresource.is_empty() {
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if next["spec"][field].is_null() && !current["spec"][field].is_null() {
                    next["spec"][field] = current["spec"][field].clone();
                }
            }
            // Ports keep their node port across writes, as on a real server.
            if let (Some(ports), Some(old_ports)) =
                (next["spec"]["ports"].as_array_mut(), current["spec"]["ports"].as_array())
            {
                for port in ports.iter_mut().filter(|p| p["nodePort"].is_null()) {
                    if let Some(old) = old_ports.iter().find(|o| o["port"] == port["port"]) {
                        port["nodePort"] = old["nodePort"].clone();
                    }
                }
            }
            self.default_service(&mut next);
        }
        if spec_part(&next) != spec_part(current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        Ok(next)
    }

    fn finish_write(&self, target: &Target, next: Value) -> Write {
        let deleting = !next["metadata"]["deletionTimestamp"].is_null();
        let no_finalizers = next["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if deleting && no_finalizers {
            let _ = target;
            Write::Delete
        } else {
            Write::Put(next)
        }
    }

    fn update(&self, target: &Target, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        let body = Self::parse_object(target, &req.body)?;
        if let Some(n) = body["metadata"]["name"].as_str()
            && n != target.name
        {
            return Err(ApiError::new(400, "BadRequest", "the name of the object does not match the name on the URL"));
        }
        let want_rv = body["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        self.write_over(target, req, want_rv.as_deref(), |_| Ok(body.clone()))
    }

    /// Replaces the stored object with what `compute` makes of it (shown form in, shown form
    /// out), with the `resourceVersion` precondition, status/metadata rules, validation,
    /// finalizers and cascades of every update.
    fn write_over(
        &self,
        target: &Target,
        req: &ApiRequest,
        expected_rv: Option<&str>,
        compute: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<(StatusCode, Value)> {
        // Computed outside the store's lock and applied if the object is still the one it was
        // computed from (`transact_optimistic`), as a real server's guaranteed update.
        let (deleted, stored) =
            self.store.transact_optimistic(&target.key(), &target.namespace, &target.name, |cur| {
                let cur = cur.ok_or_else(|| target.not_found(&target.name))?;
                if expected_rv.is_some_and(|rv| cur["metadata"]["resourceVersion"].as_str() != Some(rv)) {
                    return Err(target.conflict(&target.name));
                }
                let doc = compute(cur)?;
                let next = self.merge_write(target, cur, &doc, req)?;
                let write = self.finish_write(target, next);
                let deleted = matches!(write, Write::Delete).then(|| cur.clone());
                Ok((write, deleted))
            })?;
        self.after_write(target, stored.as_deref(), deleted.as_ref());
        let shown = stored.or(deleted.map(Arc::new)).ok_or_else(|| target.not_found(&target.name))?;
        Ok((StatusCode::OK, self.present(target, &shown)))
    }

    fn patch(&self, target: &Target, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        let content_type = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let kind = PatchType::from_content_type(content_type).ok_or_else(|| {
            ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"))
        })?;
        if kind == PatchType::Strategic && target.def.is_custom() {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if kind == PatchType::Apply && req.query.get("fieldManager").is_none_or(String::is_empty) {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let patch_body = patch::parse_body(kind, &req.body).map_err(|m| ApiError::new(400, "BadRequest", m))?;
        let applied_rv = (kind == PatchType::Apply)
            .then(|| patch_body["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .flatten();
        let current = self.store.get(&target.key(), &target.namespace, &target.name);
        if current.is_none() {
            if kind == PatchType::Apply && target.subresource.is_empty() {
                let mut object = patch_body;
                object["metadata"]["name"] = json!(target.name);
                return self.create_object(target, object, req);
            }
            return Err(target.not_found(&target.name));
        }
        self.write_over(target, req, applied_rv.as_deref(), |cur| {
            let mut doc = self.present(target, cur);
            patch::apply_patch(kind, &mut doc, &patch_body).map_err(|m| ApiError::new(422, "Invalid", m))?;
            if let Some(rv) = patch_body["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty())
                && kind == PatchType::Merge
                && cur["metadata"]["resourceVersion"].as_str() != Some(rv)
            {
                return Err(target.conflict(&target.name));
            }
            Ok(doc)
        })
    }

    /// Side effects of a write: CRD (re)registration, cascades after a delete.
    fn after_write(&self, target: &Target, stored: Option<&Value>, deleted: Option<&Value>) {
        if target.def.group == "apiextensions.k8s.io" {
            let mut registry = self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(crd) = stored {
                let _ = registry.register_crd(crd);
            }
            if let Some(crd) = deleted {
                registry.unregister_crd(crd);
            }
        }
        if let Some(object) = deleted {
            self.cascade(target, object);
        }
    }

    fn delete(&self, target: &Target, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        let options: Value =
            if req.body.is_empty() { json!({}) } else { serde_json::from_slice(&req.body).unwrap_or(json!({})) };
        let pre_uid = options["preconditions"]["uid"].as_str().map(str::to_owned);
        let pre_rv = options["preconditions"]["resourceVersion"].as_str().map(str::to_owned);
        let (deleted, stored) = self.store.transact(&target.key(), &target.namespace, &target.name, |cur| {
            let cur = cur.ok_or_else(|| target.not_found(&target.name))?;
            if pre_uid.as_deref().is_some_and(|u| cur["metadata"]["uid"].as_str() != Some(u)) {
                return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{}\": Precondition failed: UID in precondition: {}, UID in object meta: {}", target.qualified(), target.name, pre_uid.clone().unwrap_or_default(), cur["metadata"]["uid"].as_str().unwrap_or_default())).details(target.details(&target.name)));
            }
            if pre_rv.as_deref().is_some_and(|r| cur["metadata"]["resourceVersion"].as_str() != Some(r)) {
                return Err(target.conflict(&target.name));
            }
            let has_finalizers = cur["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
                && target.def.plural != "namespaces";
            if has_finalizers {
                let mut next = cur.clone();
                if next["metadata"]["deletionTimestamp"].is_null() {
                    next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                }
                return Ok((Write::Put(next), None));
            }
            Ok((Write::Delete, Some(cur.clone())))
        })?;
        match deleted {
            Some(object) => {
                self.after_write(target, None, Some(&object));
                Ok((StatusCode::OK, self.present(target, &object)))
            }
            None => {
                let shown = stored.ok_or_else(|| target.not_found(&target.name))?;
                Ok((StatusCode::OK, self.present(target, &shown)))
            }
        }
    }

    fn delete_collection(&self, target: &Target, req: &ApiRequest) -> ApiResult<(StatusCode, Value)> {
        let (labels, fields) = Self::selectors(req)?;
        let ns = (!target.namespace.is_empty()).then_some(target.namespace.as_str());
        let (items, _) = self.store.list(&target.key(), ns);
        let mut out = Vec::new();
        for item in items.iter().filter(|o| labels.matches(o) && fields.matches(o)) {
            let ns = item["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            let name = item["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let sub = Target {
                def: target.def.clone(),
                version: target.version.clone(),
                namespace: ns,
                name,
                subresource: String::new(),
            };
            let empty = ApiRequest {
                method: Method::DELETE,
                path: String::new(),
                query: HashMap::new(),
                headers: HeaderMap::new(),
                body: Bytes::new(),
            };
            if let Ok((_, v)) = self.delete(&sub, &empty) {
                out.push(v);
            }
        }
        Ok((
            StatusCode::OK,
            json!({"kind": format!("{}List", target.def.kind), "apiVersion": target.def.api_version(&target.version), "metadata": {}, "items": out}),
        ))
    }

    /// Deletes what depended on a deleted object: namespace contents, custom resources of a
    /// CRD, and objects whose every owner is gone (background garbage collection).
    fn cascade(&self, target: &Target, object: &Value) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let mut victims: Vec<(ResKey, String, String)> = Vec::new();
        if target.def.group.is_empty() && target.def.plural == "namespaces" {
            let registry = self.registry();
            for def in ["services", "secrets", "configmaps", "serviceaccounts", "pods", "endpoints", "events"]
                .iter()
                .map(|p| (String::new(), (*p).to_owned()))
                .chain(
                    [
                        ("discovery.k8s.io", "endpointslices"),
                        ("coordination.k8s.io", "leases"),
                        ("rbac.authorization.k8s.io", "roles"),
                        ("rbac.authorization.k8s.io", "rolebindings"),
                        ("apps", "deployments"),
                        ("apps", "daemonsets"),
                        ("policy", "poddisruptionbudgets"),
                    ]
                    .iter()
                    .map(|(g, p)| ((*g).to_owned(), (*p).to_owned())),
                )
                .chain(self.custom_keys(&registry))
            {
                for item in self.store.list(&def, Some(name)).0 {
                    victims.push((
                        def.clone(),
                        name.to_owned(),
                        item["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
        if target.def.group == "apiextensions.k8s.io" {
            let key = (
                object["spec"]["group"].as_str().unwrap_or_default().to_owned(),
                object["spec"]["names"]["plural"].as_str().unwrap_or_default().to_owned(),
            );
            for item in self.store.list(&key, None).0 {
                victims.push((
                    key.clone(),
                    item["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                    item["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            for (key, ns, dep) in self.store.dependents(uid) {
                let Some(dependent) = self.store.get(&key, &ns, &dep) else { continue };
                let owners_alive = dependent["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                    refs.iter().any(|r| r["uid"].as_str() != Some(uid) && self.owner_exists(r, &ns))
                });
                if !owners_alive {
                    victims.push((key, ns, dep));
                }
            }
        }
        for (key, ns, victim) in victims {
            let mut removed = None;
            let _ = self.store.transact::<(), ApiError>(&key, &ns, &victim, |cur| {
                removed = cur.cloned();
                Ok((if cur.is_some() { Write::Delete } else { Write::Nothing }, ()))
            });
            if let Some(removed) = removed {
                let def = self.registry().by_key(&key).cloned();
                if let Some(def) = def {
                    let t =
                        Target { def, version: String::new(), namespace: ns, name: victim, subresource: String::new() };
                    self.cascade(&t, &removed);
                }
            }
        }
    }

    fn custom_keys(&self, registry: &Registry) -> Vec<ResKey> {
        let _ = registry;
        self.store
            .all_of(&("apiextensions.k8s.io".to_owned(), "customresourcedefinitions".to_owned()))
            .iter()
            .filter(|crd| crd["spec"]["scope"].as_str() != Some("Cluster"))
            .map(|crd| {
                (
                    crd["spec"]["group"].as_str().unwrap_or_default().to_owned(),
                    crd["spec"]["names"]["plural"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn owner_exists(&self, owner: &Value, ns: &str) -> bool {
        let (group, _) = owner["apiVersion"].as_str().unwrap_or_default().rsplit_once('/').unwrap_or(("", ""));
        let kind = owner["kind"].as_str().unwrap_or_default();
        let registry = self.registry();
        let Some(def) = registry.by_kind(group, kind) else { return false };
        let owner_ns = if def.namespaced { ns } else { "" };
        self.store
            .get(&def.storage_key(), owner_ns, owner["name"].as_str().unwrap_or_default())
            .is_some_and(|o| o["metadata"]["uid"] == owner["uid"])
    }

    fn watch(self: &Arc<Self>, target: &Target, req: &ApiRequest, token: Option<String>) -> Resp {
        let (labels, fields) = match Self::selectors(req) {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        };
        if !target.name.is_empty() {
            // A watch on one object is a watch on the collection with a name selector.
        }
        let since =
            req.query.get("resourceVersion").filter(|v| !v.is_empty() && *v != "0").and_then(|v| v.parse::<u64>().ok());
        let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
        // A streaming list (client-go's WatchList, e.g. Helm 4's readiness watcher): the current
        // state as ADDED events, then a BOOKMARK marked `k8s.io/initial-events-end`, then changes.
        let send_initial = req.query.get("sendInitialEvents").is_some_and(|v| v == "true" || v == "1");
        if send_initial {
            if self.registry().minor() < 32 {
                // The WatchList feature gate is off by default before 1.32: clients fall back to list.
                return status_response(
                    422,
                    "Invalid",
                    "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                    None,
                );
            }
            if !bookmarks || req.query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
                return status_response(
                    422,
                    "Invalid",
                    "sendInitialEvents: Forbidden: sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
                    None,
                );
            }
        }
        // The initial state is sent from the current revision on (NotOlderThan the one given).
        let since = if send_initial { None } else { since };
        let timeout = req.query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let mut response = Response::new(ResponseBody::Stream(rx));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let key = target.key();
        let expired_now = self.faults.take_expire();
        let start = if expired_now {
            Err(super::store::Expired { oldest: self.store.revision() })
        } else {
            self.store.watch_from(&key, since)
        };
        let server = self.clone();
        let target = Target {
            def: target.def.clone(),
            version: target.version.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            subresource: String::new(),
        };
        // The epoch this watch started in: a close requested while it still sends its initial
        // events or backlog ends it too.
        let mut closer = self.faults.watch_closer();
        let my_epoch = closer.borrow_and_update().0;
        let as_table = wants_table(&req.headers);
        tokio::spawn(async move {
            let line = |kind: &str, object: &Value| {
                let object = if as_table && kind != "ERROR" && kind != "BOOKMARK" {
                    table::table_for(&target.def, &target.version, std::slice::from_ref(object))
                } else {
                    object.clone()
                };
                let mut bytes = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
                bytes.push(b'\n');
                Bytes::from(bytes)
            };
            let (backlog, mut receiver, start_rev) = match start {
                Ok(s) => s,
                Err(expired) => {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("too old resource version: {} ({})", since.unwrap_or(0), expired.oldest),
                        "reason": "Expired", "code": 410});
                    let _ = tx.send(line("ERROR", &status)).await;
                    return;
                }
            };
            // Objects stored in the shape this watch shows need no conversion: select on them
            // directly and reuse the change's one serialisation.
            let api_version = target.def.api_version(&target.version);
            let as_stored = |o: &Value| !as_table && Self::stored_as_shown(&target, &api_version, o);
            let encode = |kind: &str, change: &super::store::Change| {
                if as_stored(&change.object) {
                    let mut bytes = Vec::with_capacity(change.encoded().len() + 32);
                    bytes.extend_from_slice(b"{\"type\":\"");
                    bytes.extend_from_slice(kind.as_bytes());
                    bytes.extend_from_slice(b"\",\"object\":");
                    bytes.extend_from_slice(change.encoded());
                    bytes.extend_from_slice(b"}\n");
                    Bytes::from(bytes)
                } else {
                    line(kind, &server.present(&target, &change.object))
                }
            };
            let matches = |o: &Value| {
                let shown = server.shown(&target, &api_version, o);
                let ns_ok = target.namespace.is_empty()
                    || o["metadata"]["namespace"].as_str() == Some(target.namespace.as_str());
                let name_ok = target.name.is_empty() || o["metadata"]["name"].as_str() == Some(target.name.as_str());
                ns_ok && name_ok && labels.matches(&shown) && fields.matches(&shown)
            };
            let mut last_rev = start_rev.max(since.unwrap_or(0));
            if since.is_none() {
                let ns = (!target.namespace.is_empty()).then_some(target.namespace.as_str());
                let (items, _) = server.store.list(&key, ns);
                for item in items.iter().filter(|o| {
                    matches(o)
                        && o["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0)
                            <= start_rev
                }) {
                    if tx.send(line("ADDED", &server.present(&target, item))).await.is_err() {
                        return;
                    }
                }
            }
            for change in backlog {
                if let Some((kind, _)) = transition(&change, &matches)
                    && tx.send(encode(kind, &change)).await.is_err()
                {
                    return;
                }
            }
            if send_initial {
                let bookmark = json!({"kind": target.def.kind, "apiVersion": target.def.api_version(&target.version),
                    "metadata": {"resourceVersion": last_rev.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(line("BOOKMARK", &bookmark)).await.is_err() {
                    return;
                }
            }
            let mut bookmark_tick = tokio::time::interval(server.bookmark_interval);
            bookmark_tick.tick().await;
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            loop {
                let sleep_until_deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => futures::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    received = receiver.recv() => match received {
                        Ok(change) => {
                            last_rev = last_rev.max(change.rev);
                            if change.key != key {
                                continue;
                            }
                            if let Some((kind, _)) = transition(&change, &matches)
                                && tx.send(encode(kind, &change)).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = bookmark_tick.tick(), if bookmarks => {
                        let bookmark = json!({"kind": target.def.kind, "apiVersion": target.def.api_version(&target.version),
                            "metadata": {"resourceVersion": last_rev.to_string()}});
                        if tx.send(line("BOOKMARK", &bookmark)).await.is_err() {
                            return;
                        }
                    }
                    changed = closer.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let (epoch, who) = closer.borrow().clone();
                        if epoch != my_epoch && who.as_ref().is_none_or(|w| Some(w) == token.as_ref()) {
                            server.faults.count(|i| i.watches_closed += 1);
                            return;
                        }
                    }
                    () = sleep_until_deadline => return,
                    () = tx.closed() => return,
                }
            }
        });
        response
    }
}

/// The watch event a change produces for a filtered watch (label/field transitions become
/// ADDED / DELETED as on a real server).
fn transition<'a>(
    change: &'a super::store::Change,
    matches: &impl Fn(&Value) -> bool,
) -> Option<(&'static str, &'a Value)> {
    let now = matches(&change.object);
    match change.kind {
        ChangeKind::Added => now.then_some(("ADDED", &*change.object)),
        ChangeKind::Deleted => now.then_some(("DELETED", &*change.object)),
        ChangeKind::Modified => {
            let before = change.previous.as_deref().is_some_and(matches);
            match (before, now) {
                (true, true) => Some(("MODIFIED", &*change.object)),
                (false, true) => Some(("ADDED", &*change.object)),
                (true, false) => Some(("DELETED", &*change.object)),
                (false, false) => None,
            }
        }
    }
}

fn verb_of(method: &Method, target: &Target, query: &HashMap<String, String>) -> &'static str {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), target.name.is_empty()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", true) => "create",
        ("PUT", false) => "update",
        ("PATCH", false) => "patch",
        ("DELETE", false) => "delete",
        ("DELETE", true) => "deletecollection",
        _ => "unsupported",
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table") && a.contains("v=v1;"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}
