#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Tests of the work queue. Timer tests run on the real clock (this crate's tokio has no
//! `test-util`, so no paused clock): they only assert that an item is never handed out early
//! (tokio timers never fire early) and that what must happen happens within [`PATIENCE`], so
//! they cannot fail on a slow machine. The rules themselves are checked on [`QueueState`] with
//! a virtual clock.

use std::{
    collections::{BTreeSet, HashSet},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use metrics::{Counter, Gauge, Histogram};
use proptest::prelude::*;
use tokio::time::timeout;

use super::*;

/// Bound for what must happen; reached only if the queue is broken.
const PATIENCE: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn queue() -> WorkQueue<&'static str> {
    WorkQueue::with_backoff("test", Backoff::new(ms(10), ms(80)))
}

/// The next item, which must come within [`PATIENCE`].
async fn next<T: Clone + Eq + Hash>(queue: &WorkQueue<T>) -> Claim<T> {
    timeout(PATIENCE, queue.get()).await.expect("no item came").expect("the queue is shut down")
}

/// Lets spawned tasks run until they wait (the test runtime has one thread).
async fn let_others_run() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn noop_metrics() -> QueueMetrics {
    QueueMetrics {
        depth: Gauge::noop(),
        adds: Counter::noop(),
        retries: Counter::noop(),
        work_duration: Histogram::noop(),
    }
}

impl<T: Clone + Eq + Hash + fmt::Debug> QueueState<T> {
    /// The bookkeeping agrees with itself: nothing ready twice, nothing ready while in flight,
    /// every pending item either ready or in flight, the delay index matches the delays.
    fn check_invariants(&self) -> Result<(), String> {
        let mut ready = HashSet::new();
        for item in &self.ready {
            if !ready.insert(item) {
                return Err(format!("{item:?} is ready twice"));
            }
            if !self.pending.contains(item) {
                return Err(format!("{item:?} is ready but not pending"));
            }
            if self.in_flight.contains_key(item) {
                return Err(format!("{item:?} is ready while in flight"));
            }
        }
        if let Some(item) = self.pending.iter().find(|i| !ready.contains(i) && !self.in_flight.contains_key(*i)) {
            return Err(format!("{item:?} is pending but neither ready nor in flight"));
        }
        if self.delayed.len() != self.delayed_slots.len() {
            return Err(format!("{} delayed items but {} slots", self.delayed.len(), self.delayed_slots.len()));
        }
        if let Some((_, item)) = self.delayed.iter().find(|(slot, item)| self.delayed_slots.get(*item) != Some(*slot)) {
            return Err(format!("{item:?} is delayed in the wrong slot"));
        }
        if self.shut_down && !(self.ready.is_empty() && self.pending.is_empty() && self.delayed.is_empty()) {
            return Err("items kept after shutdown".to_owned());
        }
        Ok(())
    }
}

// ---- de-duplication and exclusivity ----

#[tokio::test]
async fn adds_while_pending_are_merged() {
    let q = queue();
    q.add("a");
    q.add("b");
    q.add("a");
    q.add("a");
    assert_eq!(q.len(), 2);
    assert_eq!(*q.try_get().unwrap(), "a");
    assert_eq!(*q.try_get().unwrap(), "b");
    assert!(q.try_get().is_none());
    assert!(q.is_empty());
}

#[tokio::test]
async fn items_come_out_oldest_first() {
    let q = queue();
    for item in ["c", "a", "b", "a"] {
        q.add(item);
    }
    let order: Vec<_> = std::iter::from_fn(|| q.try_get().map(|claim| *claim)).collect();
    assert_eq!(order, ["c", "a", "b"]);
}

#[tokio::test]
async fn an_item_added_while_in_flight_runs_again_after_done() {
    let q = queue();
    q.add("a");
    let first = q.try_get().unwrap();
    q.add("a");
    q.add("a");
    assert_eq!(q.len(), 1, "pending once");
    assert!(q.try_get().is_none(), "handed out while in flight");
    assert_eq!(q.in_flight(), 1);
    first.done();
    let second = q.try_get().expect("runs again after done");
    assert_eq!(*second, "a");
    second.done();
    assert!(q.try_get().is_none(), "merged adds run once");
    assert_eq!(q.in_flight(), 0);
}

