//! A fake NetBox 4.x for tests (NetBox itself needs Python 3.12, which these machines lack).
//! It serves the REST calls PureLB makes, as NetBox 4.6 answers them, over real HTTP:
//!
//! - `GET /api/ipam/ip-addresses/` with the filters `tenant` (slug), `status`, `family`,
//!   `description` (exact), `address` (host, any prefix length), `limit`, `offset`; answers
//!   `{count,next,previous,results}` with absolute `next`/`previous` links (query parameters
//!   sorted, as Django REST framework writes them), ordered by address then id;
//! - `GET /api/ipam/ip-addresses/<id>/` with an `ETag` (the quoted `last_updated`);
//! - `PATCH /api/ipam/ip-addresses/<id>/` of `status` and `description` (JSON only), honouring
//!   `If-Match` (412 when stale), answering with the object as saved;
//! - IP address objects with `address` in CIDR form, `family {value,label}`,
//!   `status {value,label}`, `tenant {id,url,display,name,slug,description}` or null,
//!   `description`, `created`, `last_updated` and NetBox's other fields;
//! - `Authorization: Token <t>` (or `Bearer`, NetBox 4.5+): none gives 403 "Authentication
//!   credentials were not provided.", an unknown token 403 "Invalid token" (401 with
//!   [`NetboxFaults::auth_status`]), a read-only token 403 on PATCH;
//! - what NetBox refuses, with its status: unknown tenant slug or choice 400 with the field
//!   error, unknown id 404, a path without its trailing slash 301, a non-JSON PATCH 415.
//!
//! Stricter than NetBox, so that client mistakes show: query parameters and PATCH fields it
//! does not emulate are a 400, methods it does not emulate a 405.
//!
//! Faults ([`NetboxFaults`]): unreachable (connections refused), slow answers, 5xx answers,
//! truncated JSON, a small maximum page size, no `ETag` support (NetBox before 4.6), and
//! one-shot changes by "someone else" around PureLB's reads and writes (races).
//!
//! Entry point: [`FakeNetbox::start`].

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinSet};

/// Status choices of a NetBox IP address.
const STATUSES: [(&str, &str); 5] = [
    ("active", "Active"),
    ("reserved", "Reserved"),
    ("deprecated", "Deprecated"),
    ("dhcp", "DHCP"),
    ("slaac", "SLAAC"),
];
/// NetBox's default page size and `MAX_PAGE_SIZE`.
const DEFAULT_LIMIT: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// One IP address as the fake stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `id`.
    pub id: u64,
    /// `address` (CIDR text; may be anything, to test hostile data).
    pub address: String,
    /// `status.value`.
    pub status: String,
    /// The tenant's slug.
    pub tenant: Option<String>,
    /// `description`.
    pub description: String,
    /// Bumped on every change (`last_updated`, `ETag`).
    version: u64,
}

impl Record {
    /// The address part, if `address` is an address.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

/// A request the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// The `If-Match` header.
    pub if_match: Option<String>,
    /// Status answered.
    pub status: u16,
}

/// When a one-shot change by "someone else" happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Before answering the next single-object GET of the address (it was taken between
    /// PureLB's listing and its read).
    BeforeGet,
    /// Right after answering the next single-object GET (taken between read and write).
    AfterGet,
    /// Right after applying the next PATCH of the address; the answer shows the result (a
    /// concurrent writer landed just after PureLB).
    AfterPatch,
}

#[derive(Clone, Debug)]
struct Change {
    ip: IpAddr,
    when: When,
    status: String,
    description: String,
}

#[derive(Debug)]
struct Tenant {
    id: u64,
    slug: String,
    name: String,
}

