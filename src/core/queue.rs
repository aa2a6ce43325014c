//! The typed work queue between the watches and the workers of a controller, with the
//! semantics Kubernetes controllers rely on (those of client-go's `workqueue`).
//!
//! This module owns [`WorkQueue`], the item handle [`Claim`] and the retry policy [`Backoff`].
//! Each controller picks its own item type, usually an enum such as `Work::Service(ObjectRef)`,
//! `Work::Config`, `Work::Membership`; the queue needs only `Clone + Eq + Hash` (and `Send +
//! Sync` to be shared between tasks).
//!
//! Entry points:
//! - make: [`WorkQueue::new`] or [`WorkQueue::with_backoff`]; the name is the `queue` label of
//!   the metrics;
//! - feed: [`WorkQueue::add`], [`WorkQueue::add_after`], [`WorkQueue::add_rate_limited`];
//! - work: [`WorkQueue::get`] (waits) or [`WorkQueue::try_get`], then finish the [`Claim`] with
//!   [`Claim::done`], [`Claim::succeeded`] or [`Claim::retry_with_backoff`] (dropping it is
//!   [`Claim::done`], so an early return or a panic never leaves an item stuck);
//! - stop: [`WorkQueue::shutdown`], [`WorkQueue::shutdown_and_wait`].
//!
//! The rules:
//! - an item is pending at most once: adding an item that is already pending does nothing;
//! - an item is never handed to two workers at once: an item added while it is being processed
//!   stays pending and is handed out again after its claim is done;
//! - items are handed out oldest first;
//! - [`WorkQueue::add_after`] makes the item pending once the delay has passed; an item already
//!   waiting keeps the earlier of its two ready times;
//! - [`WorkQueue::add_rate_limited`] waits `base · 2^n` (at most `max`) where `n` is the number
//!   of rate-limited adds of the item since it was last forgotten ([`WorkQueue::forget`],
//!   [`Claim::succeeded`]); [`WorkQueue::num_requeues`] tells `n`;
//! - [`WorkQueue::shutdown`] stops the queue at once: pending and delayed items are dropped,
//!   later adds are ignored, and [`WorkQueue::get`] returns `None` (immediately, even for
//!   workers already waiting). Items being processed are not interrupted: their workers finish
//!   and drop their claims, and [`WorkQueue::shutdown_and_wait`] returns when the last one is
//!   done. Dropping pending work is safe for a level-triggered controller (the next start
//!   rebuilds desired state from the caches) and keeps a replica that lost its leader Lease
//!   from writing any more than what is already in flight.
//!
//! Delays use `tokio::time` (waiting workers sleep until the earliest ready time; there is no
//! background task and no polling), so they follow tokio's paused clock in tests. [`WorkQueue::get`]
//! must run inside a tokio runtime with the time driver enabled.
//!
//! Metrics (names from [`crate::telemetry::catalog`], label `queue` = the queue's name):
//! - `purelb_workqueue_depth`: pending items (ready, or waiting for their running copy to
//!   finish; not the delayed ones);
//! - `purelb_workqueue_adds_total`: adds that made an item pending (merged adds are not counted);
//! - `purelb_workqueue_retries_total`: calls of [`WorkQueue::add_rate_limited`];
//! - `purelb_workqueue_work_duration_seconds`: time from [`WorkQueue::get`] to the claim's done.
//!
//! The metric handles are taken when the queue is made, so make queues after the recorder is
//! installed ([`crate::telemetry::install_recorder`]).
//!
//! Internally one `std::sync::Mutex` (never held across an await) guards the state and two
//! `tokio::sync::Notify` wake the workers and the shutdown waiter.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    hash::Hash,
    ops::Deref,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram};
use tokio::{sync::Notify, time::Instant};

use crate::telemetry::catalog;

/// How long [`WorkQueue::add_rate_limited`] waits: `base · 2^n`, at most `max`, where `n` is
/// the number of earlier rate-limited adds of the item since it was last forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Wait after the first failure: 5 ms, as client-go's default controller rate limiter.
    pub const DEFAULT_BASE: Duration = Duration::from_millis(5);
    /// Longest wait: 2 minutes (client-go waits up to 1000 s), so that a Service whose writes
    /// failed through an API outage is retried within two minutes after it ends.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(120);

    /// A policy that waits `base` after the first failure and doubles up to `max`. A `base`
    /// larger than `max` waits `max` every time.
    #[must_use]
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// Wait after the first failure.
    #[must_use]
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// Longest wait.
    #[must_use]
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The wait before the retry that follows `earlier_failures` failures already retried:
    /// `base · 2^earlier_failures`, at most `max`. Never overflows.
    #[must_use]
    pub fn delay_for(&self, earlier_failures: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let mut delay = self.base;
        // At most about 95 doublings: a non-zero duration reaches `Duration::MAX` (or `max`) by then.
        for _ in 0..earlier_failures {
            if delay >= self.max {
                break;
            }
            delay = delay.saturating_mul(2);
        }
        delay.min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::DEFAULT_BASE, Self::DEFAULT_MAX)
    }
}