#[tokio::test]
async fn a_waiting_worker_gets_an_in_flight_item_only_after_done() {
    let q = queue();
    q.add("a");
    let first = next(&q).await;
    q.add("a");
    let worker = tokio::spawn({
        let q = q.clone();
        async move { q.get().await.map(|claim| *claim) }
    });
    let_others_run().await;
    assert!(!worker.is_finished(), "a second worker got the item while it was in flight");
    first.done();
    assert_eq!(timeout(PATIENCE, worker).await.unwrap().unwrap(), Some("a"));
}

#[tokio::test]
async fn dropping_a_claim_marks_it_done() {
    let q = queue();
    q.add("a");
    let claim = q.try_get().unwrap();
    q.add("a");
    drop(claim);
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.try_get().as_deref(), Some(&"a"));
}

#[tokio::test]
async fn a_worker_that_panics_releases_its_item() {
    let q = queue();
    q.add("a");
    let worker = tokio::spawn({
        let q = q.clone();
        async move {
            let _claim = q.get().await;
            panic!("reconcile failed");
        }
    });
    assert!(worker.await.unwrap_err().is_panic());
    assert_eq!(q.in_flight(), 0);
    q.add("a");
    assert_eq!(q.try_get().as_deref(), Some(&"a"));
}

// ---- waiting and waking ----

#[tokio::test]
async fn get_waits_for_an_add() {
    let q = queue();
    let worker = tokio::spawn({
        let q = q.clone();
        async move { q.get().await.map(|claim| *claim) }
    });
    let_others_run().await;
    assert!(!worker.is_finished(), "get returned from an empty queue");
    q.add("a");
    assert_eq!(timeout(PATIENCE, worker).await.unwrap().unwrap(), Some("a"));
}

#[tokio::test]
async fn each_add_wakes_its_own_waiting_worker() {
    let q = queue();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            // Each worker keeps its claim until the test ends, so one worker cannot take two items.
            tokio::spawn(async move { q.get().await })
        })
        .collect();
    let_others_run().await;
    for item in ["a", "b", "c"] {
        q.add(item);
    }
    let mut got = BTreeSet::new();
    let mut claims = Vec::new();
    for worker in workers {
        let claim = timeout(PATIENCE, worker).await.expect("a worker was never woken").unwrap().unwrap();
        got.insert(*claim);
        claims.push(claim);
    }
    assert_eq!(got, BTreeSet::from(["a", "b", "c"]));
}

#[tokio::test]
async fn a_cancelled_waiting_worker_does_not_swallow_the_wake_up() {
    let q = queue();
    let first = tokio::spawn({
        let q = q.clone();
        async move { q.get().await.map(|claim| *claim) }
    });
    let_others_run().await;
    let second = tokio::spawn({
        let q = q.clone();
        async move { q.get().await.map(|claim| *claim) }
    });
    let_others_run().await;
    q.add("a");
    // The first waiter was woken (tokio wakes the oldest waiter) but is cancelled before it runs.
    first.abort();
    assert_eq!(timeout(PATIENCE, second).await.expect("the wake-up was lost").unwrap(), Some("a"));
}

#[tokio::test]
async fn a_cancelled_get_takes_nothing() {
    let q = queue();
    assert!(timeout(ms(5), q.get()).await.is_err());
    q.add("a");
    assert_eq!(q.len(), 1);
    assert_eq!(*next(&q).await, "a");
}

// ---- delays ----

#[tokio::test]
async fn add_after_hands_out_no_earlier_than_the_delay() {
    let q = queue();
    let start = Instant::now();
    q.add_after("late", ms(60));
    q.add("now");
    assert_eq!(q.len(), 1, "a delayed item is not pending yet");
    assert_eq!(*next(&q).await, "now");
    assert_eq!(*next(&q).await, "late");
    assert!(start.elapsed() >= ms(60), "handed out after {:?}", start.elapsed());
}

#[tokio::test]
async fn add_after_zero_is_an_add() {
    let q = queue();
    q.add_after("a", Duration::ZERO);
    assert_eq!(q.try_get().as_deref(), Some(&"a"));
}

#[tokio::test]
async fn a_sooner_delay_wakes_a_worker_sleeping_on_a_later_one() {
    let q = queue();
    q.add_after("in an hour", Duration::from_secs(3600));
    let worker = tokio::spawn({
        let q = q.clone();
        async move { q.get().await.map(|claim| *claim) }
    });
    let_others_run().await;
    assert!(!worker.is_finished());
    let start = Instant::now();
    q.add_after("soon", ms(20));
    // Only a worker that set its timer again can get it long before the hour is over.
    assert_eq!(timeout(PATIENCE, worker).await.expect("the worker slept on").unwrap(), Some("soon"));
    assert!(start.elapsed() >= ms(20));
}