/// Fault switches; all off by default.
#[derive(Debug)]
pub struct NetboxFaults {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Faults {
    delay: Duration,
    fail_status: Option<u16>,
    fail_remaining: Option<usize>,
    truncate: bool,
    max_page: Option<usize>,
    no_etag: bool,
    auth_status: Option<u16>,
    changes: Vec<Change>,
}

#[derive(Debug, Default)]
struct State {
    tenants: Vec<Tenant>,
    records: BTreeMap<u64, Record>,
    next_id: u64,
    clock: u64,
    tokens: HashMap<String, bool>,
    faults: Faults,
    seen: Vec<Seen>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    reachable: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running fake NetBox; stops when dropped.
#[derive(Debug)]
pub struct FakeNetbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNetbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeNetbox {
    /// Starts a fake NetBox on 127.0.0.1 (a free port). Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// No port could be bound.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (reachable, _) = watch::channel(true);
        let shared = Arc::new(Shared { state: Mutex::new(State { next_id: 1, ..State::default() }), reachable });
        let task = tokio::spawn(accept_loop(shared.clone(), listener, addr));
        Ok(Self { shared, addr, task })
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts `token` (with write permission when `write`).
    pub fn add_token(&self, token: &str, write: bool) {
        self.shared.lock().tokens.insert(token.to_owned(), write);
    }

    /// Creates a tenant.
    pub fn add_tenant(&self, slug: &str, name: &str) -> u64 {
        let mut s = self.shared.lock();
        let id = s.tenants.len() as u64 + 1;
        s.tenants.push(Tenant { id, slug: slug.to_owned(), name: name.to_owned() });
        id
    }

    /// Creates an IP address (`address` in CIDR form, or anything for hostile data).
    pub fn add_address(&self, address: &str, status: &str, tenant: Option<&str>, description: &str) -> u64 {
        let mut s = self.shared.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.clock += 1;
        let version = s.clock;
        s.records.insert(
            id,
            Record {
                id,
                address: address.to_owned(),
                status: status.to_owned(),
                tenant: tenant.map(str::to_owned),
                description: description.to_owned(),
                version,
            },
        );
        id
    }

    /// Every IP address, by id.
    #[must_use]
    pub fn records(&self) -> Vec<Record> {
        self.shared.lock().records.values().cloned().collect()
    }

    /// The first IP address whose address is `ip`.
    #[must_use]
    pub fn record(&self, ip: &str) -> Option<Record> {
        let ip: IpAddr = ip.parse().ok()?;
        self.shared.lock().records.values().find(|r| r.ip() == Some(ip)).cloned()
    }

    /// Changes an IP address as a NetBox user would.
    pub fn set(&self, ip: &str, status: &str, description: &str) {
        let Ok(ip) = ip.parse::<IpAddr>() else { return };
        let mut s = self.shared.lock();
        s.clock += 1;
        let version = s.clock;
        for r in s.records.values_mut().filter(|r| r.ip() == Some(ip)) {
            r.status = status.to_owned();
            r.description = description.to_owned();
            r.version = version;
        }
    }

    /// Requests received so far.
    #[must_use]
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// Fault switches.
    #[must_use]
    pub fn faults(&self) -> NetboxFaults {
        NetboxFaults { shared: self.shared.clone() }
    }
}

impl NetboxFaults {
    /// Refuses connections (and drops open ones) while `on`.
    pub fn unreachable(&self, on: bool) {
        self.shared.reachable.send_replace(!on);
    }

    /// Waits `delay` before answering each request.
    pub fn slow(&self, delay: Duration) {
        self.shared.lock().faults.delay = delay;
    }

    /// Answers `status` (an HTML error page, as NetBox behind a proxy does) to the next
    /// `count` requests, or to all while `count` is `None`; `status` 0 switches it off.
    pub fn fail(&self, status: u16, count: Option<usize>) {
        let mut s = self.shared.lock();
        s.faults.fail_status = (status != 0).then_some(status);
        s.faults.fail_remaining = count;
    }

    /// Cuts every JSON answer in half (with a matching Content-Length).
    pub fn truncate(&self, on: bool) {
        self.shared.lock().faults.truncate = on;
    }

    /// Never sends more than `n` objects per page, whatever `limit` asks.
    pub fn max_page_size(&self, n: Option<usize>) {
        self.shared.lock().faults.max_page = n;
    }

