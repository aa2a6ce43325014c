//! The agent's side of BIRD: applies the desired [`BirdConfig`] (write a temporary file,
//! `configure check` it, rename it into place, `configure`; on any error the last good file
//! stays, so a restarted BIRD reads it), reads the sessions every second, exports their state
//! as metrics and publishes it as [`BgpStatus`] for the Lease annotation and the Events.
//! Draining ([`BgpHandle::drain`]) tags the routes GRACEFUL_SHUTDOWN, waits, then withdraws them.
//! Entry point: [`start`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    birdc::{Bird, BirdError, Session},
    render::{BirdConfig, ExportMode, render},
};
use crate::telemetry::{catalog, scoped};

/// Settings of BGP on this node.
#[derive(Clone, Debug)]
pub struct BgpSettings {
    /// `--bird-socket`.
    pub socket: PathBuf,
    /// `--bird-config`.
    pub config: PathBuf,
    /// `--drain-time`.
    pub drain_time: Duration,
    /// How often the sessions are read.
    pub poll: Duration,
    /// Timeout of one exchange with BIRD.
    pub timeout: Duration,
}

/// What the agent knows about BIRD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpStatus {
    /// Sessions of the configured peers, by BGPPeer name.
    pub sessions: BTreeMap<String, Session>,
    /// BIRD answers on its socket.
    pub reachable: bool,
    /// Why the last configuration was not loaded (BIRD's message), until one is.
    pub config_error: Option<String>,
    /// The mode of the last configuration BIRD loaded.
    pub applied: Option<ExportMode>,
    /// Configurations loaded since start.
    pub loads: u64,
}

impl BgpStatus {
    /// The `purelb.io/bgp` Lease annotation: `<peer>=<state>` comma-separated, by name.
    #[must_use]
    pub fn annotation(&self) -> String {
        let parts: Vec<String> = self.sessions.iter().map(|(name, s)| format!("{name}={}", s.state)).collect();
        parts.join(",")
    }
}

/// The agent's handle on the BGP task.
#[derive(Clone, Debug)]
pub struct BgpHandle {
    desired: watch::Sender<Option<BirdConfig>>,
    mode: watch::Sender<ExportMode>,
    status: watch::Receiver<BgpStatus>,
    drain_time: Duration,
    drained_marker: PathBuf,
}