#[test]
fn a_delayed_item_keeps_its_earlier_ready_time() {
    let t0 = Instant::now();
    let secs = Duration::from_secs;
    let mut state = QueueState::new(noop_metrics());
    assert_eq!(state.add_at("a", t0 + secs(10), t0), Wake::AllWorkers);
    assert_eq!(state.add_at("a", t0 + secs(5), t0), Wake::AllWorkers, "an earlier time must wake the workers");
    assert_eq!(state.add_at("a", t0 + secs(20), t0), Wake::Nobody);
    assert_eq!(state.add_at("b", t0 + secs(30), t0), Wake::Nobody, "a later time needs no wake-up");
    assert_eq!(state.next_ready_at(), Some(t0 + secs(5)));
    assert_eq!(state.promote_due(t0 + secs(4)), Wake::Nobody);
    assert!(state.pending.is_empty());
    assert_eq!(state.promote_due(t0 + secs(5)), Wake::OneWorker);
    assert_eq!(state.take(t0 + secs(5)), Some("a"));
    assert_eq!(state.next_ready_at(), Some(t0 + secs(30)), "the later times of a are gone");
    state.check_invariants().unwrap();
}

#[test]
fn delayed_items_become_ready_in_ready_time_order() {
    let t0 = Instant::now();
    let mut state = QueueState::new(noop_metrics());
    state.add_at("b", t0 + ms(2), t0);
    state.add_at("a", t0 + ms(1), t0);
    state.add_at("c", t0 + ms(1), t0);
    state.add("d");
    state.promote_due(t0 + ms(3));
    let order: Vec<_> = std::iter::from_fn(|| state.take(t0 + ms(3))).collect();
    assert_eq!(order, ["d", "a", "c", "b"]);
}

#[test]
fn a_due_item_that_is_already_pending_is_merged() {
    let t0 = Instant::now();
    let mut state = QueueState::new(noop_metrics());
    state.add("a");
    state.add_at("a", t0 + ms(1), t0);
    assert_eq!(state.promote_due(t0 + ms(1)), Wake::Nobody);
    assert_eq!(state.ready.len(), 1);
    state.check_invariants().unwrap();
}

// ---- backoff ----

#[test]
fn backoff_doubles_per_failure_up_to_the_max() {
    let backoff = Backoff::new(ms(10), ms(80));
    let delays: Vec<_> = (0..6).map(|n| backoff.delay_for(n)).collect();
    assert_eq!(delays, [ms(10), ms(20), ms(40), ms(80), ms(80), ms(80)]);
    let uneven = Backoff::new(ms(30), ms(100));
    assert_eq!(uneven.delay_for(2), ms(100), "120 ms is capped");
}

#[test]
fn backoff_never_overflows() {
    assert_eq!(Backoff::new(Duration::from_nanos(1), Duration::MAX).delay_for(u32::MAX), Duration::MAX);
    assert_eq!(Backoff::new(Duration::ZERO, Duration::MAX).delay_for(u32::MAX), Duration::ZERO);
    assert_eq!(Backoff::new(Duration::from_secs(5), Duration::from_secs(1)).delay_for(0), Duration::from_secs(1));
    assert_eq!(Backoff::default().delay_for(u32::MAX), Backoff::DEFAULT_MAX);
    assert_eq!(Backoff::default().delay_for(0), Backoff::DEFAULT_BASE);
}

#[tokio::test]
async fn rate_limited_adds_back_off_per_item_until_forgotten() {
    let q = queue();
    assert_eq!(q.add_rate_limited("a"), ms(10));
    assert_eq!(q.add_rate_limited("a"), ms(20));
    assert_eq!(q.add_rate_limited("a"), ms(40));
    assert_eq!(q.add_rate_limited("b"), ms(10), "backoff is per item");
    assert_eq!((q.num_requeues(&"a"), q.num_requeues(&"b"), q.num_requeues(&"c")), (3, 1, 0));
    q.forget(&"a");
    assert_eq!(q.num_requeues(&"a"), 0);
    assert_eq!(q.add_rate_limited("a"), ms(10));
    assert_eq!(q.num_requeues(&"b"), 1, "forget is per item");
}