    /// Behaves like NetBox before 4.6: no `ETag`, `If-Match` ignored.
    pub fn no_etag(&self, on: bool) {
        self.shared.lock().faults.no_etag = on;
    }

    /// Status of authentication failures (NetBox answers 403; some proxies 401).
    pub fn auth_status(&self, status: u16) {
        self.shared.lock().faults.auth_status = Some(status);
    }

    /// Someone else sets `ip` to `status`/`description` once, at `when`.
    pub fn someone_else(&self, ip: &str, when: When, status: &str, description: &str) {
        let Ok(ip) = ip.parse::<IpAddr>() else { return };
        self.shared.lock().faults.changes.push(Change {
            ip,
            when,
            status: status.to_owned(),
            description: description.to_owned(),
        });
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: tokio::net::TcpListener, addr: SocketAddr) {
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    let mut reachable = shared.reachable.subscribe();
    loop {
        if !*reachable.borrow_and_update() {
            listener = None;
            connections.abort_all();
            let _ = reachable.changed().await;
            continue;
        }
        let Some(active) = listener.as_ref() else {
            match rebind(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = active.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = reachable.changed() => {}
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn rebind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// An answer before it is sent (the body is needed whole to truncate it).
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let mut headers = http::HeaderMap::new();
        if !content_type.is_empty() {
            headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        }
        Self { status, headers, body: body.into() }
    }

    fn status(&self) -> StatusCode {
        self.status
    }

    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        &mut self.headers
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.body));
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers;
        r
    }
}

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    Answer::new(status, "application/json", body.to_string())
}

fn detail(status: StatusCode, text: &str) -> Answer {
    json_answer(status, &json!({ "detail": text }))
}

fn field_error(field: &str, text: &str) -> Answer {
    json_answer(StatusCode::BAD_REQUEST, &json!({ field: [text] }))
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
    let delay = shared.lock().faults.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut answer = respond(shared, &parts, &body);
    let mut s = shared.lock();
    if s.faults.truncate && answer.status().is_success() {
        answer.body = answer.body.slice(..answer.body.len() / 2);
    }
    s.seen.push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        if_match: parts.headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned),
        status: answer.status().as_u16(),
    });
    answer.into_response()
}

fn respond(shared: &Shared, parts: &http::request::Parts, body: &[u8]) -> Answer {
    let mut s = shared.lock();
    if let Some(status) = s.faults.fail_status {
        let go_on = match &mut s.faults.fail_remaining {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        };
        if go_on {
            return Answer::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "text/html",
                format!("<html><body><h1>Server Error ({status})</h1></body></html>"),
            );
        }
        s.faults.fail_status = None;
    }
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix("/api/") else {
        return detail(StatusCode::NOT_FOUND, "Not found.");
    };
    if !path.ends_with('/') {
        let mut r = Answer::new(StatusCode::MOVED_PERMANENTLY, "", Bytes::new());
        let location = format!("{path}/{}", parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default());
        if let Ok(v) = http::HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    // Authentication comes first, as in NetBox (every endpoint needs it).
    let auth_status = StatusCode::from_u16(s.faults.auth_status.unwrap_or(403)).unwrap_or(StatusCode::FORBIDDEN);
    let token = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")).then(|| token.trim().to_owned())
    });
    let Some(token) = token else {
        return detail(auth_status, "Authentication credentials were not provided.");
    };
    let Some(write) = s.tokens.get(&token).copied() else {
        return detail(auth_status, "Invalid token");
    };
    let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("netbox").to_owned();
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match (segments.as_slice(), &parts.method) {
        (["ipam", "ip-addresses"], &Method::GET) => list(&s, &host, parts.uri.query().unwrap_or_default()),
        (["ipam", "ip-addresses"], m) => {
            detail(StatusCode::METHOD_NOT_ALLOWED, &format!("Method \"{m}\" not allowed."))
        }
        (["ipam", "ip-addresses", id], method) => {
            let Ok(id) = id.parse::<u64>() else {
                return detail(StatusCode::NOT_FOUND, "Not found.");
            };
            match *method {
                Method::GET => get_one(&mut s, &host, id),
                Method::PATCH if !write => {
                    detail(StatusCode::FORBIDDEN, "You do not have permission to perform this action.")
                }
                Method::PATCH => patch_one(&mut s, &host, id, parts, body),
                ref m => detail(StatusCode::METHOD_NOT_ALLOWED, &format!("Method \"{m}\" not allowed.")),
            }
        }
        _ => detail(StatusCode::NOT_FOUND, "Not found."),
    }
}