/// A de-duplicating, rate-limited work queue of items of type `T`, shared by cloning (all
/// clones are the same queue). See the [module documentation](self) for the rules.
pub struct WorkQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<T> fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("WorkQueue")
            .field("name", &self.shared.name)
            .field("pending", &state.pending.len())
            .field("in_flight", &state.in_flight.len())
            .field("delayed", &state.delayed.len())
            .field("shut_down", &state.shut_down)
            .finish()
    }
}

impl<T: Clone + Eq + Hash> WorkQueue<T> {
    /// An empty queue called `name` (the `queue` label of its metrics) with the default
    /// [`Backoff`]. Give each queue of a process its own name: queues of the same name share
    /// their metrics.
    #[must_use]
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::with_backoff(name, Backoff::default())
    }

    /// An empty queue called `name` whose rate-limited adds wait as `backoff` says.
    #[must_use]
    pub fn with_backoff(name: impl Into<Arc<str>>, backoff: Backoff) -> Self {
        let name = name.into();
        let metrics = QueueMetrics::register(&name);
        metrics.depth.set(0.0);
        Self {
            shared: Arc::new(Shared {
                name,
                backoff,
                state: Mutex::new(QueueState::new(metrics)),
                wake_workers: Notify::new(),
                in_flight_done: Notify::new(),
            }),
        }
    }

    /// The queue's name, as in its metrics.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The retry policy of [`WorkQueue::add_rate_limited`].
    #[must_use]
    pub fn backoff(&self) -> Backoff {
        self.shared.backoff
    }

    /// Makes `item` pending. Does nothing if it is already pending or the queue is shut down;
    /// if the item is being processed, it is handed out again after its claim is done.
    pub fn add(&self, item: T) {
        let wake = {
            let mut state = self.shared.lock();
            let promoted = state.promote_due_now();
            promoted.max(if state.add(item) == Added::Ready { Wake::OneWorker } else { Wake::Nobody })
        };
        self.shared.wake(wake);
    }

    /// Makes `item` pending once `delay` has passed (at once for a zero delay). If the item is
    /// already waiting for a delay, the earlier of the two ready times is kept. Does nothing
    /// once the queue is shut down.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            self.add(item);
            return;
        }
        let wake = {
            let mut state = self.shared.lock();
            let now = Instant::now();
            let promoted = state.promote_due(now);
            promoted.max(state.add_at(item, deadline(now, delay), now))
        };
        self.shared.wake(wake);
    }

    /// Makes `item` pending after its backoff (see [`Backoff`]) and counts one more requeue of
    /// it. Returns the wait chosen; once the queue is shut down, does nothing and returns zero.
    pub fn add_rate_limited(&self, item: T) -> Duration {
        self.shared.add_rate_limited(item)
    }

    /// Forgets the failure history of `item`: its next rate-limited add waits the base delay
    /// again. Call it when the item's work succeeded or its object is gone.
    pub fn forget(&self, item: &T) {
        self.shared.lock().failures.remove(item);
    }

    /// Rate-limited adds of `item` since it was last forgotten.
    #[must_use]
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.shared.lock().failures.get(item).copied().unwrap_or(0)
    }

    /// Pending items: ready to be handed out, or waiting for their running copy to finish.
    /// Items waiting for a delay are not counted.
    #[must_use]
    pub fn len(&self) -> usize {
        let (len, wake) = {
            let mut state = self.shared.lock();
            let promoted = state.promote_due_now();
            (state.pending.len(), promoted)
        };
        self.shared.wake(wake);
        len
    }

    /// Whether no item is pending (delayed items aside).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items handed out whose claims are not done yet.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight.len()
    }

    /// Whether [`WorkQueue::shutdown`] was called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.shared.lock().shut_down
    }

    /// Waits for the oldest ready item and claims it for this worker; `None` once the queue is
    /// shut down. Cancel-safe: an item is only taken when the future completes, so `get` can
    /// be one branch of a `tokio::select!`.
    pub async fn get(&self) -> Option<Claim<T>> {
        loop {
            // Registered before looking at the state, so no wake-up between the look and the wait is lost.
            let mut woken = pin!(self.shared.wake_workers.notified());
            woken.as_mut().enable();
            let next_ready_at = match self.take_or_next_ready_at() {
                Taken::Item(claim) => return Some(claim),
                Taken::ShutDown => return None,
                Taken::Nothing { next_ready_at } => next_ready_at,
            };
            match next_ready_at {
                Some(ready_at) => {
                    tokio::select! {
                        () = woken.as_mut() => {}
                        () = tokio::time::sleep_until(ready_at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Claims the oldest item if one is ready now; `None` if none is or the queue is shut down.
    #[must_use]
    pub fn try_get(&self) -> Option<Claim<T>> {
        match self.take_or_next_ready_at() {
            Taken::Item(claim) => Some(claim),
            Taken::ShutDown | Taken::Nothing { .. } => None,
        }
    }

    /// Stops the queue: drops pending and delayed items, ignores later adds, and makes every
    /// [`WorkQueue::get`] (waiting or later) return `None`. Items being processed are not
    /// interrupted; see [`WorkQueue::shutdown_and_wait`].
    pub fn shutdown(&self) {
        self.shared.lock().shut_down();
        self.shared.wake_workers.notify_waiters();
    }

    /// [`WorkQueue::shutdown`], then waits until every claim handed out is done. Wrap it in
    /// `tokio::time::timeout` if a worker might hang.
    pub async fn shutdown_and_wait(&self) {
        self.shutdown();
        loop {
            let mut last_done = pin!(self.shared.in_flight_done.notified());
            last_done.as_mut().enable();
            if self.shared.lock().in_flight.is_empty() {
                return;
            }
            last_done.await;
        }
    }

    fn take_or_next_ready_at(&self) -> Taken<T> {
        let (item, more_ready) = {
            let mut state = self.shared.lock();
            if state.shut_down {
                return Taken::ShutDown;
            }
            let now = Instant::now();
            // No wake needed for promoted items: this worker takes one and passes the baton below.
            state.promote_due(now);
            let Some(item) = state.take(now) else {
                return Taken::Nothing { next_ready_at: state.next_ready_at() };
            };
            (item, !state.ready.is_empty())
        };
        if more_ready {
            // Pass the baton: whoever else waits takes the next one.
            self.shared.wake_workers.notify_one();
        }
        Taken::Item(Claim { shared: Arc::clone(&self.shared), item })
    }
}

/// An item handed out by [`WorkQueue::get`], held by the worker while it processes the item.
/// Finishing the claim ([`Claim::done`], [`Claim::succeeded`], [`Claim::retry_with_backoff`],
/// or dropping it) marks the item done: if it was added again meanwhile, it becomes ready again.
pub struct Claim<T: Clone + Eq + Hash> {
    shared: Arc<Shared<T>>,
    item: T,
}

impl<T: Clone + Eq + Hash> Claim<T> {
    /// The claimed item.
    #[must_use]
    pub fn item(&self) -> &T {
        &self.item
    }

    /// Marks the item done, leaving its failure history as it is (the same as dropping the claim).
    pub fn done(self) {
        drop(self);
    }

    /// The work succeeded: forgets the item's failure history ([`WorkQueue::forget`]) and marks
    /// it done.
    pub fn succeeded(self) {
        self.shared.lock().failures.remove(&self.item);
    }

    /// The work failed: adds the item again after its backoff ([`WorkQueue::add_rate_limited`])
    /// and marks it done. Returns the wait chosen.
    pub fn retry_with_backoff(self) -> Duration {
        self.shared.add_rate_limited(self.item.clone())
    }
}

impl<T: Clone + Eq + Hash> Deref for Claim<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.item
    }
}

impl<T: Clone + Eq + Hash + fmt::Debug> fmt::Debug for Claim<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").field("queue", &self.shared.name).field("item", &self.item).finish()
    }
}

impl<T: Clone + Eq + Hash> Drop for Claim<T> {
    fn drop(&mut self) {
        let (finished, promoted) = {
            let mut state = self.shared.lock();
            let now = Instant::now();
            let promoted = state.promote_due(now);
            (state.finish(&self.item, now), promoted)
        };
        self.shared.wake(promoted.max(if finished.ready_again { Wake::OneWorker } else { Wake::Nobody }));
        if finished.last_in_flight_after_shutdown {
            self.shared.in_flight_done.notify_waiters();
        }
    }
}

/// What all clones of a queue and its claims share.
struct Shared<T> {
    name: Arc<str>,
    backoff: Backoff,
    state: Mutex<QueueState<T>>,
    /// Wakes workers waiting in `get`: an item became ready (one worker), the earliest delay
    /// moved earlier or the queue shut down (all workers).
    wake_workers: Notify,
    /// Wakes `shutdown_and_wait` when the last claim is done after shutdown.
    in_flight_done: Notify,
}

impl<T> Shared<T> {
    /// The state; a panic in another thread (only possible in `T`'s `Hash` or `Eq`) does not
    /// poison the queue.
    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_rate_limited(&self, item: T) -> Duration
    where
        T: Clone + Eq + Hash,
    {
        let (delay, wake) = {
            let mut state = self.lock();
            if state.shut_down {
                return Duration::ZERO;
            }
            let now = Instant::now();
            let promoted = state.promote_due(now);
            let delay = state.record_failure(&item, self.backoff);
            (delay, promoted.max(state.add_at(item, deadline(now, delay), now)))
        };
        self.wake(wake);
        delay
    }

    fn wake(&self, wake: Wake) {
        match wake {
            Wake::Nobody => {}
            Wake::OneWorker => self.wake_workers.notify_one(),
            Wake::AllWorkers => self.wake_workers.notify_waiters(),
        }
    }
}

/// Result of looking for an item to hand out.
enum Taken<T: Clone + Eq + Hash> {
    Item(Claim<T>),
    ShutDown,
    Nothing { next_ready_at: Option<Instant> },
}

/// Whom a change must wake (in increasing order: waking all workers also wakes one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    Nobody,
    /// An item became ready.
    OneWorker,
    /// The earliest ready time moved earlier: sleeping workers must set their timers again.
    AllWorkers,
}

