//! What every long-running subcommand does at start: logging, the metrics recorder and HTTP
//! server, a Kubernetes client from `--kubeconfig` (else `KUBECONFIG`, else in-cluster), and
//! a shutdown signal (SIGTERM or Ctrl-C). Entry points: [`start`], [`kube_client`],
//! [`shutdown_signal`].

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{
    cli::CommonArgs,
    telemetry::{self, MetricsServer, Readiness, TelemetryError, catalog::Component},
};

/// Errors starting a subcommand.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Logging or metrics could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The kubeconfig could not be read.
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    /// No usable cluster configuration.
    #[error(
        "cannot configure the Kubernetes client: {0}; pass --kubeconfig or set KUBECONFIG when running outside a cluster"
    )]
    Config(String),
    /// The client could not be built.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Logging, metrics and the `/metrics` server; returns the readiness switch and the server.
///
/// # Errors
///
/// Telemetry cannot be set up or the metrics address cannot be bound.
pub async fn start(common: &CommonArgs, component: Component) -> Result<(Readiness, MetricsServer), StartError> {
    telemetry::init_tracing(common.log_level.as_deref(), common.log_format)?;
    let handle = telemetry::install_recorder(component)?;
    let readiness = Readiness::new();
    let server = MetricsServer::start(common.metrics_addr, handle, readiness.clone()).await?;
    Ok((readiness, server))
}

/// A Kubernetes client from `--kubeconfig`, else the usual inference (KUBECONFIG, in-cluster).
///
/// # Errors
///
/// No usable configuration.
pub async fn kube_client(common: &CommonArgs) -> Result<Client, StartError> {
    let mut config = match &common.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|source| StartError::Kubeconfig { path: path.display().to_string(), source })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| StartError::Kubeconfig { path: path.display().to_string(), source })?
        }
        None => Config::infer().await.map_err(|e| StartError::Config(e.to_string()))?,
    };
    // No client-level retry of 429/503/504: kube-rs would retry up to 15 times with delays
    // growing towards minutes, so after a spell of 503 answers a watch could sleep in that loop
    // for many seconds while the controller acts on its stale cache (the chaos soak, issue 9,
    // saw 10 s after a 10 s cut). Callers retry on their own terms: watches with
    // `watch::WatchBackoff`, writes through their work queues, the Lease on its renew interval.
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

/// This process's instance name for Events: `POD_NAME`, else the host name.
#[must_use]
pub fn instance_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "purelb".to_owned())
}
