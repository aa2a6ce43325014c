//! The NetBox REST calls PureLB makes, on `/api/ipam/ip-addresses/` only: list (with filters
//! and `{count,next,previous,results}` pagination), get one, patch one. Every call carries
//! `Authorization: Token <t>`, is bounded by a timeout (connection, request and the whole
//! body), reads at most [`MAX_BODY`] bytes, and is counted in
//! `purelb_netbox_requests_total{method,code}` and `purelb_netbox_request_duration_seconds{method}`.
//!
//! Nothing NetBox sends can make this panic: bodies that are not the JSON we expect (truncated,
//! HTML error pages, wrong shapes) are [`NetboxError::Malformed`]; single objects in a listing
//! that make no sense (an `address` that is not an address, no `id`) are skipped and counted.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client as LegacyClient, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use serde::Deserialize;
use serde_json::Value;

use super::token::{Token, TokenError};
use crate::{core::ipam::Family, telemetry::catalog};

/// Largest answer read from NetBox.
pub const MAX_BODY: usize = 8 << 20;
/// Most pages one listing follows.
const MAX_PAGES: usize = 1000;
/// Page size asked for (NetBox's default `MAX_PAGE_SIZE` is 1000; it may send fewer).
const PAGE_SIZE: u32 = 200;

/// What went wrong talking to NetBox. Messages never contain the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetboxError {
    /// `spec.netbox.url` is not usable.
    #[error("spec.netbox.url {url:?} is not usable: {why}")]
    InvalidUrl { url: String, why: String },
    /// HTTPS is needed but no CA certificates could be loaded.
    #[error("cannot talk HTTPS to NetBox at {url}: {detail}")]
    Tls { url: String, detail: String },
    /// The connection could not be made.
    #[error("cannot reach NetBox at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The connection broke or the answer was not HTTP.
    #[error("the connection to NetBox at {url} failed: {detail}")]
    Transport { url: String, detail: String },
    /// No complete answer within the timeout.
    #[error("NetBox at {url} did not answer a {method} within {timeout:?}")]
    Timeout { url: String, method: &'static str, timeout: Duration },
    /// 401 or 403: the token is wrong or lacks permission.
    #[error(
        "NetBox at {url} refused the API token (HTTP {status}: {detail}): the token is wrong, expired, or lacks permission (it needs view and change on IPAM IP addresses)"
    )]
    Auth { url: String, status: u16, detail: String },
    /// 404.
    #[error("NetBox at {url} has no {what} (HTTP 404: {detail})")]
    NotFound { url: String, what: String, detail: String },
    /// 400: NetBox refused the request (e.g. an unknown tenant slug).
    #[error("NetBox at {url} refused the request (HTTP 400: {detail})")]
    BadRequest { url: String, detail: String },
    /// 412: the object changed since it was read (NetBox 4.6+ `If-Match`).
    #[error("NetBox at {url}: the IP address changed since it was read (HTTP 412)")]
    PreconditionFailed { url: String },
    /// 429 or 5xx.
    #[error("NetBox at {url} failed (HTTP {status}: {detail})")]
    Server { url: String, status: u16, detail: String },
    /// Any other status.
    #[error("NetBox at {url} answered HTTP {status}: {detail}")]
    Unexpected { url: String, status: u16, detail: String },
    /// The body is not what the API documents (bad or truncated JSON, wrong shape).
    #[error("NetBox at {url} sent a malformed answer: {what}")]
    Malformed { url: String, what: String },
    /// The token could not be read.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl NetboxError {
    /// Whether trying again later can help without anybody changing anything (NetBox or the
    /// network is down, slow or broken for a while).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Transport { .. }
            | Self::Timeout { .. }
            | Self::Server { .. }
            | Self::Malformed { .. }
            | Self::PreconditionFailed { .. } => true,
            Self::Token(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether NetBox refused the token.
    #[must_use]
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }
}

type HttpsClient = LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>;
type PlainClient = LegacyClient<HttpConnector, Full<Bytes>>;

