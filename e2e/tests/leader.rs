//! The allocator's Lease-based leader election (`purelb::leader`) against the API emulator, with
//! short timings (2 s lease, 500 ms renewals): one leader out of two, takeover after a crash,
//! immediate handover on graceful release, a leader cut off from the API stepping down before
//! the standby takes over, and election disabled. A sampler reads every replica's
//! `is_leader()` every 20 ms for the whole test and fails it if two ever say yes at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use purelb::{
    api::contract::ALLOCATOR_LEASE_NAME,
    k8s_openapi::api::coordination::v1::Lease,
    kube::Api,
    leader::{LeaderConfig, LeaderElector, LeaderError, Leadership},
};
use purelb_e2e::apiserver::{Emulator, EmulatorOptions, FailMode, FaultRequest};
use tokio::{
    sync::oneshot,
    task::JoinHandle,
    time::{Instant, sleep, timeout},
};

const NAMESPACE: &str = "default";
const LEASE: Duration = Duration::from_secs(2);
const RENEW: Duration = Duration::from_millis(500);

fn config() -> LeaderConfig {
    LeaderConfig::new(LEASE, RENEW)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn emulator() -> Emulator {
    init_tracing();
    Emulator::start(EmulatorOptions { bookmark_interval: Duration::from_millis(200), ..EmulatorOptions::default() })
        .unwrap()
}

/// One allocator replica: an elector with its own client (bearer token = its name, so the
/// emulator can cut it off alone).
struct Replica {
    name: &'static str,
    leadership: Leadership,
    elector: Option<LeaderElector>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), LeaderError>>>,
}

impl Replica {
    fn new(emulator: &Emulator, name: &'static str) -> Self {
        let elector =
            LeaderElector::new(emulator.client(Some(name)), NAMESPACE, ALLOCATOR_LEASE_NAME, name, config()).unwrap();
        Self { name, leadership: elector.leadership(), elector: Some(elector), stop: None, task: None }
    }

    fn start(&mut self) {
        let elector = self.elector.take().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        })));
    }

    /// Graceful shutdown: signal, then wait for the release.
    async fn shutdown(&mut self) -> Result<(), LeaderError> {
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(10), self.task.take().unwrap()).await.expect("release within 10 s").unwrap()
    }

    /// A crash: the task is aborted, nothing is released.
    async fn kill(&mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    }

    /// Waits until the published state is `leader`; returns when that happened.
    async fn wait_for(&self, leader: bool, within: Duration) -> Instant {
        let mut l = self.leadership.clone();
        timeout(within, l.wait_for(leader))
            .await
            .unwrap_or_else(|_| panic!("{}: not leader={leader} within {within:?}", self.name));
        Instant::now()
    }
}

/// One sample: when, and `is_leader()` of each replica.
type Sample = (Instant, Vec<bool>);

/// Samples `is_leader()` of every replica every 20 ms.
struct Sampler {
    names: Vec<&'static str>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    fn start(replicas: &[&Replica]) -> Self {
        let handles: Vec<Leadership> = replicas.iter().map(|r| r.leadership.clone()).collect();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let row: Vec<bool> = handles.iter().map(Leadership::is_leader).collect();
                sink.lock().unwrap().push((Instant::now(), row));
                sleep(Duration::from_millis(20)).await;
            }
        });
        Self { names: replicas.iter().map(|r| r.name).collect(), samples, task }
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| *n == name).unwrap()
    }

    /// Stops sampling and fails if two replicas were ever leader in the same sample.
    fn finish(self) -> Vec<Sample> {
        self.task.abort();
        let samples = self.samples.lock().unwrap().clone();
        assert!(samples.len() > 10, "the sampler ran ({} samples)", samples.len());
        for (at, row) in &samples {
            let leaders: Vec<_> = self.names.iter().zip(row).filter(|(_, l)| **l).map(|(n, _)| *n).collect();
            assert!(leaders.len() <= 1, "two leaders at once at {at:?}: {leaders:?}");
        }
        samples
    }

    /// The first sample at or after `since` in which `name` was leader.
    fn first_leader(&self, samples: &[Sample], name: &str, since: Instant) -> Option<Instant> {
        let i = self.index(name);
        samples.iter().find(|(at, row)| *at >= since && row[i]).map(|(at, _)| *at)
    }

    /// The last sample before `before` in which `name` was leader.
    fn last_leader(&self, samples: &[Sample], name: &str, before: Instant) -> Option<Instant> {
        let i = self.index(name);
        samples.iter().rev().find(|(at, row)| *at < before && row[i]).map(|(at, _)| *at)
    }
}

