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
    let (mut config, user) = match &common.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|source| StartError::Kubeconfig { path: path.display().to_string(), source })?;
            let user = kubeconfig_user(&kubeconfig);
            let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| StartError::Kubeconfig { path: path.display().to_string(), source })?;
            (config, user)
        }
        None => {
            let config = Config::infer().await.map_err(|e| StartError::Config(e.to_string()))?;
            (config, Kubeconfig::read().ok().as_ref().and_then(kubeconfig_user))
        }
    };
    crate::watch::set_api_target(&config.cluster_url.to_string(), &identity(&config, user.as_deref()));
    // No client-level retry of 429/503/504: kube-rs would retry up to 15 times with delays
    // growing towards minutes, so after a spell of 503 answers a watch could sleep in that loop
    // for many seconds while the controller acts on its stale cache (the chaos soak, issue 9,
    // saw 10 s after a 10 s cut). Callers retry on their own terms: watches with
    // `watch::WatchBackoff`, writes through their work queues, the Lease on its renew interval.
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// The user of the kubeconfig's current context.
fn kubeconfig_user(kubeconfig: &Kubeconfig) -> Option<String> {
    let current = kubeconfig.current_context.as_deref()?;
    let context = kubeconfig.contexts.iter().find(|c| c.name == current)?;
    context.context.as_ref()?.user.clone()
}

/// The `sub` claim of a JWT (a service account token), read without verifying it: only to
/// name the identity in error lines.
fn jwt_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// Who this process is to the API server, as well as it can be told without asking: the
/// service account of a token, a user name, the kubeconfig user.
fn identity(config: &Config, kubeconfig_user: Option<&str>) -> String {
    use secrecy::ExposeSecret as _;
    let auth = &config.auth_info;
    let token = auth
        .token
        .as_ref()
        .map(|t| t.expose_secret().to_owned())
        .or_else(|| auth.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()));
    if let Some(subject) = token.as_deref().and_then(jwt_subject) {
        return subject;
    }
    if let Some(user) = &auth.username {
        return format!("user {user}");
    }
    match (kubeconfig_user, token.is_some()) {
        (Some(user), true) => format!("kubeconfig user {user}, with a bearer token"),
        (Some(user), false) => format!("kubeconfig user {user}"),
        (None, true) => "a bearer token".to_owned(),
        (None, false) if auth.client_certificate.is_some() || auth.client_certificate_data.is_some() => {
            "a client certificate".to_owned()
        }
        (None, false) => "no credentials".to_owned(),
    }
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