/// Connection pools shared by every [`Client`]: plain HTTP, and HTTPS with the system's CA
/// certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR` point elsewhere).
#[derive(Clone)]
pub struct Http {
    plain: PlainClient,
    tls: Result<HttpsClient, String>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("tls", &self.tls.as_ref().map(|_| "ready")).finish()
    }
}

impl Http {
    /// Connection pools; `connect_timeout` bounds every TCP connect. HTTPS is unavailable (and
    /// says why on use) when no CA certificate can be loaded.
    #[must_use]
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(false);
        let builder = || {
            let mut b = LegacyClient::builder(TokioExecutor::new());
            b.pool_timer(TokioTimer::new()).pool_idle_timeout(Duration::from_secs(30)).pool_max_idle_per_host(4);
            b
        };
        let plain = builder().build(connector.clone());
        // The ring provider explicitly: never the process default, which a second provider
        // compiled in elsewhere would make ambiguous.
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map(|b| builder().build(b.https_or_http().enable_http1().wrap_connector(connector)))
            .map_err(|e| format!("no CA certificates could be loaded ({e}); set SSL_CERT_FILE to a CA bundle"));
        Self { plain, tls }
    }
}

/// Where the NetBox API is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Base {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Path prefix without trailing `/` (`""` or e.g. `/netbox`).
    prefix: String,
    /// For messages.
    shown: String,
}

impl Base {
    fn parse(url: &str) -> Result<Self, NetboxError> {
        let bad = |why: &str| NetboxError::InvalidUrl { url: url.chars().take(200).collect(), why: why.to_owned() };
        let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(bad("the scheme must be http or https"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not allowed; use tokenSecretRef"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let prefix = prefix.strip_suffix("/api").unwrap_or(&prefix).to_owned();
        let shown = format!("{scheme}://{authority}{prefix}");
        Ok(Self { scheme, authority, prefix, shown })
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, NetboxError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.prefix))
            .build()
            .map_err(|e| NetboxError::InvalidUrl { url: self.shown.clone(), why: e.to_string() })
    }
}

/// Checks that `url` can be used as `spec.netbox.url`; returns it as PureLB shows it.
///
/// # Errors
///
/// [`NetboxError::InvalidUrl`] saying why.
pub fn check_url(url: &str) -> Result<String, NetboxError> {
    Base::parse(url).map(|b| b.shown)
}

/// Filters of `GET /api/ipam/ip-addresses/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `tenant=<slug>`.
    pub tenant: Option<String>,
    /// `status=<value>` (`reserved`, `active`, ...).
    pub status: Option<String>,
    /// `family=4|6`.
    pub family: Option<Family>,
    /// `description=<exact text>`.
    pub description: Option<String>,
    /// `address=<ip>` (any prefix length).
    pub address: Option<IpAddr>,
}

impl Filter {
    fn query(&self, limit: u32) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &self.tenant {
            pairs.push(("tenant", t.clone()));
        }
        if let Some(s) = &self.status {
            pairs.push(("status", s.clone()));
        }
        if let Some(f) = self.family {
            pairs.push(("family", if f == Family::V4 { "4" } else { "6" }.to_owned()));
        }
        if let Some(d) = &self.description {
            pairs.push(("description", d.clone()));
        }
        if let Some(a) = self.address {
            pairs.push(("address", a.to_string()));
        }
        pairs.push(("limit", limit.to_string()));
        pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A tenant as NetBox nests it in an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRef {
    /// `id`.
    pub id: u64,
    /// `slug`.
    pub slug: String,
    /// `name`.
    pub name: String,
}

/// The fields of a NetBox IP address PureLB reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpAddressObject {
    /// `id`.
    pub id: u64,
    /// The address part of `address`.
    pub ip: IpAddr,
    /// The prefix length of `address`.
    pub prefix_len: u8,
    /// `status.value`.
    pub status: String,
    /// `tenant`.
    pub tenant: Option<TenantRef>,
    /// `description`.
    pub description: String,
    /// The `ETag` header of a single-object answer (NetBox 4.6+).
    pub etag: Option<String>,
}