fn timestamp(version: u64) -> String {
    format!("2026-01-01T00:00:00.{version:06}Z")
}

fn etag(r: &Record) -> String {
    format!("\"{}\"", timestamp(r.version))
}

fn object(s: &State, host: &str, r: &Record) -> Value {
    let family = match r.ip() {
        Some(IpAddr::V6(_)) => json!({"value": 6, "label": "IPv6"}),
        _ => json!({"value": 4, "label": "IPv4"}),
    };
    let status_label = STATUSES.iter().find(|(v, _)| *v == r.status).map_or(r.status.as_str(), |(_, l)| *l);
    let tenant =
        r.tenant.as_ref().and_then(|slug| s.tenants.iter().find(|t| &t.slug == slug)).map_or(Value::Null, |t| {
            json!({"id": t.id, "url": format!("http://{host}/api/tenancy/tenants/{}/", t.id), "display": t.name,
               "name": t.name, "slug": t.slug, "description": ""})
        });
    json!({
        "id": r.id,
        "url": format!("http://{host}/api/ipam/ip-addresses/{}/", r.id),
        "display_url": format!("http://{host}/ipam/ip-addresses/{}/", r.id),
        "display": r.address,
        "family": family,
        "address": r.address,
        "vrf": null,
        "tenant": tenant,
        "status": {"value": r.status, "label": status_label},
        "role": null,
        "assigned_object_type": null,
        "assigned_object_id": null,
        "assigned_object": null,
        "nat_inside": null,
        "nat_outside": [],
        "dns_name": "",
        "description": r.description,
        "comments": "",
        "tags": [],
        "custom_fields": {},
        "created": timestamp(0),
        "last_updated": timestamp(r.version),
    })
}

fn choice_error(field: &str, value: &str) -> Answer {
    field_error(field, &format!("Select a valid choice. {value} is not one of the available choices."))
}

fn list(s: &State, host: &str, query: &str) -> Answer {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((decode(k), decode(v)));
    }
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0usize;
    let mut matching: Vec<&Record> = s.records.values().collect();
    for (k, v) in &params {
        match k.as_str() {
            "tenant" => {
                if !s.tenants.iter().any(|t| &t.slug == v) {
                    return choice_error("tenant", v);
                }
                matching.retain(|r| r.tenant.as_deref() == Some(v.as_str()));
            }
            "status" => {
                if !STATUSES.iter().any(|(c, _)| c == v) {
                    return choice_error("status", v);
                }
                matching.retain(|r| &r.status == v);
            }
            "family" => {
                let want = match v.as_str() {
                    "4" => false,
                    "6" => true,
                    _ => return choice_error("family", v),
                };
                matching.retain(|r| r.ip().is_some_and(|ip| ip.is_ipv6() == want));
            }
            "description" => matching.retain(|r| &r.description == v),
            "address" => {
                let ip: Option<IpAddr> = v.split('/').next().and_then(|a| a.parse().ok());
                matching.retain(|r| ip.is_some() && r.ip() == ip);
            }
            "limit" => limit = v.parse().unwrap_or(DEFAULT_LIMIT),
            "offset" => offset = v.parse().unwrap_or(0),
            other => {
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    &json!({"detail": format!("fake NetBox: query parameter {other:?} is not emulated")}),
                );
            }
        }
    }
    if limit == 0 {
        limit = MAX_PAGE_SIZE;
    }
    limit = limit.min(MAX_PAGE_SIZE).min(s.faults.max_page.unwrap_or(MAX_PAGE_SIZE)).max(1);
    matching.sort_by_key(|r| (r.ip().map(|ip| (ip.is_ipv6(), ip)), r.id));
    let count = matching.len();
    let results: Vec<Value> = matching.iter().skip(offset).take(limit).map(|r| object(s, host, r)).collect();
    let link = |new_offset: Option<usize>| {
        // As Django REST framework: replace limit/offset, sort the parameters.
        let mut q: BTreeMap<String, String> =
            params.iter().filter(|(k, _)| k != "limit" && k != "offset").cloned().collect();
        q.insert("limit".to_owned(), limit.to_string());
        if let Some(o) = new_offset {
            q.insert("offset".to_owned(), o.to_string());
        }
        let q: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        Value::String(format!("http://{host}/api/ipam/ip-addresses/?{}", q.join("&")))
    };
    let next = if offset + limit < count { link(Some(offset + limit)) } else { Value::Null };
    let previous = match offset {
        0 => Value::Null,
        o if o <= limit => link(None),
        o => link(Some(o - limit)),
    };
    json_answer(StatusCode::OK, &json!({"count": count, "next": next, "previous": previous, "results": results}))
}