#[tokio::test]
async fn a_failed_item_is_retried_after_its_backoff_and_success_resets_it() {
    let q = WorkQueue::with_backoff("test", Backoff::new(ms(40), Duration::from_secs(1)));
    q.add("a");
    let claim = next(&q).await;
    let failed_at = Instant::now();
    assert_eq!(claim.retry_with_backoff(), ms(40));
    assert!(q.try_get().is_none(), "retried without waiting");
    let claim = next(&q).await;
    assert!(failed_at.elapsed() >= ms(40), "retried after {:?}", failed_at.elapsed());
    assert_eq!(q.num_requeues(&"a"), 1);
    let failed_at = Instant::now();
    assert_eq!(claim.retry_with_backoff(), ms(80));
    let claim = next(&q).await;
    assert!(failed_at.elapsed() >= ms(80), "retried after {:?}", failed_at.elapsed());
    claim.succeeded();
    assert_eq!(q.num_requeues(&"a"), 0);
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.add_rate_limited("a"), ms(40));
}

#[tokio::test]
async fn a_retry_during_processing_waits_for_done() {
    let q = WorkQueue::with_backoff("test", Backoff::new(Duration::ZERO, Duration::ZERO));
    q.add("a");
    let claim = q.try_get().unwrap();
    assert_eq!(q.add_rate_limited("a"), Duration::ZERO);
    assert!(q.try_get().is_none(), "handed out while in flight");
    claim.done();
    assert_eq!(q.try_get().as_deref(), Some(&"a"));
}

// ---- shutdown ----

#[tokio::test]
async fn shutdown_wakes_every_waiting_worker_with_none() {
    let q = queue();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.get().await.is_none() })
        })
        .collect();
    let_others_run().await;
    q.shutdown();
    for worker in workers {
        assert!(timeout(PATIENCE, worker).await.expect("a worker kept waiting").unwrap());
    }
    assert!(timeout(PATIENCE, q.get()).await.unwrap().is_none());
}

#[tokio::test]
async fn shutdown_drops_pending_and_delayed_items_and_ignores_later_adds() {
    let q = queue();
    q.add("a");
    q.add_after("b", ms(10));
    q.add_rate_limited("c");
    q.shutdown();
    assert!(q.is_shut_down());
    assert!(q.is_empty());
    q.add("d");
    q.add_after("e", Duration::ZERO);
    q.add_after("f", ms(1));
    assert_eq!(q.add_rate_limited("g"), Duration::ZERO);
    assert!(q.is_empty());
    tokio::time::sleep(ms(30)).await;
    assert!(q.try_get().is_none());
    assert!(timeout(PATIENCE, q.get()).await.unwrap().is_none());
    q.shared.lock().check_invariants().unwrap();
}

#[tokio::test]
async fn shutdown_and_wait_lets_in_flight_work_finish() {
    let q = queue();
    q.add("a");
    q.add("b");
    let a = next(&q).await;
    q.add("a");
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.shutdown_and_wait().await }
    });
    let_others_run().await;
    assert!(q.is_shut_down());
    assert!(!waiter.is_finished(), "returned while a was in flight");
    assert!(q.get().await.is_none(), "b was handed out after shutdown");
    a.done();
    timeout(PATIENCE, waiter).await.expect("still waiting after the last done").unwrap();
    assert!(q.try_get().is_none(), "a ran again after shutdown");
    assert_eq!(q.in_flight(), 0);
}

#[tokio::test]
async fn shutdown_and_wait_returns_at_once_when_nothing_is_in_flight() {
    let q = queue();
    q.add("a");
    timeout(PATIENCE, q.shutdown_and_wait()).await.unwrap();
    assert!(q.is_empty());
}

// ---- metrics ----