async fn lease(emulator: &Emulator) -> Lease {
    Api::<Lease>::namespaced(emulator.client(None), NAMESPACE).get(ALLOCATOR_LEASE_NAME).await.unwrap()
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

/// Starts `a` and `b` (in this order) and waits until one leads; returns (leader, standby).
async fn elect<'r>(a: &'r mut Replica, b: &'r mut Replica) -> (&'r mut Replica, &'r mut Replica) {
    a.start();
    a.wait_for(true, Duration::from_secs(10)).await;
    b.start();
    // Let the standby see the Lease and a couple of renewals.
    sleep(RENEW * 2).await;
    assert!(a.leadership.is_leader(), "the first replica keeps the Lease");
    assert!(!b.leadership.is_leader(), "the second replica is standby");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_becomes_leader_never_both() {
    let emulator = emulator();
    let mut a = Replica::new(&emulator, "allocator-a");
    let mut b = Replica::new(&emulator, "allocator-b");
    let sampler = Sampler::start(&[&a, &b]);
    let started = Instant::now();
    a.start();
    b.start();

    // One of them wins quickly.
    let (mut rx_a, mut rx_b) = (a.leadership.clone(), b.leadership.clone());
    timeout(Duration::from_secs(10), async {
        tokio::select! {
            () = rx_a.wait_for(true) => {},
            () = rx_b.wait_for(true) => {},
        }
    })
    .await
    .expect("a leader within 10 s");
    let elected_after = started.elapsed();

    // Several lease durations of steady state: the leader keeps the Lease, the other waits.
    sleep(LEASE * 2).await;
    let (leader, standby) = if a.leadership.is_leader() { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert!(leader.leadership.is_leader() && leader.leadership.published());
    assert!(!standby.leadership.is_leader() && !standby.leadership.published());
    assert!(leader.leadership.guard().is_some() && standby.leadership.guard().is_none());

    let held = lease(&emulator).await;
    let spec = held.spec.clone().unwrap();
    let labels = held.metadata.labels.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(leader.name));
    assert_eq!(spec.lease_duration_seconds, Some(2));
    assert_eq!(spec.lease_transitions, Some(0), "a healthy leader never lost the Lease");
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    assert!(spec.renew_time.unwrap().0 > spec.acquire_time.unwrap().0, "renewed since acquired");
    assert_eq!(labels["app.kubernetes.io/name"], "purelb");
    assert_eq!(labels["app.kubernetes.io/component"], "allocator");
    let managers: Vec<_> =
        held.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect::<Vec<_>>();
    assert!(managers.is_empty() || managers.iter().all(|m| m == "purelb-allocator"), "{managers:?}");

    standby.shutdown().await.unwrap();
    leader.shutdown().await.unwrap();
    sampler.finish();
    eprintln!("leader elected after {elected_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_about_one_lease_after_the_leader_crashes() {
    let emulator = emulator();
    let mut a = Replica::new(&emulator, "allocator-a");
    let mut b = Replica::new(&emulator, "allocator-b");
    let sampler = Sampler::start(&[&a, &b]);
    let (leader, standby) = elect(&mut a, &mut b).await;

    leader.kill().await;
    let crashed = Instant::now();
    assert!(!leader.leadership.is_leader(), "an aborted elector stops claiming leadership");
    let took_over = standby.wait_for(true, LEASE * 5).await;
    let takeover = took_over - crashed;
    assert!(takeover >= LEASE / 2 && takeover <= LEASE * 3, "takeover after a crash took {takeover:?}");
    assert_eq!(holder(&lease(&emulator).await).as_deref(), Some(standby.name));
    assert_eq!(lease(&emulator).await.spec.unwrap().lease_transitions, Some(1));
    // Fencing by time (issue 16 §3): the crashed leader's last writes may still land.
    let fence = standby.leadership.fenced_until().expect("a takeover from a crashed holder is fenced");
    let left = fence.saturating_duration_since(Instant::now());
    assert!(left > Duration::ZERO && left <= config().write_timeout, "fence {left:?}");
    sleep(left + Duration::from_millis(10)).await;
    assert!(standby.leadership.fenced_until().is_none(), "the fence ends");

    // The new leader keeps it.
    sleep(LEASE).await;
    assert!(standby.leadership.is_leader());
    standby.shutdown().await.unwrap();
    sampler.finish();
    eprintln!("takeover after crash: {takeover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_release_hands_over_at_once() {
    let emulator = emulator();
    let mut a = Replica::new(&emulator, "allocator-a");
    let mut b = Replica::new(&emulator, "allocator-b");
    let mut c = Replica::new(&emulator, "allocator-c");
    let sampler = Sampler::start(&[&a, &b, &c]);
    let (leader, standby) = elect(&mut a, &mut b).await;

    // Plain release: the standby takes over as soon as it sees the released Lease.
    let signalled = Instant::now();
    leader.shutdown().await.unwrap();
    let took_over = standby.wait_for(true, LEASE * 3).await;
    let handover = took_over - signalled;
    assert!(handover < Duration::from_secs(1), "handover after release took {handover:?}");
    assert!(standby.leadership.fenced_until().is_none(), "a released Lease needs no fence");
    let lease = lease(&emulator).await;
    assert_eq!(holder(&lease).as_deref(), Some(standby.name));
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));

    // A write in flight when the shutdown begins finishes before the Lease is released.
    let (leader, standby) = (standby, &mut c);
    standby.start();
    sleep(RENEW * 2).await;
    assert!(leader.leadership.is_leader() && !standby.leadership.is_leader());
    let guard = leader.leadership.guard().unwrap();
    let _ = leader.stop.take().unwrap().send(());
    let task = leader.task.take().unwrap();
    leader.wait_for(false, Duration::from_secs(1)).await;
    assert!(!leader.leadership.is_leader() && leader.leadership.guard().is_none(), "no new writes once stopping");
    sleep(Duration::from_millis(100)).await;
    assert!(!standby.leadership.is_leader(), "the release waits for the in-flight write");
    assert_eq!(holder(&self::lease(&emulator).await).as_deref(), Some(leader.name));
    let write_done = Instant::now();
    drop(guard);
    timeout(Duration::from_secs(5), task).await.unwrap().unwrap().unwrap();
    let took_over = standby.wait_for(true, LEASE * 3).await;
    let after_write = took_over - write_done;
    assert!(after_write < Duration::from_secs(1), "handover after the in-flight write took {after_write:?}");
    assert_eq!(holder(&self::lease(&emulator).await).as_deref(), Some(standby.name));

    standby.shutdown().await.unwrap();
    let released = self::lease(&emulator).await.spec.unwrap();
    assert_eq!(released.holder_identity, None, "the last leader released too");
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.lease_transitions, Some(2));
    sampler.finish();
    eprintln!("handover after release: {handover:?}; after a guarded in-flight write ended: {after_write:?}");
}

