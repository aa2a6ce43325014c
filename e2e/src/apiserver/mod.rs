//! A Kubernetes API emulator: an in-memory API server speaking the real REST protocol, for
//! in-process tests (a `tower::Service` handed to `kube::Client::new`) and as an HTTP server
//! (for the lab, `kubectl` and other clients). What it approximates is listed in
//! `e2e/README.md`.
//!
//! Entry points: [`Emulator::start`], [`Emulator::client`], [`Emulator::serve`].

mod builtin;
mod faults;
mod handler;
mod patch;
pub mod protobuf;
pub mod rbac;
mod registry;
mod selectors;
mod store;
mod table;
use purelb::ops::schema as validation;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
pub use faults::{FailMode, FailRule, FaultRequest, Faults, Injected};
pub use handler::ResponseBody;
use handler::{ApiRequest, Server, parse_query};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
pub use rbac::Identity;
use registry::Registry;
use store::Store;
use tokio::{net::TcpListener, task::JoinSet};

/// How to run the emulator.
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// Persist state here (survives restarts).
    pub data_dir: Option<PathBuf>,
    /// Enforce RBAC on requests that carry a bearer token.
    pub authorize: bool,
    /// Version reported by `/version`.
    pub version: String,
    /// Watch history kept per resource (older resumes get 410 Gone).
    pub history_limit: usize,
    /// Default families of new Services (`IPv4`, `IPv6`), primary first.
    pub service_families: Vec<String>,
    /// Interval between watch bookmarks.
    pub bookmark_interval: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            authorize: false,
            version: "v1.33.0".to_owned(),
            history_limit: 10_000,
            service_families: vec!["IPv4".to_owned(), "IPv6".to_owned()],
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The data directory could not be used.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running emulator (shared by its in-process clients and HTTP listener).
#[derive(Clone, Debug)]
pub struct Emulator {
    server: Arc<Server>,
}

/// The in-process client transport refused the request (fault injection).
#[derive(Debug, thiserror::Error)]
#[error("connection refused (emulator unavailable)")]
pub struct Refused;

impl Emulator {
    /// Starts an emulator.
    ///
    /// # Errors
    ///
    /// The data directory cannot be read or written.
    pub fn start(options: EmulatorOptions) -> Result<Self, EmulatorError> {
        let store = Store::open(options.data_dir.as_deref(), options.history_limit)?;
        let mut server =
            Server::new(store, Registry::new(&options.version), options.authorize, options.service_families);
        server.bookmark_interval = options.bookmark_interval;
        let server = Arc::new(server);
        server.bootstrap();
        Ok(Self { server })
    }

    /// A kube client talking to this emulator in-process (as `admin`, or as the identity of
    /// `token` when given).
    #[must_use]
    pub fn client(&self, token: Option<&str>) -> purelb::kube::Client {
        purelb::kube::Client::new(InProcess { server: self.server.clone(), token: token.map(str::to_owned) }, "default")
    }

