//! The announcement burst after a takeover, and the stop signal that ends it when the node loses
//! the address.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::{
    sync::watch,
    task::{JoinError, JoinHandle},
    time::Instant,
};

use super::socket::{AnnounceError, LinkInfo, Transmitter};
use crate::{
    api::GarpSpec,
    core::ipam::Family,
    duration::{DurationError, parse_duration},
    telemetry::catalog,
};

/// The shape of a burst (`LBNodeAgent` `local.garp`): `count` announcements `interval` apart,
/// the first after `initial_delay`; then, if `refresh_interval` is set, one more every
/// `refresh_interval` until stopped (so that switches whose forwarding entries age out keep
/// pointing at this node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BurstConfig {
    /// Announcements in the burst (the CRD allows 1 to 10; 0 sends no burst).
    pub count: u32,
    /// Time between the starts of two announcements of the burst.
    pub interval: Duration,
    /// Wait before the first announcement.
    pub initial_delay: Duration,
    /// Re-announce this often after the burst; `None` (or zero) for never.
    pub refresh_interval: Option<Duration>,
}

impl Default for BurstConfig {
    /// 3 announcements 500 ms apart, at once, no refresh (the CRD defaults).
    fn default() -> Self {
        Self { count: 3, interval: Duration::from_millis(500), initial_delay: Duration::ZERO, refresh_interval: None }
    }
}

/// A `garp` section that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BurstConfigError {
    /// A duration field does not parse.
    #[error("garp.{field}: {source}")]
    Duration {
        /// `interval`, `initialDelay` or `refreshInterval`.
        field: &'static str,
        /// The parse error (names the value).
        source: DurationError,
    },
    /// `count` is outside 1..=10.
    #[error("garp.count: {count} is out of range: write a number from 1 to 10")]
    Count {
        /// The value found.
        count: u32,
    },
}

impl BurstConfig {
    /// The burst configured by an `LBNodeAgent`'s `garp` section, or `None` when it is disabled.
    ///
    /// # Errors
    ///
    /// [`BurstConfigError`] naming the field, when a duration does not parse or `count` is outside
    /// 1..=10 (the schema rejects both; this guards objects stored before the schema).
    pub fn from_spec(spec: &GarpSpec) -> Result<Option<Self>, BurstConfigError> {
        if !spec.enabled {
            return Ok(None);
        }
        if !(1..=10).contains(&spec.count) {
            return Err(BurstConfigError::Count { count: spec.count });
        }
        let duration = |field: &'static str, text: &str| {
            parse_duration(text).map_err(|source| BurstConfigError::Duration { field, source })
        };
        let refresh = duration("refreshInterval", &spec.refresh_interval)?;
        Ok(Some(Self {
            count: spec.count,
            interval: duration("interval", &spec.interval)?,
            initial_delay: duration("initialDelay", &spec.initial_delay)?,
            refresh_interval: (!refresh.is_zero()).then_some(refresh),
        }))
    }

    fn refresh(&self) -> Option<Duration> {
        self.refresh_interval.filter(|r| !r.is_zero())
    }
}

/// The sending side of a stop signal: [`StopHandle::stop`] when the node has lost the address.
/// Dropping the handle also stops every burst listening to it, so a forgotten burst cannot keep
/// announcing an address forever.
#[derive(Debug)]
pub struct StopHandle {
    tx: watch::Sender<bool>,
}

impl StopHandle {
    /// Signals every listening burst to stop at once (idempotent).
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`StopHandle::stop`] was called.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    /// Another signal listening to this handle.
    #[must_use]
    pub fn signal(&self) -> StopSignal {
        StopSignal { rx: self.tx.subscribe() }
    }
}

/// The listening side of a stop signal; cheap to clone, one per burst.
#[derive(Clone, Debug)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
}

impl StopSignal {
    /// Whether the burst must stop: stop was called or the handle was dropped.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes when the burst must stop (at once if it already must).
    pub async fn stopped(&mut self) {
        // Ok: the value became true; Err: the handle was dropped. Both mean stop.
        let _ = self.rx.wait_for(|stopped| *stopped).await;
    }
}

