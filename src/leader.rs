//! Lease-based leader election for the allocator: only the replica holding the
//! `coordination.k8s.io/v1` Lease `purelb-allocator` in the install namespace writes; the others
//! keep their caches warm and take over when the leader dies or steps down.
//!
//! Entry points:
//! - [`LeaderElector::new`] then [`LeaderElector::run`] (a task that ends on the shutdown
//!   signal, after releasing the Lease);
//! - [`LeaderElector::leadership`] gives a [`Leadership`] handle (cheap to clone) that writers
//!   consult: [`Leadership::guard`] right before each write, [`Leadership::is_leader`],
//!   [`Leadership::changed`] / [`Leadership::subscribe`] to react to transitions;
//! - [`Leadership::always`] for `--leader-elect=false`.
//!
//! # The protocol
//!
//! Every attempt reads the Lease and then writes it only with the resourceVersion it read (a
//! conditional update; `409 Conflict` means someone else wrote in between, and we read again):
//!
//! - no Lease: create it with us as holder (`409 AlreadyExists`: someone else was faster);
//! - we hold it: renew (`renewTime` = now; `acquireTime` and `leaseTransitions` kept);
//! - no holder (released): take it at once;
//! - someone else holds it: take it only once it has not changed for its `leaseDurationSeconds`
//!   plus [`LeaderConfig::expiry_slack`], measured on our own monotonic clock from the moment we
//!   first saw the current (holderIdentity, renewTime, resourceVersion). The holder's
//!   `renewTime` is never compared with our clock, so clock skew between nodes does not matter
//!   (client-go does the same).
//!
//! Written fields: `holderIdentity`, `leaseDurationSeconds` (our lease duration rounded up to
//! whole seconds), `acquireTime`, `renewTime` (MicroTime), `leaseTransitions` (+1 whenever the
//! holder changes), labels `app.kubernetes.io/name=purelb`,
//! `app.kubernetes.io/component=allocator`; field manager `purelb-allocator`.
//!
//! Standbys watch the Lease (a watcher on the single object, field selector
//! `metadata.name=<lease>`) and also re-read it every [`LeaderConfig::renew_interval`], so they
//! notice a release at once and a crash within one lease duration.
//!
//! # No two writers
//!
//! A leader's right to write is a local deadline, not a flag: after a successful write of the
//! Lease that was *sent* at local instant `s`, the replica is leader until
//! `valid_until = s + lease_duration − safety_margin`, and [`Leadership::is_leader`] compares
//! `Instant::now()` with it on every call. A standby cannot see that write before `s`, so by its
//! own clock it cannot take over before `s + lease_duration (+ slack)`: a leader that cannot
//! renew (API server down, hung, or this replica cut off) stops writing at least
//! `safety_margin` before anyone else may start. That margin is the time a write started just
//! before `valid_until` has to finish: [`WriteGuard::deadline`] is `s + lease_duration`, and
//! [`WriteGuard::bounded`] cancels the write at that instant. The renew loop flips the published
//! state (watch channel, metric) to `false` at `valid_until` even while an API call hangs.
//!
//! The safety margin defaults to `min(lease_duration / 3, (lease_duration − renew_interval) / 2)`
//! (5 s with the 15 s / 5 s defaults, like client-go's 10 s renew deadline in a 15 s lease). A
//! leader that renews every `renew_interval` thus has `lease_duration − safety_margin −
//! renew_interval` (5 s by default) to retry a failed renewal before it stops writing; API calls
//! time out after `renew_interval / 2`, so even a hung first try leaves time for retries.
//!
//! What a lease cannot prevent: a request that the client gave up on may still reach the API
//! server later. We never count such a request as a renewal (only answered writes extend
//! leadership), and writers should prefer conditional updates (resourceVersion) so a late write
//! from a deposed leader fails instead of overwriting.
//!
//! # Graceful release
//!
//! When the shutdown signal fires, the elector first stops considering itself leader (guards
//! are refused from then on), waits for writes still holding a [`WriteGuard`] (at most until
//! their deadline), then reads the Lease and, if we still hold it, writes it released the way
//! client-go does: no `holderIdentity`, `leaseDurationSeconds` 1, `renewTime` = now. Standbys
//! take a holder-less Lease immediately. Stop the controllers' writers before (or together
//! with) the elector; the guard makes an in-flight write finish before the release.
//!
//! If the [`LeaderElector::run`] future is dropped (task aborted), the handle stops claiming
//! leadership at once, without releasing (the standby then waits out the lease duration).
//!
//! # Failures
//!
//! Every API call is bounded by [`LeaderConfig::request_timeout`]; failures are logged and the
//! attempt retried after [`LeaderConfig::retry_interval`]; leadership only lapses by its
//! deadline. The metric `purelb_allocator_is_leader` is 1 while the published state is leader.
//!
//! Instants in this API are [`tokio::time::Instant`]s (the runtime's monotonic clock).
//!
//! The identity must be unique among the replicas (e.g. the pod name). A process that restarts
//! with the identity of the current holder resumes the Lease at once, which is right only when
//! the previous process with that identity is gone (a restarted container of the same pod).