    /// Fault switches.
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.server.faults
    }

    /// Maps a bearer token to a user (`system:serviceaccount:<ns>:<name>` or any name).
    pub fn add_token(&self, token: &str, user: &str) {
        self.server.add_token(token, Identity::from_user(user));
    }

    /// Maps a bearer token to a user who is also in `groups` (besides `system:authenticated`).
    pub fn add_token_in_groups(&self, token: &str, user: &str, groups: &[&str]) {
        let mut identity = Identity::from_user(user);
        identity.groups.extend(groups.iter().map(|g| (*g).to_owned()));
        self.server.add_token(token, identity);
    }

    /// The current cluster-wide revision.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.server.store.revision()
    }

    /// How many requests of `verb` (`create`, `update`, `patch`, `list` ..) on `resource`
    /// (`services`, `services/status` ..) the emulator has served, from every client.
    #[must_use]
    pub fn requests(&self, verb: &str, resource: &str) -> u64 {
        self.server.request_count(verb, resource)
    }

    /// Requests answered 409 Conflict so far, from every client.
    #[must_use]
    pub fn conflicts(&self) -> u64 {
        self.server.conflict_count()
    }

    /// Drops retained watch history (watches from older revisions get 410 Gone).
    pub fn compact(&self) {
        self.server.store.compact();
    }

    /// The stored objects of a resource (`group` "" for core), in one namespace or all, read
    /// directly from the store: for observers (tests, benchmarks) that must not load the server.
    #[must_use]
    pub fn objects(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Arc<serde_json::Value>> {
        self.server.store.list(&(group.to_owned(), plural.to_owned()), namespace).0
    }

    /// Serves HTTP on `addr` (port 0 picks one) until the returned handle is dropped.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub async fn serve(&self, addr: SocketAddr) -> Result<HttpServer, EmulatorError> {
        let listener = std::net::TcpListener::bind(addr).map_err(|source| EmulatorError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| EmulatorError::Bind { addr, source })?;
        self.serve_listener(listener, move || std::net::TcpListener::bind(local))
    }

    /// Serves HTTP on an already bound listener (e.g. one bound inside another network
    /// namespace) until the returned handle is dropped. `rebind` opens the same address again
    /// after a `refuse` fault closed the listener. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// The listener cannot be handed to the runtime.
    pub fn serve_listener(
        &self,
        listener: std::net::TcpListener,
        rebind: impl Fn() -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static,
    ) -> Result<HttpServer, EmulatorError> {
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let local = listener.local_addr().map_err(|source| EmulatorError::Bind { addr: unknown, source })?;
        let listener = to_tokio(listener).map_err(|source| EmulatorError::Bind { addr: local, source })?;
        let server = self.server.clone();
        let task = tokio::spawn(accept_loop(server, listener, Box::new(rebind)));
        Ok(HttpServer { addr: local, task })
    }
}

type Rebind = Box<dyn Fn() -> std::io::Result<std::net::TcpListener> + Send + Sync>;

fn to_tokio(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// A running HTTP listener; stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server stops (it only stops when aborted).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener, rebind: Rebind) {
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    loop {
        if let Some(until) = server.faults.refusing_until() {
            if listener.is_some() {
                server.faults.count(|i| i.refused += 1);
            }
            listener = None;
            connections.abort_all();
            tokio::time::sleep_until(until.into()).await;
            continue;
        }
        let Some(active) = listener.as_ref() else {
            match rebind().and_then(to_tokio) {
                Ok(l) => listener = Some(l),
                Err(error) => {
                    tracing::warn!(%error, "cannot re-bind the emulator listener; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = active.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let server = server.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
                            Ok::<_, Infallible>(server.handle(to_api_request(parts, body)).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn to_api_request(parts: http::request::Parts, body: Bytes) -> ApiRequest {
    ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parse_query(parts.uri.query()),
        headers: parts.headers,
        body,
    }
}

/// The in-process transport for kube clients.
#[derive(Clone, Debug)]
struct InProcess {
    server: Arc<Server>,
    token: Option<String>,
}

impl tower::Service<http::Request<purelb::kube::client::Body>> for InProcess {
    type Response = http::Response<ResponseBody>;
    type Error = Refused;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Refused>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Refused>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<purelb::kube::client::Body>) -> Self::Future {
        let server = self.server.clone();
        let token = self.token.clone();
        Box::pin(async move {
            if server.faults.refusing_until().is_some() {
                server.faults.count(|i| i.refused += 1);
                return Err(Refused);
            }
            let (mut parts, body) = req.into_parts();
            let body = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
            if let Some(token) = token
                && let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}"))
            {
                parts.headers.insert(http::header::AUTHORIZATION, value);
            }
            Ok(server.handle(to_api_request(parts, body)).await)
        })
    }
}

/// Writes a kubeconfig for `server_url`, authenticating with `token` when given.
///
/// # Errors
///
/// The file cannot be written.
pub fn write_kubeconfig(path: &Path, server_url: &str, token: Option<&str>, namespace: &str) -> std::io::Result<()> {
    let user = match token {
        Some(t) => format!("    token: {t}\n"),
        None => "    {}\n".to_owned(),
    };
    let user_block = if token.is_some() { format!("  user:\n{user}") } else { "  user: {}\n".to_owned() };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server_url}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: {namespace}\ncurrent-context: lab\nusers:\n- name: lab\n{user_block}"
    );
    std::fs::write(path, text)
}