/// What [`QueueState::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Added {
    /// Now ready to be handed out.
    Ready,
    /// Pending, handed out when its running copy is done.
    AfterInFlight,
    /// Already pending.
    Merged,
    /// The queue is shut down.
    Ignored,
}

/// What [`QueueState::finish`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Finished {
    /// The item was added while it ran and is ready again.
    ready_again: bool,
    /// The queue is shut down and nothing is in flight any more.
    last_in_flight_after_shutdown: bool,
}

struct QueueMetrics {
    depth: Gauge,
    adds: Counter,
    retries: Counter,
    work_duration: Histogram,
}

impl QueueMetrics {
    fn register(name: &Arc<str>) -> Self {
        Self {
            depth: metrics::gauge!(catalog::WORKQUEUE_DEPTH, "queue" => Arc::clone(name)),
            adds: metrics::counter!(catalog::WORKQUEUE_ADDS, "queue" => Arc::clone(name)),
            retries: metrics::counter!(catalog::WORKQUEUE_RETRIES, "queue" => Arc::clone(name)),
            work_duration: metrics::histogram!(catalog::WORKQUEUE_WORK_DURATION, "queue" => Arc::clone(name)),
        }
    }
}

/// The queue's bookkeeping, without locking, waking or reading the clock (time is passed in),
/// so the rules can be tested on their own.
struct QueueState<T> {
    /// Items ready to be handed out, oldest first; each is also in `pending`, none in `in_flight`.
    ready: VecDeque<T>,
    /// Items added and not handed out yet: those in `ready` and those waiting for their running
    /// copy (in `in_flight`) to finish.
    pending: HashSet<T>,
    /// Items handed out and not done, with the time each was handed out.
    in_flight: HashMap<T, Instant>,
    /// Items waiting for a delay, by ready time and then by the order they were delayed.
    delayed: BTreeMap<(Instant, u64), T>,
    /// Where each delayed item is in `delayed`.
    delayed_slots: HashMap<T, (Instant, u64)>,
    next_delay_number: u64,
    /// Rate-limited adds per item since it was last forgotten.
    failures: HashMap<T, u32>,
    shut_down: bool,
    metrics: QueueMetrics,
}