fn apply_changes(s: &mut State, id: u64, when: When) {
    let Some(ip) = s.records.get(&id).and_then(Record::ip) else { return };
    let mut due = Vec::new();
    s.faults.changes.retain(|c| {
        if c.ip == ip && c.when == when {
            due.push(c.clone());
            false
        } else {
            true
        }
    });
    for c in due {
        s.clock += 1;
        let version = s.clock;
        if let Some(r) = s.records.get_mut(&id) {
            r.status = c.status;
            r.description = c.description;
            r.version = version;
        }
    }
}

fn not_found() -> Answer {
    detail(StatusCode::NOT_FOUND, "No IPAddress matches the given query.")
}

fn with_etag(s: &State, mut answer: Answer, r: &Record) -> Answer {
    if !s.faults.no_etag
        && let Ok(v) = http::HeaderValue::from_str(&etag(r))
    {
        answer.headers_mut().insert(header::ETAG, v);
    }
    answer
}

fn get_one(s: &mut State, host: &str, id: u64) -> Answer {
    apply_changes(s, id, When::BeforeGet);
    let Some(r) = s.records.get(&id).cloned() else { return not_found() };
    let answer = with_etag(s, json_answer(StatusCode::OK, &object(s, host, &r)), &r);
    apply_changes(s, id, When::AfterGet);
    answer
}

fn patch_one(s: &mut State, host: &str, id: u64, parts: &http::request::Parts, body: &[u8]) -> Answer {
    let Some(current) = s.records.get(&id).cloned() else { return not_found() };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Unsupported media type \"{content_type}\" in request."),
        );
    }
    if !s.faults.no_etag
        && let Some(tag) = parts.headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && tag != "*"
        && tag != etag(&current)
    {
        return detail(StatusCode::PRECONDITION_FAILED, "The resource has been modified since the given ETag.");
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return detail(StatusCode::BAD_REQUEST, "JSON parse error - Expecting value: line 1 column 1 (char 0)");
    };
    let mut updated = current;
    for (k, v) in &fields {
        match (k.as_str(), v) {
            ("status", Value::String(v)) if STATUSES.iter().any(|(c, _)| c == v) => updated.status.clone_from(v),
            ("status", v) => return field_error("status", &format!("{v} is not a valid choice.")),
            ("description", Value::String(d)) if d.chars().count() <= 200 => updated.description.clone_from(d),
            ("description", Value::String(_)) => {
                return field_error("description", "Ensure this field has no more than 200 characters.");
            }
            ("description", _) => return field_error("description", "Not a valid string."),
            (other, _) => {
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    &json!({"detail": format!("fake NetBox: PATCH of {other:?} is not emulated")}),
                );
            }
        }
    }
    s.clock += 1;
    updated.version = s.clock;
    s.records.insert(id, updated);
    apply_changes(s, id, When::AfterPatch);
    let Some(saved) = s.records.get(&id).cloned() else { return not_found() };
    with_etag(s, json_answer(StatusCode::OK, &object(s, host, &saved)), &saved)
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
