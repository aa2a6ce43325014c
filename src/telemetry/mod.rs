//! Telemetry shared by every long-running subcommand: logs ([`init_tracing`]), the metrics
//! recorder ([`install_recorder`]) and the small HTTP server for `/metrics`, `/healthz` and
//! `/readyz` ([`MetricsServer::start`]). Metric names and help texts live in [`catalog`].

pub mod catalog;
pub mod scoped;

use std::{
    io::IsTerminal,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (no colour codes unless stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log level directive could not be parsed.
    #[error(
        "invalid --log-level {value:?}: {source}; use a level such as info or debug, or directives such as info,purelb=debug"
    )]
    LogLevel { value: String, source: tracing_subscriber::filter::ParseError },
    /// A global logger was already installed.
    #[error("cannot install the logger: {0}")]
    LoggerInstalled(String),
    /// A global metrics recorder was already installed.
    #[error("cannot install the metrics recorder: {0}")]
    RecorderInstalled(String),
    /// The metrics address could not be bound.
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Sets up logging to stderr. `level` (from `--log-level`) wins; otherwise `RUST_LOG`;
/// otherwise `info`.
///
/// # Errors
///
/// An invalid level, or a logger already installed.
pub fn init_tracing(level: Option<&str>, format: LogFormat) -> Result<(), TelemetryError> {
    let filter = match level {
        Some(value) => {
            EnvFilter::try_new(value).map_err(|source| TelemetryError::LogLevel { value: value.to_owned(), source })?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| TelemetryError::LoggerInstalled(e.to_string()))
}

/// Histogram buckets (seconds) for work and handover durations.
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Builds a Prometheus recorder with PureLB's histogram buckets, not installed globally
/// (tests use it with `metrics::with_local_recorder`).
#[must_use]
pub fn build_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".to_owned()), DURATION_BUCKETS)
        .map_or_else(|_| PrometheusBuilder::new().build_recorder(), PrometheusBuilder::build_recorder)
}

/// Installs the global metrics recorder, describes the metrics of `component` and sets
/// `purelb_build_info`. Call first thing: metrics recorded before it are lost.
///
/// # Errors
///
/// A recorder is already installed.
pub fn install_recorder(component: catalog::Component) -> Result<PrometheusHandle, TelemetryError> {
    let recorder = build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| TelemetryError::RecorderInstalled(e.to_string()))?;
    catalog::describe(component);
    Ok(handle)
}

/// Readiness of a component: `/readyz` answers 503 until [`Readiness::set_ready`] is called
/// with `true` (caches synced, state rebuilt), and again after it is set back to `false`.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A component that is not ready yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the component ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the component is ready.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct ServerState {
    handle: PrometheusHandle,
    readiness: Readiness,
}

/// The running `/metrics`, `/healthz`, `/readyz` server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped or aborted.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub async fn start(
        addr: SocketAddr,
        handle: PrometheusHandle,
        readiness: Readiness,
    ) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| TelemetryError::Bind { addr, source })?;
        let upkeep_handle = handle.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep_handle.run_upkeep();
            }
        });
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(ServerState { handle, readiness });
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        });
        tracing::info!(%local_addr, "serving /metrics, /healthz and /readyz");
        Ok(Self { local_addr, task, upkeep })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
        self.upkeep.abort();
    }
}

async fn metrics_page(State(state): State<ServerState>) -> impl IntoResponse {
    let mut body = state.handle.render();
    scoped::render(&mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: caches have not synced yet\n")
    }
}