#[tokio::test]
async fn metrics_follow_the_queue() {
    let recorder = crate::telemetry::build_recorder();
    let handle = recorder.handle();
    let q = metrics::with_local_recorder(&recorder, || {
        WorkQueue::with_backoff("metrics-test", Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600)))
    });
    q.add("a");
    q.add("a");
    q.add("b");
    let a = q.try_get().unwrap();
    q.add_rate_limited("c");
    a.done();
    let text = handle.render();
    for line in [
        r#"purelb_workqueue_adds_total{queue="metrics-test"} 2"#,
        r#"purelb_workqueue_depth{queue="metrics-test"} 1"#,
        r#"purelb_workqueue_retries_total{queue="metrics-test"} 1"#,
        r#"purelb_workqueue_work_duration_seconds_count{queue="metrics-test"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    q.shutdown();
    let text = handle.render();
    assert!(text.lines().any(|l| l == r#"purelb_workqueue_depth{queue="metrics-test"} 0"#), "{text}");
}

// ---- properties: the rules on the bookkeeping, step by step with a virtual clock ----

/// Items of the property tests.
const KEYS: u8 = 6;

#[derive(Clone, Debug)]
enum Step {
    Add(u8),
    AddAfter(u8, u64),
    AddRateLimited(u8),
    Forget(u8),
    Take,
    /// Finishes one of the held claims.
    Finish(prop::sample::Index),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Step::Add),
        2 => (0..KEYS, 0..50u64).prop_map(|(k, delay)| Step::AddAfter(k, delay)),
        1 => (0..KEYS).prop_map(Step::AddRateLimited),
        1 => (0..KEYS).prop_map(Step::Forget),
        4 => Just(Step::Take),
        3 => any::<prop::sample::Index>().prop_map(Step::Finish),
        2 => (1..40u64).prop_map(Step::Advance),
    ]
}

/// A deliberately naive model of the rules: ordered lists and linear searches.
#[derive(Default)]
struct Model {
    ready: Vec<u8>,
    /// Added while in flight: ready again when done.
    after_in_flight: Vec<u8>,
    in_flight: Vec<u8>,
    /// (ready time in ms, order delayed, item).
    delayed: Vec<(u64, u64, u8)>,
    delay_count: u64,
    failures: Vec<u32>,
    shut_down: bool,
}

impl Model {
    fn add(&mut self, k: u8) {
        if self.shut_down || self.ready.contains(&k) || self.after_in_flight.contains(&k) {
            return;
        }
        if self.in_flight.contains(&k) { self.after_in_flight.push(k) } else { self.ready.push(k) }
    }

    fn add_at(&mut self, k: u8, at: u64, now: u64) {
        if self.shut_down {
            return;
        }
        if at <= now {
            return self.add(k);
        }
        if let Some(i) = self.delayed.iter().position(|d| d.2 == k) {
            if self.delayed[i].0 <= at {
                return;
            }
            self.delayed.remove(i);
        }
        self.delayed.push((at, self.delay_count, k));
        self.delay_count += 1;
    }

    fn promote(&mut self, now: u64) {
        let mut due: Vec<_> = self.delayed.iter().copied().filter(|d| d.0 <= now).collect();
        due.sort_unstable();
        self.delayed.retain(|d| d.0 > now);
        for (_, _, k) in due {
            self.add(k);
        }
    }

    fn take(&mut self) -> Option<u8> {
        if self.ready.is_empty() {
            return None;
        }
        let k = self.ready.remove(0);
        self.in_flight.push(k);
        Some(k)
    }

    fn finish(&mut self, k: u8) {
        self.in_flight.retain(|&i| i != k);
        if let Some(i) = self.after_in_flight.iter().position(|&i| i == k) {
            self.after_in_flight.remove(i);
            self.ready.push(k);
        }
    }

    fn shutdown(&mut self) {
        self.shut_down = true;
        self.ready.clear();
        self.after_in_flight.clear();
        self.delayed.clear();
    }

    fn next_ready_at(&self) -> Option<u64> {
        self.delayed.iter().map(|d| d.0).min()
    }
}