mod record;

use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{Api, Client, api::PostParams, runtime::watcher};
use record::{Decision, LeaseRecord, Observation, Validity, claim_lease, decide, new_lease, observe, release_lease};
use tokio::{
    sync::{OwnedRwLockReadGuard, RwLock, watch},
    time::{Instant, sleep_until, timeout, timeout_at},
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{api::contract::MANAGER_ALLOCATOR, telemetry::catalog::ALLOCATOR_IS_LEADER};

/// Label `app.kubernetes.io/component` on the allocator's leader Lease.
pub const LABEL_COMPONENT_ALLOCATOR: (&str, &str) = ("app.kubernetes.io/component", "allocator");

/// The longest lease duration accepted.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Why leadership ended: graceful shutdown.
const SHUTTING_DOWN: &str = "shutting down";
/// Why leadership ended: the election task was dropped.
const STOPPED: &str = "election stopped";

/// Consecutive failed attempts are logged as a warning on the first and every this many.
const WARN_EVERY: u32 = 30;

/// Timing of the election. [`LeaderConfig::new`] derives everything from the lease duration and
/// the renew interval (the `--lease-duration` and `--renew-interval` flags); the other fields can
/// be adjusted afterwards. [`LeaderElector::new`] checks them with [`LeaderConfig::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// How long the Lease stays valid without renewal: a standby takes over this long (plus
    /// [`Self::expiry_slack`]) after it last saw the Lease change. Written as
    /// `leaseDurationSeconds`, rounded up to whole seconds. Default 15 s.
    pub lease_duration: Duration,
    /// How often the leader renews the Lease, and how often a standby re-reads it besides
    /// watching it. Default 5 s.
    pub renew_interval: Duration,
    /// How soon a failed attempt is retried. Default `renew_interval / 5`.
    pub retry_interval: Duration,
    /// Timeout of every API call. Default `renew_interval / 2`.
    pub request_timeout: Duration,
    /// How long before the Lease can expire (counted from when the last successful renewal was
    /// sent) the leader stops starting writes. Default `min(lease_duration / 3, (lease_duration −
    /// renew_interval) / 2)`.
    pub safety_margin: Duration,
    /// Added by a standby to the holder's lease duration before it takes over (against clock
    /// rate differences and in-flight writes of the old leader). Default `min(lease_duration /
    /// 10, 1 s)`.
    pub expiry_slack: Duration,
    /// The longest a writer's request may take (its client timeout): after taking the Lease over
    /// from a holder that stopped renewing, [`Leadership::fenced_until`] is this much later, so
    /// that a write the old leader sent before its deadline and the API server applies late
    /// lands before the new leader decides anything from its caches. Default `request_timeout`.
    pub write_timeout: Duration,
}

impl LeaderConfig {
    /// A configuration with `lease_duration` and `renew_interval` and the other fields derived
    /// from them (see the field docs).
    #[must_use]
    pub fn new(lease_duration: Duration, renew_interval: Duration) -> Self {
        Self {
            lease_duration,
            renew_interval,
            retry_interval: renew_interval / 5,
            request_timeout: renew_interval / 2,
            safety_margin: (lease_duration / 3).min(lease_duration.saturating_sub(renew_interval) / 2),
            expiry_slack: (lease_duration / 10).min(Duration::from_secs(1)),
            write_timeout: renew_interval / 2,
        }
    }