#[derive(Deserialize)]
struct RawIp {
    id: u64,
    address: String,
    status: RawChoice,
    #[serde(default)]
    tenant: Option<RawTenant>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawChoice {
    Object { value: String },
    Plain(String),
}

#[derive(Deserialize)]
struct RawTenant {
    id: u64,
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
}

/// Parses `192.0.2.10/24` (or a bare address, as a host prefix).
fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match text.trim().split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip: IpAddr = text.trim().parse().ok()?;
            (ip, Family::of(ip).bits())
        }
    };
    (len <= Family::of(ip).bits()).then_some((ip, len))
}

impl IpAddressObject {
    /// Reads one object; `None` when it lacks what the API promises.
    fn from_value(value: Value) -> Option<Self> {
        let raw: RawIp = serde_json::from_value(value).ok()?;
        let (ip, prefix_len) = parse_cidr(&raw.address)?;
        let status = match raw.status {
            RawChoice::Object { value } | RawChoice::Plain(value) => value,
        };
        Some(Self {
            id: raw.id,
            ip,
            prefix_len,
            status,
            tenant: raw.tenant.map(|t| TenantRef { id: t.id, slug: t.slug, name: t.name }),
            description: raw.description.unwrap_or_default(),
            etag: None,
        })
    }

    /// The tenant's slug, if any.
    #[must_use]
    pub fn tenant_slug(&self) -> Option<&str> {
        self.tenant.as_ref().map(|t| t.slug.as_str())
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// `count`: objects matching the filter on all pages.
    pub count: u64,
    /// The objects of this page that make sense.
    pub results: Vec<IpAddressObject>,
    /// Objects of this page skipped because they make no sense.
    pub skipped: usize,
    /// Query of the next page, if any.
    next: Option<String>,
    /// Pages read so far in this listing (this one included).
    number: usize,
}

impl Page {
    /// Whether another page follows.
    #[must_use]
    pub fn has_next(&self) -> bool {
        self.next.is_some()
    }
}

/// The body of a PATCH of an IP address: the fields PureLB writes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IpAddressPatch {
    /// `status`: `active` when taken, `reserved` when given back.
    pub status: String,
    /// `description`: the owner (`purelb:<namespace>/<service>`), or empty when given back.
    pub description: String,
}

/// The owner recorded in `description`: `purelb:<namespace>/<service>`.
#[must_use]
pub fn owner_description(namespace: &str, name: &str) -> String {
    format!("purelb:{namespace}/{name}")
}

/// A NetBox API endpoint with its token.
#[derive(Clone, Debug)]
pub struct Client {
    http: Http,
    base: Base,
    token: Token,
    timeout: Duration,
    page_size: u32,
}

/// Makes text from NetBox safe to show: printable, one line, at most 200 characters.
fn clean(text: &str) -> String {
    let t: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The useful part of an error body: `detail`, else the first field error, else the text.
fn detail_of(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            if let Some(Value::String(d)) = map.get("detail") {
                return clean(d);
            }
            for (field, v) in &map {
                let msg = match v {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
                    Value::String(s) => s.clone(),
                    _ => continue,
                };
                return clean(&format!("{field}: {msg}"));
            }
            "empty error object".to_owned()
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            if text.trim_start().starts_with('<') {
                "an HTML page".to_owned()
            } else if text.trim().is_empty() {
                "no details".to_owned()
            } else {
                clean(&text)
            }
        }
    }
}

/// The error chain of a transport error, as one clean line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    clean(&parts.join(": "))
}

struct Answer {
    status: StatusCode,
    body: Bytes,
    etag: Option<String>,
    location: Option<String>,
}

impl Client {
    /// A client for the NetBox at `url` (e.g. `https://netbox.example.com`, a path prefix is
    /// kept), authenticating with `token`; every call is bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// `url` is not an http(s) URL.
    pub fn new(http: &Http, url: &str, token: Token, timeout: Duration) -> Result<Self, NetboxError> {
        Ok(Self { http: http.clone(), base: Base::parse(url)?, token, timeout, page_size: PAGE_SIZE })
    }