impl BgpHandle {
    /// Sets the configuration BIRD should run (from a pass of the agent, whose caches have
    /// synced: an empty configuration before that would withdraw every route).
    pub fn set(&self, config: BirdConfig) {
        self.desired.send_if_modified(|d| {
            let changed = d.as_ref() != Some(&config);
            *d = Some(config);
            changed
        });
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<BgpStatus> {
        self.status.clone()
    }

    /// Drains this node: routes tagged GRACEFUL_SHUTDOWN for the drain time, then withdrawn.
    /// Returns once BIRD exports nothing (or after `timeout` for each step, with a warning), so
    /// that the caller removes the addresses only after the routes left the routers.
    pub async fn drain(&self, timeout: Duration) {
        if self.desired.borrow().is_none() {
            return;
        }
        let started = Instant::now();
        self.mode.send_replace(ExportMode::GracefulShutdown);
        if self.wait_applied(ExportMode::GracefulShutdown, timeout).await {
            tracing::info!(drain_time = ?self.drain_time, "BGP: routes tagged GRACEFUL_SHUTDOWN");
            tokio::time::sleep(self.drain_time).await;
        }
        self.mode.send_replace(ExportMode::Withdraw);
        if self.wait_applied(ExportMode::Withdraw, timeout).await {
            let mut status = self.status.clone();
            let none_exported = |s: &BgpStatus| s.sessions.values().all(|x| x.exported == 0);
            let _ = tokio::time::timeout(timeout, status.wait_for(none_exported)).await;
        }
        tracing::info!(elapsed = ?started.elapsed(), "BGP: routes withdrawn");
        self.release();
    }

    /// Tells the BIRD container that BIRD may stop (the agent drained, or exits without
    /// draining): the `drained` marker its preStop hook waits for.
    pub fn release(&self) {
        if let Err(e) = std::fs::write(&self.drained_marker, b"") {
            tracing::warn!(path = %self.drained_marker.display(), "BGP: cannot write the drained marker: {e}");
        }
    }

    async fn wait_applied(&self, mode: ExportMode, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        let ok =
            tokio::time::timeout(timeout, status.wait_for(|s| s.applied == Some(mode))).await.is_ok_and(|r| r.is_ok());
        if !ok {
            tracing::warn!(?mode, "BGP: BIRD did not load the drain configuration in {timeout:?}; going on");
        }
        ok
    }
}

/// Starts the BGP task.
#[must_use]
pub fn start(settings: BgpSettings) -> BgpHandle {
    let (desired, desired_rx) = watch::channel(None);
    let (mode, mode_rx) = watch::channel(ExportMode::Advertise);
    let (status_tx, status) = watch::channel(BgpStatus::default());
    let drain_time = settings.drain_time;
    let drained_marker = drained_marker(&settings.config);
    // A marker left by the agent this one replaces: BIRD is advertising again.
    let _ = std::fs::remove_file(&drained_marker);
    tokio::spawn(run(settings, desired_rx, mode_rx, status_tx));
    BgpHandle { desired, mode, status, drain_time, drained_marker }
}

struct Task {
    settings: BgpSettings,
    bird: Option<Bird>,
    /// The text BIRD loaded last (by this process).
    loaded: Option<String>,
    /// The text last refused (not retried until it changes).
    refused: Option<String>,
    last_socket_error: Option<String>,
}

async fn run(
    settings: BgpSettings,
    mut desired: watch::Receiver<Option<BirdConfig>>,
    mut mode: watch::Receiver<ExportMode>,
    status: watch::Sender<BgpStatus>,
) {
    let poll = settings.poll;
    let mut task = Task { settings, bird: None, loaded: None, refused: None, last_socket_error: None };
    loop {
        let config = desired.borrow_and_update().clone();
        let wanted_mode = *mode.borrow_and_update();
        if let Some(mut config) = config {
            config.mode = config.mode.max_drain(wanted_mode);
            let peers: Vec<String> = config.peers.iter().map(|p| p.name.clone()).collect();
            task.apply(&config, &status).await;
            task.poll(&peers, &status).await;
        }
        tokio::select! {
            _ = desired.changed() => {}
            _ = mode.changed() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

impl ExportMode {
    /// The further along of two modes (advertise < graceful shutdown < withdraw).
    #[must_use]
    pub fn max_drain(self, other: Self) -> Self {
        let rank = |m: Self| match m {
            Self::Advertise => 0,
            Self::GracefulShutdown => 1,
            Self::Withdraw => 2,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

impl Task {
    async fn bird(&mut self) -> Result<&mut Bird, BirdError> {
        match &mut self.bird {
            Some(bird) => Ok(bird),
            slot @ None => Ok(slot.insert(Bird::connect(&self.settings.socket, self.settings.timeout).await?)),
        }
    }

    fn socket_error(&mut self, error: &BirdError, status: &watch::Sender<BgpStatus>) {
        self.bird = None;
        let line = error.to_string();
        if self.last_socket_error.as_ref() != Some(&line) {
            tracing::warn!("BGP: {line}; retrying every {:?}", self.settings.poll);
            self.last_socket_error = Some(line);
        }
        status.send_if_modified(|s| std::mem::replace(&mut s.reachable, false));
    }

    async fn apply(&mut self, config: &BirdConfig, status: &watch::Sender<BgpStatus>) {
        let text = render(config);
        if self.loaded.as_ref() == Some(&text) || self.refused.as_ref() == Some(&text) {
            return;
        }
        let path = self.settings.config.clone();
        let tmp = temp_path(&path);
        if let Err(e) = std::fs::write(&tmp, &text) {
            self.error(status, format!("cannot write {}: {e}", tmp.display()), None);
            return;
        }
        let checked = match self.bird().await {
            Ok(bird) => bird.check(&tmp).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => {}
            Err(BirdError::Refused { message, .. }) => {
                let _ = std::fs::remove_file(&tmp);
                self.error(
                    status,
                    format!("BIRD refused the new configuration ({message}); it keeps the last good one"),
                    Some(text),
                );
                return;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.socket_error(&e, status);
                return;
            }
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            self.error(status, format!("cannot move {} to {}: {e}", tmp.display(), path.display()), None);
            return;
        }
        let loaded = match self.bird().await {
            Ok(bird) => bird.configure(&path).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(()) => {
                metrics::counter!(catalog::BGP_CONFIG_RELOADS).increment(1);
                tracing::info!(peers = config.peers.len(), groups = config.exports.len(), mode = ?config.mode, "BGP: BIRD loaded the configuration");
                self.loaded = Some(text);
                self.refused = None;
                self.last_socket_error = None;
                status.send_modify(|s| {
                    s.config_error = None;
                    s.applied = Some(config.mode);
                    s.reachable = true;
                    s.loads += 1;
                });
            }
            Err(BirdError::Refused { message, .. }) => {
                self.error(status, format!("BIRD did not load the configuration ({message})"), Some(text));
            }
            Err(e) => self.socket_error(&e, status),
        }
    }

    fn error(&mut self, status: &watch::Sender<BgpStatus>, message: String, refused: Option<String>) {
        metrics::counter!(catalog::BGP_CONFIG_ERRORS).increment(1);
        tracing::warn!("BGP: {message}");
        if refused.is_some() {
            self.refused = refused;
        }
        status.send_if_modified(|s| {
            let changed = s.config_error.as_ref() != Some(&message);
            s.config_error = Some(message);
            changed
        });
    }

    async fn poll(&mut self, peers: &[String], status: &watch::Sender<BgpStatus>) {
        let sessions = match self.bird().await {
            Ok(bird) => bird.sessions().await,
            Err(e) => Err(e),
        };
        let sessions = match sessions {
            Ok(s) => s,
            Err(e) => {
                self.socket_error(&e, status);
                return;
            }
        };
        let mut by_name: BTreeMap<String, Session> = BTreeMap::new();
        for name in peers {
            let protocol = format!("{}{name}", super::render::PROTOCOL_PREFIX);
            let session = sessions
                .iter()
                .find(|s| s.name == protocol)
                .cloned()
                .map(|s| Session { name: name.clone(), ..s })
                .unwrap_or_else(|| Session {
                    name: name.clone(),
                    state: "Unknown".into(),
                    info: "not in BIRD's configuration yet".into(),
                    exported: 0,
                });
            by_name.insert(name.clone(), session);
        }
        scoped::replace_gauges(
            catalog::BGP_SESSION_UP,
            by_name.iter().map(|(n, s)| (vec![("peer", n.clone())], if s.is_up() { 1.0 } else { 0.0 })),
        );
        scoped::replace_gauges(
            catalog::BGP_ADVERTISED_ROUTES,
            by_name.iter().map(|(n, s)| (vec![("peer", n.clone())], s.exported as f64)),
        );
        status.send_if_modified(|s| {
            let changed = s.sessions != by_name || !s.reachable;
            s.sessions = by_name;
            s.reachable = true;
            changed
        });
    }
}

/// The file the agent writes once a drain has withdrawn every route: `drained` next to BIRD's
/// configuration (the BIRD container's preStop hook waits for it).
#[must_use]
pub fn drained_marker(config: &Path) -> PathBuf {
    config.with_file_name("drained")
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".purelb-new");
    path.with_file_name(name)
}

/// Session transitions worth an Event: (peer, up, detail). A session that never came up is
/// reported once it has been down for `grace` since it was first seen.
#[derive(Debug, Default)]
pub struct Transitions {
    reported: BTreeMap<String, bool>,
    first_seen: BTreeMap<String, Instant>,
}

impl Transitions {
    /// The transitions in `status` since the last call.
    pub fn update(&mut self, status: &BgpStatus, now: Instant, grace: Duration) -> Vec<(String, bool, String)> {
        let mut out = Vec::new();
        self.reported.retain(|name, _| status.sessions.contains_key(name));
        self.first_seen.retain(|name, _| status.sessions.contains_key(name));
        for (name, session) in &status.sessions {
            let up = session.is_up();
            let seen = *self.first_seen.entry(name.clone()).or_insert(now);
            match self.reported.get(name) {
                Some(&was) if was == up => {}
                None if !up && now.duration_since(seen) < grace => {}
                _ => {
                    let detail = if session.info.is_empty() {
                        session.state.clone()
                    } else {
                        format!("{}: {}", session.state, session.info)
                    };
                    out.push((name.clone(), up, detail));
                    self.reported.insert(name.clone(), up);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(states: &[(&str, &str)]) -> BgpStatus {
        BgpStatus {
            sessions: states
                .iter()
                .map(|(n, s)| {
                    (
                        (*n).to_owned(),
                        Session { name: (*n).into(), state: (*s).into(), info: String::new(), exported: 0 },
                    )
                })
                .collect(),
            reachable: true,
            ..BgpStatus::default()
        }
    }

    #[test]
    fn the_annotation_lists_every_peer_by_name() {
        assert_eq!(
            status(&[("tor-b", "Active"), ("tor-a", "Established")]).annotation(),
            "tor-a=Established,tor-b=Active"
        );
        assert_eq!(status(&[]).annotation(), "");
    }

    #[test]
    fn events_only_on_transitions_and_a_session_that_never_came_up_after_the_grace() {
        let mut t = Transitions::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        assert!(
            t.update(&status(&[("a", "Connect"), ("b", "Established")]), t0, grace)
                == vec![("b".into(), true, "Established".into())]
        );
        assert!(
            t.update(&status(&[("a", "Active"), ("b", "Established")]), t0 + Duration::from_secs(4), grace).is_empty()
        );
        let down = t.update(&status(&[("a", "Active"), ("b", "Established")]), t0 + Duration::from_secs(5), grace);
        assert_eq!(down, vec![("a".into(), false, "Active".into())]);
        assert!(
            t.update(&status(&[("a", "Idle"), ("b", "Established")]), t0 + Duration::from_secs(6), grace).is_empty()
        );
        let flip = t.update(&status(&[("a", "Established"), ("b", "Idle")]), t0 + Duration::from_secs(7), grace);
        assert_eq!(flip, vec![("a".into(), true, "Established".into()), ("b".into(), false, "Idle".into())]);
        // A peer that goes away and comes back is new again.
        assert!(t.update(&status(&[("a", "Established")]), t0 + Duration::from_secs(8), grace).is_empty());
        assert!(
            t.update(&status(&[("a", "Established"), ("b", "Connect")]), t0 + Duration::from_secs(9), grace).is_empty()
        );
    }

    #[test]
    fn drain_modes_only_move_forward() {
        use ExportMode::{Advertise, GracefulShutdown, Withdraw};
        assert_eq!(Advertise.max_drain(GracefulShutdown), GracefulShutdown);
        assert_eq!(Withdraw.max_drain(GracefulShutdown), Withdraw);
        assert_eq!(GracefulShutdown.max_drain(Advertise), GracefulShutdown);
        assert_eq!(Advertise.max_drain(Advertise), Advertise);
    }
}