    /// Checks that the timing can work: the lease lasts 1 s to 24 h, every interval is
    /// positive, and the leader renews before its own validity ends (`renew_interval +
    /// safety_margin < lease_duration`).
    ///
    /// # Errors
    ///
    /// [`LeaderError::InvalidConfig`] saying which value is wrong.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason: String| Err(LeaderError::InvalidConfig { reason });
        if self.lease_duration < Duration::from_secs(1) || self.lease_duration > MAX_LEASE_DURATION {
            return invalid(format!("lease duration {:?} must be between 1s and 24h", self.lease_duration));
        }
        for (name, value) in [
            ("renew interval", self.renew_interval),
            ("retry interval", self.retry_interval),
            ("request timeout", self.request_timeout),
            ("safety margin", self.safety_margin),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be positive"));
            }
        }
        if self.renew_interval + self.safety_margin >= self.lease_duration {
            return invalid(format!(
                "renew interval {:?} plus safety margin {:?} must be shorter than the lease duration {:?}; \
                 use a renew interval of at most a third of the lease duration",
                self.renew_interval, self.safety_margin, self.lease_duration
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written: the lease duration rounded up to whole seconds.
    #[must_use]
    pub fn lease_duration_seconds(&self) -> i32 {
        let secs = self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

impl Default for LeaderConfig {
    /// 15 s lease, 5 s renewals (the allocator's flag defaults).
    fn default() -> Self {
        Self::new(Duration::from_secs(15), Duration::from_secs(5))
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The timing cannot work.
    #[error("invalid leader election settings: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The identity is empty (it would read as a released Lease).
    #[error("leader election identity must not be empty")]
    EmptyIdentity,
    /// An API call on the Lease failed.
    #[error("cannot {action} Lease {namespace}/{lease}: {source}")]
    Api {
        /// `read`, `create`, `update` or `release`.
        action: &'static str,
        /// The Lease namespace.
        namespace: String,
        /// The Lease name.
        lease: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An API call on the Lease did not answer in time.
    #[error("cannot {action} Lease {namespace}/{lease}: no answer within {after:?}")]
    Timeout {
        /// `read`, `create`, `update` or `release`.
        action: &'static str,
        /// The Lease namespace.
        namespace: String,
        /// The Lease name.
        lease: String,
        /// The timeout.
        after: Duration,
    },
    /// A guarded write did not finish before the leader Lease could expire; it was cancelled.
    #[error("write cancelled: it did not finish before the leader Lease could expire")]
    WriteDeadline,
}

impl LeaderError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Api { source, .. } if matches!(&**source, kube::Error::Api(status) if status.code == 409))
    }
}

/// State shared by the elector and its handles.
#[derive(Debug)]
struct Shared {
    /// Election disabled: always leader.
    always: bool,
    state: Mutex<State>,
    /// The published leader state (lags [`Shared::is_leader`] by at most a few milliseconds).
    published: watch::Sender<bool>,
    /// Guarded writes hold read permits; the release takes the write lock to wait for them.
    writes: Arc<RwLock<()>>,
}

#[derive(Debug, Default)]
struct State {
    /// Set while leading.
    validity: Option<Validity>,
    /// The deadline of the last validity, kept after it ends (guards may live until then).
    last_deadline: Option<Instant>,
    /// After a takeover from a holder that stopped renewing: until when its late writes may
    /// still land.
    fenced_until: Option<Instant>,
}

impl Shared {
    fn new(always: bool) -> Arc<Self> {
        if always {
            metrics::gauge!(ALLOCATOR_IS_LEADER).set(1.0);
        }
        Arc::new(Self {
            always,
            state: Mutex::new(State::default()),
            published: watch::Sender::new(always),
            writes: Arc::new(RwLock::new(())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn validity(&self) -> Option<Validity> {
        self.lock().validity
    }

    fn is_leader(&self) -> bool {
        self.always || self.validity().is_some_and(|v| Instant::now() < v.valid_until)
    }

    fn promote(&self, validity: Validity) {
        {
            let mut state = self.lock();
            state.validity = Some(validity);
            state.last_deadline = Some(validity.deadline);
        }
        if Instant::now() < validity.valid_until {
            self.publish(true, "lease held");
        }
    }

    fn demote(&self, why: &'static str) {
        self.lock().validity = None;
        self.publish(false, why);
    }

    /// Ends leadership if its validity has run out.
    fn demote_if_expired(&self) {
        let expired = {
            let mut state = self.lock();
            let expired = state.validity.is_some_and(|v| Instant::now() >= v.valid_until);
            if expired {
                state.validity = None;
            }
            expired
        };
        if expired {
            self.publish(false, "lease could not be renewed in time");
        }
    }

    fn publish(&self, leader: bool, why: &'static str) {
        let changed = self.published.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
        if changed {
            metrics::gauge!(ALLOCATOR_IS_LEADER).set(if leader { 1.0 } else { 0.0 });
            if leader {
                info!(reason = why, "became leader");
            } else if why == SHUTTING_DOWN || why == STOPPED {
                info!(reason = why, "no longer leader");
            } else {
                warn!(reason = why, "no longer leader");
            }
        }
    }
}

/// What writers consult: whether this replica may write now. Clones share the same state (and
/// each has its own position in the change notifications).
///
/// [`Self::is_leader`] and [`Self::guard`] read the local deadline directly and are exact;
/// [`Self::changed`] and [`Self::subscribe`] report transitions as the elector publishes them
/// (a few milliseconds later at most).
#[derive(Clone, Debug)]
pub struct Leadership {
    shared: Arc<Shared>,
    changes: watch::Receiver<bool>,
}

impl Leadership {
    fn from_shared(shared: Arc<Shared>) -> Self {
        let changes = shared.published.subscribe();
        Self { shared, changes }
    }

    /// A handle that is always leader, for `--leader-elect=false` (one replica, no Lease). Sets
    /// `purelb_allocator_is_leader` to 1.
    #[must_use]
    pub fn always() -> Self {
        Self::from_shared(Shared::new(true))
    }

    /// Whether this replica may start a write now: election disabled, or the last successful
    /// renewal was sent less than `lease_duration − safety_margin` ago.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// Until when this replica may start writes (`None`: not leader, or election disabled).
    #[must_use]
    pub fn valid_until(&self) -> Option<Instant> {
        if self.shared.always {
            return None;
        }
        self.shared.validity().map(|v| v.valid_until).filter(|t| Instant::now() < *t)
    }

    /// Permission for one write, to take right before it (`None`: not leader; skip the write).
    /// Keep the guard until the write has finished and bound the write by
    /// [`WriteGuard::deadline`] (or run it through [`WriteGuard::bounded`]); a graceful release
    /// waits for outstanding guards before it lets a standby take over.
    #[must_use]
    pub fn guard(&self) -> Option<WriteGuard> {
        if self.shared.always {
            return Some(WriteGuard { deadline: None, _permit: None });
        }
        // Permit first, then the check: a release clears the validity before it waits for the
        // permits, so either we see no validity or the release waits for us.
        let permit = self.shared.writes.clone().try_read_owned().ok()?;
        let validity = self.shared.validity()?;
        (Instant::now() < validity.valid_until)
            .then_some(WriteGuard { deadline: Some(validity.deadline), _permit: Some(permit) })
    }

    /// Fencing by time: after this replica took the Lease over from a holder that stopped
    /// renewing (crashed, paused, cut off), until when that holder's last writes may still be
    /// applied by the API server: its lease ran out no earlier than the takeover, and each of
    /// its writes was bounded by [`LeaderConfig::write_timeout`]. A leader that bases decisions
    /// on what others wrote (the allocator: which addresses are in use) makes none before then.
    /// `None`: nothing to wait for (the Lease was created, released, or renewed by us).
    #[must_use]
    pub fn fenced_until(&self) -> Option<Instant> {
        self.shared.lock().fenced_until.filter(|t| Instant::now() < *t)
    }

    /// The current published state (see the type docs for how it relates to [`Self::is_leader`]).
    #[must_use]
    pub fn published(&self) -> bool {
        *self.changes.borrow()
    }

    /// Waits until the published state differs from the one this handle last saw, and returns
    /// it. Waits forever when it never changes (election disabled, or the elector has stopped).
    pub async fn changed(&mut self) -> bool {
        if self.changes.changed().await.is_err() {
            // The sender lives in `Shared`, which we hold; this cannot happen.
            std::future::pending::<()>().await;
        }
        *self.changes.borrow_and_update()
    }

    /// Waits until the published state is `leader` (returns at once if it already is).
    pub async fn wait_for(&mut self, leader: bool) {
        if self.changes.wait_for(|current| *current == leader).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A receiver of the published state, for `tokio::select!` loops.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shared.published.subscribe()
    }
}

/// Permission for one write by the leader ([`Leadership::guard`]). While it lives, a graceful
/// release waits (at most until [`Self::deadline`]) before handing the Lease over.
#[derive(Debug)]
pub struct WriteGuard {
    deadline: Option<Instant>,
    _permit: Option<OwnedRwLockReadGuard<()>>,
}

impl WriteGuard {
    /// The instant by which the write must have finished: no standby can take over before it.
    /// `None` when election is disabled.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Runs `write`, cancelling it at [`Self::deadline`].
    ///
    /// # Errors
    ///
    /// [`LeaderError::WriteDeadline`] when the deadline passed first.
    pub async fn bounded<F: Future>(&self, write: F) -> Result<F::Output, LeaderError> {
        match self.deadline {
            None => Ok(write.await),
            Some(deadline) => timeout_at(deadline, write).await.map_err(|_| LeaderError::WriteDeadline),
        }
    }
}

/// The outcome of one read-then-write attempt.
#[derive(Debug)]
enum Outcome {
    /// Our write succeeded; it was sent at this instant.
    Leading { sent: Instant, previous: Option<String>, acquired: bool },
    /// Someone else holds the Lease; try again by `until` at the latest.
    Standby { holder: String, until: Instant },
    /// Someone else wrote between our read and our write.
    Conflict,
    /// The API call failed or timed out.
    Failed(LeaderError),
}

/// Runs the election for one replica (see the module docs).
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    lease_name: String,
    identity: String,
    config: LeaderConfig,
    shared: Arc<Shared>,
}

impl LeaderElector {
    /// An elector for Lease `namespace/lease_name`, competing as `identity` (unique per replica,
    /// e.g. the pod name).
    ///
    /// # Errors
    ///
    /// [`LeaderError::InvalidConfig`] when the timing cannot work, [`LeaderError::EmptyIdentity`].
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        config: LeaderConfig,
    ) -> Result<Self, LeaderError> {
        config.validate()?;
        if identity.is_empty() {
            return Err(LeaderError::EmptyIdentity);
        }
        Ok(Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            lease_name: lease_name.to_owned(),
            identity: identity.to_owned(),
            config,
            shared: Shared::new(false),
        })
    }

    /// A handle for writers (not leader until [`Self::run`] wins the Lease).
    #[must_use]
    pub fn leadership(&self) -> Leadership {
        Leadership::from_shared(self.shared.clone())
    }

    /// Competes for the Lease until `shutdown` completes, then stops leading and releases the
    /// Lease if it holds it. API failures are logged and retried, never returned.
    ///
    /// # Errors
    ///
    /// Only the final release can fail ([`LeaderError::Api`], [`LeaderError::Timeout`]); the
    /// standbys then take over once the lease duration has passed.
    pub async fn run<S>(self, shutdown: S) -> Result<(), LeaderError>
    where
        S: Future<Output = ()>,
    {
        let span = info_span!(
            "leader_election",
            lease = %self.lease_name,
            namespace = %self.namespace,
            identity = %self.identity
        );
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner<S>(self, shutdown: S) -> Result<(), LeaderError>
    where
        S: Future<Output = ()>,
    {
        let _demote_on_drop = DemoteOnDrop(self.shared.clone());
        let mut shutdown = pin!(shutdown);
        let mut events = self.watch_lease();
        let mut watching = true;
        let mut observed: Option<Observation> = None;
        let mut next_attempt = Instant::now();
        let mut failures: u32 = 0;
        loop {
            let expiry = self.shared.validity().map(|v| v.valid_until);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = sleep_until_some(expiry) => self.shared.demote_if_expired(),
                () = sleep_until(next_attempt) => {
                    let Some(outcome) = self.attempt_watching_expiry(&mut observed, &mut shutdown).await else { break };
                    next_attempt = self.apply(outcome, &mut failures);
                }
                event = events.next(), if watching => match event {
                    Some(event) => {
                        if let Some(at) = self.on_event(event, &mut observed) {
                            next_attempt = next_attempt.min(at);
                        }
                    }
                    None => watching = false,
                },
            }
        }
        drop(events);
        self.release().await
    }

    /// One attempt; meanwhile the published state still flips at the validity deadline. `None`
    /// when `shutdown` completed first.
    async fn attempt_watching_expiry<S>(
        &self,
        observed: &mut Option<Observation>,
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> Option<Outcome>
    where
        S: Future<Output = ()>,
    {
        let mut attempt = pin!(self.attempt(observed));
        loop {
            let expiry = self.shared.validity().map(|v| v.valid_until);
            tokio::select! {
                biased;
                () = shutdown.as_mut() => return None,
                () = sleep_until_some(expiry) => self.shared.demote_if_expired(),
                outcome = &mut attempt => return Some(outcome),
            }
        }
    }

    fn watch_lease(&self) -> BoxStream<'static, Result<watcher::Event<Lease>, watcher::Error>> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.lease_name));
        crate::watch::with_backoff(watcher(self.api.clone(), config).boxed())
    }

    /// Bounds `call` by the request timeout and names what failed.
    async fn call<T>(
        &self,
        action: &'static str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaderError> {
        match timeout(self.config.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(LeaderError::Api {
                action,
                namespace: self.namespace.clone(),
                lease: self.lease_name.clone(),
                source: Box::new(source),
            }),
            Err(_) => Err(LeaderError::Timeout {
                action,
                namespace: self.namespace.clone(),
                lease: self.lease_name.clone(),
                after: self.config.request_timeout,
            }),
        }
    }

    fn post_params() -> PostParams {
        PostParams { dry_run: false, field_manager: Some(MANAGER_ALLOCATOR.to_owned()) }
    }

    /// Reads the Lease and, when the decision says so, writes it.
    async fn attempt(&self, observed: &mut Option<Observation>) -> Outcome {
        let lease = match self.call("read", self.api.get_opt(&self.lease_name)).await {
            Ok(lease) => lease,
            Err(error) => return Outcome::Failed(error),
        };
        let now = Instant::now();
        let record = lease.as_ref().map(LeaseRecord::from_lease);
        *observed = observe(observed.take(), record.as_ref(), now, self.config.lease_duration);
        let decision = decide(record.as_ref(), observed.as_ref(), &self.identity, now, &self.config);
        let seconds = self.config.lease_duration_seconds();
        let (request, previous, acquired) = match (decision, lease) {
            (Decision::Standby { holder, until }, _) => return Outcome::Standby { holder, until },
            (Decision::Create, _) | (_, None) => {
                let lease = new_lease(&self.namespace, &self.lease_name, &self.identity, seconds, Timestamp::now());
                let sent = Instant::now();
                let result = self.call("create", self.api.create(&Self::post_params(), &lease)).await;
                return self.written(result, sent, None, true, observed);
            }
            (Decision::Renew, Some(lease)) => (lease, None, false),
            (Decision::Acquire { previous }, Some(lease)) => (lease, previous, true),
        };
        let lease = claim_lease(request, &self.identity, seconds, Timestamp::now());
        let sent = Instant::now();
        let result = self.call("update", self.api.replace(&self.lease_name, &Self::post_params(), &lease)).await;
        self.written(result, sent, previous, acquired, observed)
    }

    fn written(
        &self,
        result: Result<Lease, LeaderError>,
        sent: Instant,
        previous: Option<String>,
        acquired: bool,
        observed: &mut Option<Observation>,
    ) -> Outcome {
        match result {
            Ok(lease) => {
                let record = LeaseRecord::from_lease(&lease);
                *observed = observe(observed.take(), Some(&record), Instant::now(), self.config.lease_duration);
                Outcome::Leading { sent, previous, acquired }
            }
            Err(error) if error.is_conflict() => Outcome::Conflict,
            Err(error) => Outcome::Failed(error),
        }
    }

    /// Acts on an attempt's outcome; returns when to attempt next. `failures` counts consecutive
    /// failed attempts (logged as a warning on the first and every [`WARN_EVERY`]th).
    fn apply(&self, outcome: Outcome, failures: &mut u32) -> Instant {
        let now = Instant::now();
        if !matches!(outcome, Outcome::Failed(_)) && *failures > 0 {
            info!(failures = *failures, "lease reachable again");
            *failures = 0;
        }
        match outcome {
            Outcome::Leading { sent, previous, acquired } => {
                if acquired {
                    let fenced_until = previous.as_ref().map(|_| now + self.config.write_timeout);
                    self.shared.lock().fenced_until = fenced_until;
                    match previous {
                        Some(previous) => info!(
                            %previous,
                            fence = ?self.config.write_timeout,
                            "took over the lease from a holder that stopped renewing; its last writes may land within the fence"
                        ),
                        None => info!("acquired the lease"),
                    }
                } else {
                    debug!("renewed the lease");
                }
                self.shared.promote(Validity::after_write(sent, &self.config));
                sent + self.config.renew_interval
            }
            Outcome::Standby { holder, until } => {
                debug!(%holder, "lease held by another replica");
                self.shared.demote("lease held by another replica");
                until.min(now + self.config.renew_interval)
            }
            Outcome::Conflict => {
                debug!("lease changed between read and write; reading again");
                now
            }
            Outcome::Failed(error) => {
                *failures = failures.saturating_add(1);
                let leader = self.shared.is_leader();
                if *failures % WARN_EVERY == 1 {
                    let line = match &error {
                        LeaderError::Api { source, .. } => {
                            crate::watch::explain_client_error("taking part in the leader election", source)
                        }
                        _ => None,
                    };
                    match line {
                        Some(line) => warn!(leader, failures = *failures, "{line}"),
                        None => warn!(%error, leader, failures = *failures, "leader election attempt failed; retrying"),
                    }
                } else {
                    debug!(%error, leader, failures = *failures, "leader election attempt failed; retrying");
                }
                now + self.config.retry_interval
            }
        }
    }

    /// Folds a watch event into the observation; returns when to attempt next if sooner than
    /// planned (at once when the Lease was released, deleted, or its holder counts as gone).
    fn on_event(
        &self,
        event: Result<watcher::Event<Lease>, watcher::Error>,
        observed: &mut Option<Observation>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let leading = self.shared.validity().is_some();
        match event {
            Err(error) => {
                debug!(%error, "lease watch failed; retrying");
                None
            }
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                let record = LeaseRecord::from_lease(&lease);
                *observed = observe(observed.take(), Some(&record), now, self.config.lease_duration);
                if leading {
                    return None;
                }
                match decide(Some(&record), observed.as_ref(), &self.identity, now, &self.config) {
                    Decision::Standby { until, .. } => Some(until),
                    Decision::Create | Decision::Renew | Decision::Acquire { .. } => Some(now),
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                *observed = None;
                (!leading).then_some(now)
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        }
    }

    /// Graceful release: stop leading, wait for guarded writes, then clear the holder if it is
    /// still us.
    async fn release(&self) -> Result<(), LeaderError> {
        self.shared.demote(SHUTTING_DOWN);
        let last_deadline = self.shared.lock().last_deadline;
        if let Some(deadline) = last_deadline.filter(|d| Instant::now() < *d)
            && timeout_at(deadline, self.shared.writes.clone().write_owned()).await.is_err()
        {
            warn!("writes still running at the lease deadline; releasing anyway");
        }
        let Some(lease) = self.call("read", self.api.get_opt(&self.lease_name)).await? else { return Ok(()) };
        if LeaseRecord::from_lease(&lease).holder.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let released = release_lease(lease, Timestamp::now());
        match self.call("release", self.api.replace(&self.lease_name, &Self::post_params(), &released)).await {
            Ok(_) => {
                info!("released the lease");
                Ok(())
            }
            // Someone wrote in between: the Lease is no longer ours to release.
            Err(error) if error.is_conflict() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Ends leadership when the run future is dropped (task aborted).
struct DemoteOnDrop(Arc<Shared>);

impl Drop for DemoteOnDrop {
    fn drop(&mut self) {
        self.0.demote(STOPPED);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elected(valid_for: Duration, deadline_in: Duration) -> Leadership {
        let shared = Shared::new(false);
        let now = Instant::now();
        shared.promote(Validity { valid_until: now + valid_for, deadline: now + deadline_in });
        Leadership::from_shared(shared)
    }

    #[test]
    fn default_config_matches_the_flags_and_is_valid() {
        let c = LeaderConfig::default();
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_interval, Duration::from_secs(5));
        assert_eq!(c.safety_margin, Duration::from_secs(5));
        assert_eq!(c.retry_interval, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.expiry_slack, Duration::from_secs(1));
        assert_eq!(c.lease_duration_seconds(), 15);
        c.validate().unwrap();
    }

    #[test]
    fn config_validation() {
        let ok = LeaderConfig::new(Duration::from_secs(2), Duration::from_millis(500));
        ok.validate().unwrap();
        assert_eq!(LeaderConfig::new(Duration::from_millis(2500), Duration::from_secs(1)).lease_duration_seconds(), 3);
        // A long renew interval shrinks the margin rather than being refused.
        let long = LeaderConfig::new(Duration::from_secs(15), Duration::from_secs(10));
        assert_eq!(long.safety_margin, Duration::from_millis(2500));
        long.validate().unwrap();
        for bad in [
            LeaderConfig::new(Duration::from_millis(900), Duration::from_millis(100)),
            LeaderConfig::new(Duration::from_secs(15), Duration::from_secs(15)),
            LeaderConfig::new(Duration::from_secs(15), Duration::from_secs(20)),
            LeaderConfig::new(Duration::from_secs(15), Duration::ZERO),
            LeaderConfig::new(Duration::from_secs(2 * 24 * 3600), Duration::from_secs(5)),
            LeaderConfig { safety_margin: Duration::from_secs(11), ..LeaderConfig::default() },
            LeaderConfig { request_timeout: Duration::ZERO, ..LeaderConfig::default() },
        ] {
            let error = bad.validate().unwrap_err();
            assert!(matches!(error, LeaderError::InvalidConfig { .. }), "{bad:?}: {error}");
        }
    }

    #[tokio::test]
    async fn always_leader() {
        let mut l = Leadership::always();
        assert!(l.is_leader() && l.published());
        assert_eq!(l.valid_until(), None);
        let guard = l.guard().unwrap();
        assert_eq!(guard.deadline(), None);
        assert_eq!(guard.bounded(async { 7 }).await.unwrap(), 7);
        l.wait_for(true).await;
        assert!(tokio::time::timeout(Duration::from_millis(20), l.changed()).await.is_err(), "never changes");
    }

    #[tokio::test]
    async fn leadership_ends_at_its_deadline_without_the_elector() {
        let l = elected(Duration::from_millis(50), Duration::from_millis(100));
        assert!(l.is_leader());
        assert!(l.published());
        let guard = l.guard().unwrap();
        assert!(guard.deadline().unwrap() > l.valid_until().unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!l.is_leader(), "is_leader reads the clock, not the published flag");
        assert!(l.guard().is_none());
        assert_eq!(l.valid_until(), None);
        // A write outliving the deadline is cancelled.
        let slow = guard.bounded(tokio::time::sleep(Duration::from_secs(5))).await;
        assert!(matches!(slow, Err(LeaderError::WriteDeadline)));
    }

    #[tokio::test]
    async fn changes_are_published() {
        let shared = Shared::new(false);
        let mut l = Leadership::from_shared(shared.clone());
        let mut rx = l.subscribe();
        assert!(!l.published() && !l.is_leader());
        let now = Instant::now();
        shared.promote(Validity { valid_until: now + Duration::from_secs(5), deadline: now + Duration::from_secs(6) });
        assert!(l.changed().await);
        assert!(*rx.borrow_and_update());
        shared.demote_if_expired();
        assert!(l.published(), "not expired yet");
        shared.demote("test");
        assert!(!l.changed().await);
        assert!(!l.is_leader());
        l.wait_for(false).await;
    }

    #[tokio::test]
    async fn release_waits_for_guards_and_refuses_new_ones() {
        let l = elected(Duration::from_secs(5), Duration::from_secs(6));
        let guard = l.guard().unwrap();
        l.shared.demote(SHUTTING_DOWN);
        assert!(l.guard().is_none(), "no new writes once leadership is given up");
        let writes = l.shared.writes.clone();
        let waiter = tokio::spawn(async move { writes.write_owned().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the release waits for the in-flight write");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }

    #[test]
    fn dropping_the_run_future_demotes() {
        let l = elected(Duration::from_secs(5), Duration::from_secs(6));
        drop(DemoteOnDrop(l.shared.clone()));
        assert!(!l.is_leader() && !l.published());
    }
}