/// Drives a [`QueueState`] and the [`Model`] through `steps` (a shutdown where `shutdown_at`
/// says), then drains both, checking after every step that they agree and that the rules hold.
fn run_steps(steps: &[Step], shutdown_at: Option<usize>) -> Result<(), TestCaseError> {
    let backoff = Backoff::new(ms(1), ms(16));
    let t0 = Instant::now();
    let mut now_ms = 0u64;
    let at = |ms_: u64| t0 + ms(ms_);
    let mut state = QueueState::new(noop_metrics());
    let mut model = Model { failures: vec![0; usize::from(KEYS)], ..Model::default() };
    // Claims held (by the imaginary workers), in the order they were taken.
    let mut held: Vec<u8> = Vec::new();
    // Per item: the first step of an add that no take has followed yet.
    let mut unserved: Vec<Option<usize>> = vec![None; usize::from(KEYS)];

    let take = |state: &mut QueueState<u8>,
                model: &mut Model,
                held: &mut Vec<u8>,
                unserved: &mut Vec<Option<usize>>,
                now_ms: u64|
     -> Result<Option<u8>, TestCaseError> {
        let taken = state.take(at(now_ms));
        prop_assert_eq!(taken, model.take(), "take order");
        if let Some(k) = taken {
            prop_assert!(!held.contains(&k), "{} handed out while in flight", k);
            held.push(k);
            unserved[usize::from(k)] = None;
        }
        Ok(taken)
    };

    for (i, step) in steps.iter().enumerate() {
        if shutdown_at == Some(i) {
            state.shut_down();
            model.shutdown();
            // What was not handed out is dropped: shutdown excuses it.
            unserved.fill(None);
        }
        // The queue brings due items in before every operation.
        state.promote_due(at(now_ms));
        model.promote(now_ms);
        let accepted = !state.shut_down;
        match step {
            Step::Add(k) => {
                state.add(*k);
                model.add(*k);
            }
            Step::AddAfter(k, delay) => {
                state.add_at(*k, at(now_ms + delay), at(now_ms));
                model.add_at(*k, now_ms + delay, now_ms);
            }
            Step::AddRateLimited(k) => {
                if accepted {
                    let delay = state.record_failure(k, backoff);
                    let failures = &mut model.failures[usize::from(*k)];
                    prop_assert_eq!(delay, backoff.delay_for(*failures));
                    *failures += 1;
                    state.add_at(*k, at(now_ms) + delay, at(now_ms));
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap();
                    model.add_at(*k, now_ms + delay_ms, now_ms);
                }
            }
            Step::Forget(k) => {
                state.failures.remove(k);
                model.failures[usize::from(*k)] = 0;
            }
            Step::Take => {
                take(&mut state, &mut model, &mut held, &mut unserved, now_ms)?;
            }
            Step::Finish(index) => {
                if !held.is_empty() {
                    let k = held.remove(index.index(held.len()));
                    state.finish(&k, at(now_ms));
                    model.finish(k);
                }
            }
            Step::Advance(by) => now_ms += by,
        }
        if accepted && let Step::Add(k) | Step::AddAfter(k, _) | Step::AddRateLimited(k) = step {
            unserved[usize::from(*k)].get_or_insert(i);
        }
        state.check_invariants().map_err(TestCaseError::fail)?;
        prop_assert!(state.pending.len() <= usize::from(KEYS));
        let mut pending: Vec<u8> = state.pending.iter().copied().collect();
        pending.sort_unstable();
        let mut model_pending: Vec<u8> = model.ready.iter().chain(&model.after_in_flight).copied().collect();
        model_pending.sort_unstable();
        prop_assert_eq!(pending, model_pending, "pending items");
        prop_assert_eq!(state.next_ready_at(), model.next_ready_at().map(at), "next ready time");
        let failures: Vec<u32> = (0..KEYS).map(|k| state.failures.get(&k).copied().unwrap_or(0)).collect();
        if !state.shut_down {
            prop_assert_eq!(&failures, &model.failures, "failure counts");
        }
    }

    // Drain: let every delay pass, finish every claim and process what is left (an item added
    // while in flight comes back once, so three rounds empty the queue).
    for _ in 0..3 {
        now_ms += 3_600_000;
        state.promote_due(at(now_ms));
        model.promote(now_ms);
        for k in std::mem::take(&mut held) {
            state.finish(&k, at(now_ms));
            model.finish(k);
        }
        while take(&mut state, &mut model, &mut held, &mut unserved, now_ms)?.is_some() {}
        state.check_invariants().map_err(TestCaseError::fail)?;
    }
    prop_assert!(state.pending.is_empty() && state.delayed.is_empty(), "work left after draining");
    for (k, add_step) in unserved.iter().enumerate() {
        prop_assert!(add_step.is_none(), "item {} added at step {:?} was never handed out afterwards", k, add_step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The bookkeeping follows the rules for any sequence of operations: items are handed out
    /// oldest first, never while in flight, never before their delay, pending at most once;
    /// every add is followed by a hand-out unless the queue shut down.
    #[test]
    fn the_bookkeeping_follows_the_rules(
        steps in prop::collection::vec(step(), 1..150),
        shutdown_at in prop::option::weighted(0.3, 0..150usize),
    ) {
        run_steps(&steps, shutdown_at)?;
    }
}

// ---- properties: the queue itself, with several tasks on a multi-threaded runtime ----

#[derive(Clone, Debug)]
enum ProducerAction {
    Add(u8),
    /// Adds after this many milliseconds.
    AddAfter(u8, u64),
    Yield,
}

/// What a worker does with one claim.
#[derive(Clone, Debug)]
struct WorkerStep {
    yields: u8,
    /// Adds the item again while processing it, up to 3 times per item.
    add_again: bool,
    /// Fails (retries with backoff) instead of succeeding, up to 3 times per item.
    fail: bool,
}

fn producer_action() -> impl Strategy<Value = ProducerAction> {
    prop_oneof![
        4 => (0..KEYS).prop_map(ProducerAction::Add),
        1 => (0..KEYS, 0..3u64).prop_map(|(k, delay)| ProducerAction::AddAfter(k, delay)),
        2 => Just(ProducerAction::Yield),
    ]
}

fn worker_step() -> impl Strategy<Value = WorkerStep> {
    (0..4u8, prop::bool::weighted(0.2), prop::bool::weighted(0.2)).prop_map(|(yields, add_again, fail)| WorkerStep {
        yields,
        add_again,
        fail,
    })
}

/// What the tasks of one run saw.
#[derive(Default)]
struct Observations {
    /// Per item: generation bumped before every add from outside a claim of the item.
    generation: Vec<AtomicU64>,
    /// Per item: highest generation a worker read at the start of processing the item.
    seen_generation: Vec<AtomicU64>,
    /// Per item: adds from inside a claim of the item (bounded, so that the run ends).
    added_again: Vec<AtomicU64>,
    /// Items being processed right now, as the workers see it.
    processing: Mutex<HashSet<u8>>,
    shutdown_returned: AtomicBool,
    violations: Mutex<Vec<String>>,
}

impl Observations {
    fn new() -> Self {
        Self {
            generation: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            seen_generation: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            added_again: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    /// Records that `k` is about to be added; the add must be seen by a later processing.
    fn announce_add(&self, k: u8) {
        self.generation[usize::from(k)].fetch_add(1, Ordering::SeqCst);
    }
}

async fn produce(q: WorkQueue<u8>, actions: Vec<ProducerAction>, seen: Arc<Observations>) {
    for action in actions {
        match action {
            ProducerAction::Add(k) => {
                seen.announce_add(k);
                q.add(k);
            }
            ProducerAction::AddAfter(k, delay) => {
                seen.announce_add(k);
                q.add_after(k, ms(delay));
            }
            ProducerAction::Yield => tokio::task::yield_now().await,
        }
    }
}

async fn work(q: WorkQueue<u8>, script: Vec<WorkerStep>, seen: Arc<Observations>) {
    for n in 0.. {
        let after_shutdown = seen.shutdown_returned.load(Ordering::SeqCst);
        let Some(claim) = q.get().await else { return };
        let k = *claim;
        if after_shutdown {
            seen.violation(format!("{k} handed out after shutdown returned"));
        }
        if !seen.processing.lock().unwrap().insert(k) {
            seen.violation(format!("{k} processed by two workers at once"));
        }
        let generation = seen.generation[usize::from(k)].load(Ordering::SeqCst);
        seen.seen_generation[usize::from(k)].fetch_max(generation, Ordering::SeqCst);
        if let Err(e) = q.shared.lock().check_invariants() {
            seen.violation(e);
        }
        if q.len() > usize::from(KEYS) {
            seen.violation(format!("{} items pending out of {KEYS}", q.len()));
        }
        let step = &script[n % script.len()];
        for _ in 0..step.yields {
            tokio::task::yield_now().await;
        }
        if step.add_again && seen.added_again[usize::from(k)].fetch_add(1, Ordering::SeqCst) < 3 {
            seen.announce_add(k);
            q.add(k);
        }
        seen.processing.lock().unwrap().remove(&k);
        if step.fail && q.num_requeues(&k) < 3 {
            claim.retry_with_backoff();
        } else {
            claim.succeeded();
        }
    }
}

/// Waits until nothing is pending, delayed or in flight.
async fn wait_until_idle(q: &WorkQueue<u8>) -> bool {
    let give_up = Instant::now() + PATIENCE;
    while Instant::now() < give_up {
        {
            let state = q.shared.lock();
            if state.pending.is_empty() && state.delayed.is_empty() && state.in_flight.is_empty() {
                return true;
            }
        }
        tokio::time::sleep(ms(1)).await;
    }
    false
}

fn run_concurrently(
    producers: Vec<Vec<ProducerAction>>,
    workers: Vec<Vec<WorkerStep>>,
    shutdown_after_yields: Option<u16>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seen = Arc::new(Observations::new());
    let q = WorkQueue::with_backoff("proptest", Backoff::new(ms(1), ms(4)));
    runtime.block_on(async {
        let producer_tasks: Vec<_> =
            producers.into_iter().map(|actions| tokio::spawn(produce(q.clone(), actions, Arc::clone(&seen)))).collect();
        let worker_tasks: Vec<_> =
            workers.into_iter().map(|script| tokio::spawn(work(q.clone(), script, Arc::clone(&seen)))).collect();
        let stop = |q: WorkQueue<u8>, seen: Arc<Observations>| async move {
            timeout(PATIENCE, q.shutdown_and_wait()).await.expect("shutdown_and_wait hung");
            if !seen.processing.lock().unwrap().is_empty() {
                seen.violation("shutdown_and_wait returned while items were processed".to_owned());
            }
            seen.shutdown_returned.store(true, Ordering::SeqCst);
        };
        let stopper = shutdown_after_yields.map(|yields| {
            let (q, seen) = (q.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                stop(q, seen).await;
            })
        });
        for task in producer_tasks {
            task.await.unwrap();
        }
        match stopper {
            Some(stopper) => stopper.await.unwrap(),
            None => {
                if !wait_until_idle(&q).await {
                    seen.violation("the queue never became idle".to_owned());
                }
                stop(q.clone(), Arc::clone(&seen)).await;
            }
        }
        for task in worker_tasks {
            timeout(PATIENCE, task).await.expect("a worker did not stop after shutdown").unwrap();
        }
    });
    let violations = seen.violations.lock().unwrap();
    prop_assert!(violations.is_empty(), "{:?}", *violations);
    prop_assert_eq!(q.in_flight(), 0);
    prop_assert!(q.is_empty());
    if shutdown_after_yields.is_none() {
        for k in 0..usize::from(KEYS) {
            let added = seen.generation[k].load(Ordering::SeqCst);
            let processed = seen.seen_generation[k].load(Ordering::SeqCst);
            prop_assert!(
                processed >= added,
                "item {}: add #{} was never processed (last seen #{})",
                k,
                added,
                processed
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_time: 30_000, ..ProptestConfig::default() })]

    /// Producers, workers and a shutdown racing on two threads: no item is processed by two
    /// workers at once, nothing is pending twice, nothing is handed out after shutdown returned,
    /// `shutdown_and_wait` waits for in-flight work, and (without a shutdown) every add is seen
    /// by a processing that started after it.
    #[test]
    fn concurrent_workers_follow_the_rules(
        producers in prop::collection::vec(prop::collection::vec(producer_action(), 0..40), 1..3),
        workers in prop::collection::vec(prop::collection::vec(worker_step(), 1..5), 1..4),
        shutdown_after_yields in prop::option::weighted(0.4, 0..200u16),
    ) {
        run_concurrently(producers, workers, shutdown_after_yields)?;
    }
}

#[test]
fn a_queue_tells_its_name_and_backoff_and_shows_its_state() {
    let backoff = Backoff::new(ms(7), ms(70));
    let queue: WorkQueue<&'static str> = WorkQueue::with_backoff("named-queue", backoff);
    assert_eq!(queue.name(), "named-queue");
    assert_eq!(queue.backoff(), backoff);
    assert_ne!(WorkQueue::<&'static str>::new("default-backoff").backoff(), backoff);
    queue.add("a");
    let shown = format!("{queue:?}");
    assert!(shown.contains("named-queue") && shown.contains("pending: 1"), "{shown}");
    assert!(!queue.is_empty());
    assert!(!queue.is_shut_down());
}

#[tokio::test]
async fn a_rate_limited_add_without_backoff_wakes_a_waiting_worker_and_a_claim_shows_what_it_holds() {
    let queue: WorkQueue<&'static str> =
        WorkQueue::with_backoff("no-backoff", Backoff::new(Duration::ZERO, Duration::ZERO));
    let worker = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.get().await.map(|claim| format!("{claim:?}")) })
    };
    let_others_run().await;
    assert_eq!(queue.add_rate_limited("now"), Duration::ZERO);
    let shown = timeout(Duration::from_secs(5), worker).await.expect("the waiting worker was not woken").unwrap();
    let shown = shown.unwrap();
    assert!(shown.contains("now") && shown.contains(queue.name()), "{shown}");
}