/// A new stop handle and one signal listening to it.
#[must_use]
pub fn stop_channel() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(false);
    (StopHandle { tx }, StopSignal { rx })
}

/// What a burst did.
#[derive(Debug, Default)]
pub struct BurstReport {
    /// Announcements sent (an IPv4 announcement is an ARP request and reply).
    pub sent: u32,
    /// Announcements that failed.
    pub errors: u32,
    /// Whether it ended because it was told to stop (rather than after its last announcement).
    pub stopped: bool,
    /// The last failure, if any.
    pub last_error: Option<AnnounceError>,
}

/// Runs a burst for `address` on `link`: waits `initial_delay`, sends `count` announcements
/// through `transmitter` (each `interval` after the start of the previous one), then one every
/// `refresh_interval` if set. Returns when done or, at once, when `stop` fires, even in the
/// middle of a wait or a send (a send waiting for a tentative link-local address is abandoned).
/// A failed announcement is counted, logged and does not end the burst. Counts
/// `purelb_garp_sent_total{family="IPv4"|"IPv6"}` (one per announcement, as the Go PureLB does:
/// an IPv4 announcement is two frames) and `purelb_garp_errors_total`.
pub async fn run_burst<T: Transmitter>(
    transmitter: &T,
    link: &LinkInfo,
    address: IpAddr,
    config: &BurstConfig,
    mut stop: StopSignal,
) -> BurstReport {
    let mut report = BurstReport::default();
    let family = Family::of(address);
    let mut remaining = config.count;
    let mut next = Instant::now() + config.initial_delay;
    if remaining == 0 {
        match config.refresh() {
            Some(refresh) => next += refresh,
            None => return report,
        }
    }
    loop {
        tokio::select! {
            biased;
            () = stop.stopped() => {
                report.stopped = true;
                return report;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            () = stop.stopped() => {
                report.stopped = true;
                return report;
            }
            result = transmitter.announce(link, address) => result,
        };
        match result {
            Ok(()) => {
                report.sent += 1;
                metrics::counter!(catalog::GARP_SENT, "family" => family.name()).increment(1);
                tracing::debug!(interface = %link.name, %address, "announced");
            }
            Err(error) => {
                report.errors += 1;
                metrics::counter!(catalog::GARP_ERRORS).increment(1);
                tracing::warn!(interface = %link.name, %address, %error, "announcement failed");
                report.last_error = Some(error);
            }
        }
        remaining = remaining.saturating_sub(1);
        let wait = if remaining > 0 {
            config.interval
        } else {
            match config.refresh() {
                Some(refresh) => refresh,
                None => return report,
            }
        };
        next = started + wait;
    }
}

/// A burst running on its own task ([`spawn_burst`]). Dropping the handle stops the burst.
#[derive(Debug)]
pub struct BurstHandle {
    stop: StopHandle,
    task: JoinHandle<BurstReport>,
}

impl BurstHandle {
    /// Stops the burst at once: the node lost the address.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Whether the burst has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the burst to end by itself (never, with a refresh interval, until stopped).
    ///
    /// # Errors
    ///
    /// The task's [`JoinError`] if the transmitter panicked or the runtime shut down.
    pub async fn wait(self) -> Result<BurstReport, JoinError> {
        let Self { stop, task } = self;
        let report = task.await;
        drop(stop);
        report
    }

    /// Stops the burst and waits for its report.
    ///
    /// # Errors
    ///
    /// As [`BurstHandle::wait`].
    pub async fn stop_and_wait(self) -> Result<BurstReport, JoinError> {
        self.stop();
        self.wait().await
    }
}

/// Runs [`run_burst`] on a new Tokio task and returns its handle.
///
/// # Panics
///
/// Outside a Tokio runtime (as `tokio::spawn` does).
pub fn spawn_burst<T: Transmitter + 'static>(
    transmitter: Arc<T>,
    link: LinkInfo,
    address: IpAddr,
    config: BurstConfig,
) -> BurstHandle {
    let (stop, signal) = stop_channel();
    let task = tokio::spawn(async move { run_burst(transmitter.as_ref(), &link, address, &config, signal).await });
    BurstHandle { stop, task }
}

#[cfg(test)]
mod tests;