    /// The same client asking for pages of at most `n` objects.
    #[must_use]
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// The NetBox URL, for messages.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.base.shown
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
    ) -> Result<Answer, NetboxError> {
        let url = self.base.shown.clone();
        let uri = self.base.uri(path_and_query)?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("purelb/", env!("CARGO_PKG_VERSION")))
            .header(header::AUTHORIZATION, self.token.header()?);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(tag) = if_match
            && let Ok(v) = http::HeaderValue::from_str(tag)
        {
            request = request.header(header::IF_MATCH, v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| NetboxError::InvalidUrl { url: url.clone(), why: e.to_string() })?;
        let method_label: &'static str = if method == Method::PATCH { "PATCH" } else { "GET" };
        let started = std::time::Instant::now();
        let is_https = self.base.scheme == http::uri::Scheme::HTTPS;
        let exchange = async {
            let response = if is_https {
                match &self.http.tls {
                    Ok(client) => client.request(request).await,
                    Err(detail) => return Err(NetboxError::Tls { url: url.clone(), detail: detail.clone() }),
                }
            } else {
                self.http.plain.request(request).await
            };
            let response = response.map_err(|e| {
                let detail = chain(&e);
                if e.is_connect() {
                    NetboxError::Unreachable { url: url.clone(), detail }
                } else {
                    NetboxError::Transport { url: url.clone(), detail }
                }
            })?;
            let status = response.status();
            let text = |name: header::HeaderName| {
                response.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(200).collect())
            };
            let etag = text(header::ETAG);
            let location = text(header::LOCATION).map(|l: String| clean(&l));
            let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    NetboxError::Malformed { url: url.clone(), what: format!("an answer larger than {MAX_BODY} bytes") }
                } else {
                    NetboxError::Transport { url: url.clone(), detail: clean(&format!("reading the answer: {e}")) }
                }
            })?;
            Ok(Answer { status, body: body.to_bytes(), etag, location })
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(NetboxError::Timeout { url: url.clone(), method: method_label, timeout: self.timeout }),
        };
        let code = match &result {
            Ok(a) => a.status.as_u16().to_string(),
            Err(NetboxError::Timeout { .. }) => "timeout".to_owned(),
            Err(_) => "error".to_owned(),
        };
        metrics::counter!(catalog::NETBOX_REQUESTS, "method" => method_label, "code" => code).increment(1);
        metrics::histogram!(catalog::NETBOX_REQUEST_DURATION, "method" => method_label)
            .record(started.elapsed().as_secs_f64());
        let answer = result?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        let status = answer.status.as_u16();
        let detail = detail_of(&answer.body);
        Err(match status {
            401 | 403 => NetboxError::Auth { url, status, detail },
            404 => NetboxError::NotFound { url, what: "such IP address".to_owned(), detail },
            400 => NetboxError::BadRequest { url, detail },
            412 => NetboxError::PreconditionFailed { url },
            429 | 500..=599 => NetboxError::Server { url, status, detail },
            300..=399 => NetboxError::Unexpected {
                url,
                status,
                detail: format!(
                    "a redirect to {}; set spec.netbox.url to the address NetBox is served at",
                    answer.location.unwrap_or_else(|| "an unknown place".to_owned())
                ),
            },
            _ => NetboxError::Unexpected { url, status, detail },
        })
    }

    fn json(&self, body: &[u8]) -> Result<Value, NetboxError> {
        serde_json::from_slice(body).map_err(|e| NetboxError::Malformed {
            url: self.base.shown.clone(),
            what: clean(&format!("not the JSON the API documents ({e})")),
        })
    }

    fn list_path(&self) -> &'static str {
        "/api/ipam/ip-addresses/"
    }

    /// The first page of IP addresses matching `filter`.
    ///
    /// # Errors
    ///
    /// See [`NetboxError`].
    pub async fn list_first(&self, filter: &Filter) -> Result<Page, NetboxError> {
        self.page(format!("{}?{}", self.list_path(), filter.query(self.page_size)), 1).await
    }

    /// The page after `page`, if any.
    ///
    /// # Errors
    ///
    /// See [`NetboxError`]; too many pages is [`NetboxError::Malformed`].
    pub async fn list_next(&self, page: &Page) -> Result<Option<Page>, NetboxError> {
        let Some(next) = &page.next else { return Ok(None) };
        if page.number >= MAX_PAGES {
            return Err(NetboxError::Malformed {
                url: self.base.shown.clone(),
                what: format!("more than {MAX_PAGES} pages"),
            });
        }
        self.page(next.clone(), page.number + 1).await.map(Some)
    }

    /// Every IP address matching `filter`, following `next` links.
    ///
    /// # Errors
    ///
    /// See [`NetboxError`].
    pub async fn list_all(&self, filter: &Filter) -> Result<Vec<IpAddressObject>, NetboxError> {
        let mut page = self.list_first(filter).await?;
        let mut all = std::mem::take(&mut page.results);
        while let Some(mut next) = self.list_next(&page).await? {
            all.append(&mut next.results);
            page = next;
        }
        Ok(all)
    }

    async fn page(&self, path_and_query: String, number: usize) -> Result<Page, NetboxError> {
        let answer = self.call(Method::GET, &path_and_query, None, None).await?;
        let malformed = |what: &str| NetboxError::Malformed { url: self.base.shown.clone(), what: what.to_owned() };
        let Value::Object(mut map) = self.json(&answer.body)? else {
            return Err(malformed("a listing that is not an object"));
        };
        let count = map.get("count").and_then(Value::as_u64).ok_or_else(|| malformed("a listing without count"))?;
        let Some(Value::Array(items)) = map.remove("results") else {
            return Err(malformed("a listing without results"));
        };
        let next = match map.get("next") {
            None | Some(Value::Null) => None,
            Some(Value::String(url)) => {
                // Only the query is taken: the page is read from the configured URL, whatever
                // host or scheme NetBox believes it has behind a proxy.
                let query = url.parse::<Uri>().ok().and_then(|u| u.query().map(str::to_owned));
                let Some(query) = query else { return Err(malformed("a next link without a query")) };
                let next = format!("{}?{query}", self.list_path());
                if next == path_and_query {
                    return Err(malformed("a next link to the same page"));
                }
                Some(next)
            }
            Some(_) => return Err(malformed("a next link that is not a string")),
        };
        let total = items.len();
        let results: Vec<IpAddressObject> = items.into_iter().filter_map(IpAddressObject::from_value).collect();
        let skipped = total - results.len();
        if skipped > 0 {
            tracing::warn!(url = %self.base.shown, skipped, "NetBox listed IP addresses without a usable id, address or status; skipped");
        }
        Ok(Page { count, results, skipped, next, number })
    }

    fn object(&self, answer: &Answer) -> Result<IpAddressObject, NetboxError> {
        let mut object =
            IpAddressObject::from_value(self.json(&answer.body)?).ok_or_else(|| NetboxError::Malformed {
                url: self.base.shown.clone(),
                what: "an IP address without a usable id, address or status".to_owned(),
            })?;
        object.etag.clone_from(&answer.etag);
        Ok(object)
    }

    /// `GET /api/ipam/ip-addresses/<id>/`, with its `ETag` when NetBox sends one.
    ///
    /// # Errors
    ///
    /// See [`NetboxError`].
    pub async fn get(&self, id: u64) -> Result<IpAddressObject, NetboxError> {
        let answer = self.call(Method::GET, &format!("{}{id}/", self.list_path()), None, None).await?;
        self.object(&answer)
    }

    /// `PATCH /api/ipam/ip-addresses/<id>/` with `patch`; with `if_match`, NetBox 4.6+ refuses
    /// (412) when the object changed since that `ETag`. Returns the object as NetBox saved it.
    ///
    /// # Errors
    ///
    /// See [`NetboxError`].
    pub async fn patch(
        &self,
        id: u64,
        patch: &IpAddressPatch,
        if_match: Option<&str>,
    ) -> Result<IpAddressObject, NetboxError> {
        let body = serde_json::to_vec(patch)
            .map_err(|e| NetboxError::Malformed { url: self.base.shown.clone(), what: e.to_string() })?;
        let answer = self.call(Method::PATCH, &format!("{}{id}/", self.list_path()), Some(body), if_match).await?;
        self.object(&answer)
    }
}

#[cfg(test)]
mod tests;