impl<T: Clone + Eq + Hash> QueueState<T> {
    fn new(metrics: QueueMetrics) -> Self {
        Self {
            ready: VecDeque::new(),
            pending: HashSet::new(),
            in_flight: HashMap::new(),
            delayed: BTreeMap::new(),
            delayed_slots: HashMap::new(),
            next_delay_number: 0,
            failures: HashMap::new(),
            shut_down: false,
            metrics,
        }
    }

    fn add(&mut self, item: T) -> Added {
        if self.shut_down {
            return Added::Ignored;
        }
        if self.pending.contains(&item) {
            return Added::Merged;
        }
        self.metrics.adds.increment(1);
        let added = if self.in_flight.contains_key(&item) {
            self.pending.insert(item);
            Added::AfterInFlight
        } else {
            self.pending.insert(item.clone());
            self.ready.push_back(item);
            Added::Ready
        };
        self.publish_depth();
        added
    }

    /// Adds `item` at `ready_at` (at once if that is not after `now`).
    fn add_at(&mut self, item: T, ready_at: Instant, now: Instant) -> Wake {
        if self.shut_down {
            return Wake::Nobody;
        }
        if ready_at <= now {
            return if self.add(item) == Added::Ready { Wake::OneWorker } else { Wake::Nobody };
        }
        if let Some(&slot) = self.delayed_slots.get(&item) {
            if slot.0 <= ready_at {
                return Wake::Nobody;
            }
            self.delayed.remove(&slot);
        }
        let moved_earlier = self.next_ready_at().is_none_or(|earliest| ready_at < earliest);
        let slot = (ready_at, self.next_delay_number);
        self.next_delay_number = self.next_delay_number.wrapping_add(1);
        self.delayed.insert(slot, item.clone());
        self.delayed_slots.insert(item, slot);
        if moved_earlier { Wake::AllWorkers } else { Wake::Nobody }
    }