async fn cut_off(mode: FailMode) {
    let emulator = emulator();
    let mut a = Replica::new(&emulator, "allocator-a");
    let mut b = Replica::new(&emulator, "allocator-b");
    let sampler = Sampler::start(&[&a, &b]);
    let (leader, standby) = elect(&mut a, &mut b).await;

    emulator.faults().apply(FaultRequest::CutClient { token: leader.name.to_owned(), mode, seconds: None });
    let cut = Instant::now();
    let stepped_down = leader.wait_for(false, LEASE * 3).await;
    let took_over = standby.wait_for(true, LEASE * 5).await;
    assert!(!leader.leadership.is_leader(), "the cut-off leader is not leader once the standby is");

    // Let the sampler see the new leader.
    sleep(Duration::from_millis(200)).await;
    let samples = sampler.samples.lock().unwrap().clone();
    let last_old = sampler.last_leader(&samples, leader.name, took_over).expect("the old leader was sampled leading");
    let first_new = sampler.first_leader(&samples, standby.name, cut).expect("the new leader was sampled leading");
    assert!(last_old < first_new, "the old leader stopped before the new one started");
    // The old leader's last "yes" is before (last renewal sent) + lease − margin; the standby's
    // first is after (when it saw that renewal, later still) + lease + slack.
    let gap = first_new - last_old;
    let margin = config().safety_margin;
    assert!(gap > margin, "leadership gap {gap:?} is more than the safety margin {margin:?}");

    // `is_leader()` is exact: the last renewal that succeeded was sent before the cut, so the
    // old leader's last "yes" comes before cut + lease − margin, however late the sampler ran.
    assert!(last_old < cut + (LEASE - margin), "the cut-off leader still led {:?} after the cut", last_old - cut);
    let step_down = stepped_down - cut;
    assert!(step_down < LEASE, "the cut-off leader published its step-down {step_down:?} after the cut");
    let takeover = took_over - cut;
    assert!(takeover >= LEASE / 2 && takeover <= LEASE * 3, "takeover after cut-off took {takeover:?}");
    assert_eq!(holder(&lease(&emulator).await).as_deref(), Some(standby.name));

    // Reconnected, the old leader finds the Lease taken and stays standby.
    emulator.faults().apply(FaultRequest::RestoreClient { token: leader.name.to_owned() });
    sleep(LEASE).await;
    assert!(!leader.leadership.is_leader());
    assert!(standby.leadership.is_leader());
    assert_eq!(holder(&lease(&emulator).await).as_deref(), Some(standby.name));

    leader.shutdown().await.unwrap();
    standby.shutdown().await.unwrap();
    sampler.finish();
    eprintln!(
        "{mode:?}: old leader stepped down {step_down:?} after the cut, standby took over {takeover:?} after \
         (gap {gap:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_with_errors_steps_down_before_the_standby_takes_over() {
    cut_off(FailMode::Unavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_with_hung_requests_steps_down_before_the_standby_takes_over() {
    cut_off(FailMode::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_elect_false_is_always_leader() {
    let mut leadership = Leadership::always();
    assert!(leadership.is_leader() && leadership.published());
    let guard = leadership.guard().expect("always allowed to write");
    assert_eq!(guard.deadline(), None);
    assert_eq!(guard.bounded(async { 42 }).await.unwrap(), 42);
    leadership.wait_for(true).await;
    sleep(LEASE).await;
    assert!(leadership.clone().is_leader(), "still leader without any Lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_with_same_identity_resumes_at_once() {
    // A container restart keeps the pod name: the new process finds the Lease held by its own
    // identity and renews it without waiting out the lease.
    let emulator = emulator();
    let mut first = Replica::new(&emulator, "allocator-a");
    first.start();
    first.wait_for(true, Duration::from_secs(10)).await;
    first.kill().await;
    let mut second = Replica::new(&emulator, "allocator-a");
    let restarted = Instant::now();
    second.start();
    let resumed = second.wait_for(true, Duration::from_secs(10)).await - restarted;
    assert!(resumed < LEASE / 2, "resumed after {resumed:?}");
    assert_eq!(lease(&emulator).await.spec.unwrap().lease_transitions, Some(0));
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused() {
    let emulator = emulator();
    let bad = LeaderConfig::new(Duration::from_secs(5), Duration::from_secs(5));
    let error = LeaderElector::new(emulator.client(None), NAMESPACE, ALLOCATOR_LEASE_NAME, "a", bad).unwrap_err();
    assert!(matches!(error, LeaderError::InvalidConfig { .. }), "{error}");
    let error = LeaderElector::new(emulator.client(None), NAMESPACE, ALLOCATOR_LEASE_NAME, "", config()).unwrap_err();
    assert!(matches!(error, LeaderError::EmptyIdentity), "{error}");
}