    /// Adds the delayed items whose time has come; says whether a worker must be woken.
    fn promote_due(&mut self, now: Instant) -> Wake {
        let mut wake = Wake::Nobody;
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let item = entry.remove();
            self.delayed_slots.remove(&item);
            if self.add(item) == Added::Ready {
                wake = Wake::OneWorker;
            }
        }
        wake
    }

    /// [`QueueState::promote_due`], reading the clock only if some item is delayed.
    fn promote_due_now(&mut self) -> Wake {
        if self.delayed.is_empty() { Wake::Nobody } else { self.promote_due(Instant::now()) }
    }

    fn next_ready_at(&self) -> Option<Instant> {
        self.delayed.first_key_value().map(|(slot, _)| slot.0)
    }

    /// Hands out the oldest ready item.
    fn take(&mut self, now: Instant) -> Option<T> {
        let item = self.ready.pop_front()?;
        self.pending.remove(&item);
        self.in_flight.insert(item.clone(), now);
        self.publish_depth();
        Some(item)
    }

    /// The claim of `item` is done.
    fn finish(&mut self, item: &T, now: Instant) -> Finished {
        if let Some(handed_out) = self.in_flight.remove(item) {
            self.metrics.work_duration.record(now.saturating_duration_since(handed_out).as_secs_f64());
        }
        // After shutdown `pending` is empty, so nothing becomes ready again.
        let ready_again = self.pending.contains(item);
        if ready_again {
            self.ready.push_back(item.clone());
        }
        Finished { ready_again, last_in_flight_after_shutdown: self.shut_down && self.in_flight.is_empty() }
    }

    /// Counts one more failure of `item`; returns the wait before its retry.
    fn record_failure(&mut self, item: &T, backoff: Backoff) -> Duration {
        self.metrics.retries.increment(1);
        let failures = self.failures.entry(item.clone()).or_insert(0);
        let delay = backoff.delay_for(*failures);
        *failures = failures.saturating_add(1);
        delay
    }

    fn shut_down(&mut self) {
        self.shut_down = true;
        self.ready.clear();
        self.pending.clear();
        self.delayed.clear();
        self.delayed_slots.clear();
        self.failures.clear();
        self.publish_depth();
    }

    fn publish_depth(&self) {
        self.metrics.depth.set(self.pending.len() as f64);
    }
}

/// `now + delay`, or a far-away time for delays too long for the clock.
fn deadline(now: Instant, delay: Duration) -> Instant {
    // 30 years of 365 days, written out (a product of constants only gives mutation testing
    // eight ways to make a far-away time a little less far away).
    const FAR_AWAY: Duration = Duration::from_secs(946_080_000);
    now.checked_add(delay).or_else(|| now.checked_add(FAR_AWAY)).unwrap_or(now)
}

#[cfg(test)]
mod tests;
