//! Burst tests with a fake transmitter and real (short) time: Tokio's paused clock needs the
//! `test-util` feature, which this crate does not enable. Only lower bounds on spacing are
//! asserted, because timers never fire early but a busy machine may fire them late.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex},
};

use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use super::*;
use crate::core::announce::MacAddr;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(Instant, IpAddr)>>,
    fail: bool,
    hang: bool,
}

impl Fake {
    fn failing() -> Self {
        Self { fail: true, ..Self::default() }
    }
    fn hanging() -> Self {
        Self { hang: true, ..Self::default() }
    }
    fn times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl Transmitter for Fake {
    async fn announce(&self, link: &LinkInfo, address: IpAddr) -> Result<(), AnnounceError> {
        self.calls.lock().unwrap().push((Instant::now(), address));
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.fail {
            return Err(AnnounceError::Send {
                interface: link.name.clone(),
                address,
                packet: "ARP request",
                source: io::Error::from_raw_os_error(libc::ENETDOWN),
            });
        }
        Ok(())
    }
}

fn link() -> LinkInfo {
    LinkInfo { name: "eth0".into(), index: 2, mac: MacAddr([2, 0, 0, 0, 0, 1]), link_local: None }
}

fn v4() -> IpAddr {
    "192.0.2.240".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Timer slack: sleeps end on millisecond ticks, the fake records a moment after the scheduler.
const SLACK: Duration = Duration::from_millis(2);

fn config(count: u32, interval: u64, initial_delay: u64, refresh: Option<u64>) -> BurstConfig {
    BurstConfig { count, interval: ms(interval), initial_delay: ms(initial_delay), refresh_interval: refresh.map(ms) }
}

#[tokio::test]
async fn burst_sends_count_announcements_interval_apart() {
    let fake = Fake::default();
    let (_handle, signal) = stop_channel();
    let start = Instant::now();
    let report = run_burst(&fake, &link(), v4(), &config(3, 40, 30, None), signal).await;
    assert_eq!((report.sent, report.errors, report.stopped), (3, 0, false));
    assert!(report.last_error.is_none());
    let times = fake.times();
    assert_eq!(times.len(), 3);
    assert!(times[0] - start >= ms(30) - SLACK, "initial delay: {:?}", times[0] - start);
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= ms(40) - SLACK, "interval: {:?}", pair[1] - pair[0]);
    }
    assert!(fake.calls.lock().unwrap().iter().all(|(_, a)| *a == v4()));
}

#[tokio::test]
async fn default_config_sends_the_first_announcement_at_once() {
    let fake = Fake::default();
    let (handle, signal) = stop_channel();
    let start = Instant::now();
    let (link, config) = (link(), BurstConfig::default());
    let burst = run_burst(&fake, &link, v4(), &config, signal);
    let report = tokio::select! {
        report = burst => report,
        () = async {
            tokio::time::sleep(ms(300)).await;
            handle.stop();
            std::future::pending::<()>().await;
        } => unreachable!(),
    };
    // The default is 3 × 500 ms; stopped after 300 ms, only the first went out, at once.
    assert!(report.stopped);
    assert_eq!(report.sent, 1);
    assert!(fake.times()[0] - start < ms(250));
}

#[tokio::test]
async fn stop_before_start_sends_nothing() {
    let fake = Fake::default();
    let (handle, signal) = stop_channel();
    handle.stop();
    let report = run_burst(&fake, &link(), v4(), &config(3, 10, 0, None), signal).await;
    assert!(report.stopped);
    assert_eq!(fake.count(), 0);
}

#[tokio::test]
async fn stop_mid_burst_ends_at_once() {
    let fake = Arc::new(Fake::default());
    let handle = spawn_burst(Arc::clone(&fake), link(), v4(), config(10, 50, 0, None));
    tokio::time::sleep(ms(75)).await; // after the second announcement (0 ms, 50 ms)
    let stopped_at = Instant::now();
    let report = handle.stop_and_wait().await.unwrap();
    let ended = Instant::now();
    assert!(report.stopped);
    assert!((1..10).contains(&report.sent), "sent {}", report.sent);
    assert!(ended - stopped_at < ms(200), "stop took {:?}", ended - stopped_at);
    tokio::time::sleep(ms(120)).await;
    assert_eq!(fake.count() as u32, report.sent, "nothing after the stop");
    assert!(fake.times().iter().all(|t| *t <= stopped_at + SLACK));
}

#[tokio::test]
async fn stop_abandons_a_send_in_progress() {
    let fake = Arc::new(Fake::hanging());
    let handle = spawn_burst(Arc::clone(&fake), link(), v4(), config(3, 10, 0, None));
    tokio::time::sleep(ms(30)).await;
    assert!(!handle.is_finished(), "the send hangs");
    let report = tokio::time::timeout(ms(500), handle.stop_and_wait()).await.unwrap().unwrap();
    assert!(report.stopped);
    assert_eq!((report.sent, report.errors), (0, 0));
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_burst() {
    let fake = Arc::new(Fake::default());
    let handle = spawn_burst(Arc::clone(&fake), link(), v4(), config(10, 30, 0, Some(30)));
    tokio::time::sleep(ms(45)).await;
    drop(handle);
    tokio::time::sleep(ms(5)).await;
    let after_drop = fake.count();
    tokio::time::sleep(ms(150)).await;
    assert_eq!(fake.count(), after_drop);
    assert!(after_drop < 10);
}

#[tokio::test]
async fn refresh_keeps_announcing_until_stopped() {
    let fake = Arc::new(Fake::default());
    let handle = spawn_burst(Arc::clone(&fake), link(), v4(), config(2, 10, 0, Some(40)));
    tokio::time::sleep(ms(250)).await;
    assert!(!handle.is_finished());
    let report = handle.stop_and_wait().await.unwrap();
    assert!(report.stopped);
    // 2 in the burst (0, 10 ms), then refreshes at 50, 90, ... ms: at least 2 more by 250 ms.
    assert!(report.sent >= 4, "sent {}", report.sent);
    let times = fake.times();
    for pair in times[1..].windows(2) {
        assert!(pair[1] - pair[0] >= ms(40) - SLACK, "refresh spacing {:?}", pair[1] - pair[0]);
    }
}

#[tokio::test]
async fn failures_are_counted_and_do_not_end_the_burst() {
    let fake = Fake::failing();
    let (_handle, signal) = stop_channel();
    let report = run_burst(&fake, &link(), v4(), &config(3, 5, 0, None), signal).await;
    assert_eq!((report.sent, report.errors, report.stopped), (0, 3, false));
    assert_eq!(report.last_error.unwrap().raw_os_error(), Some(libc::ENETDOWN));
    assert_eq!(fake.count(), 3);
}

#[tokio::test]
async fn zero_count_without_refresh_sends_nothing() {
    let fake = Fake::default();
    let (_handle, signal) = stop_channel();
    let report = run_burst(&fake, &link(), v4(), &config(0, 5, 0, Some(0)), signal).await;
    assert_eq!((report.sent, report.stopped), (0, false));
    assert_eq!(fake.count(), 0);
}

#[tokio::test]
async fn zero_count_with_refresh_only_refreshes() {
    let fake = Arc::new(Fake::default());
    let start = Instant::now();
    let handle = spawn_burst(Arc::clone(&fake), link(), v4(), config(0, 5, 10, Some(30)));
    tokio::time::sleep(ms(100)).await;
    let report = handle.stop_and_wait().await.unwrap();
    assert!(report.sent >= 1);
    assert!(fake.times()[0] - start >= ms(40) - SLACK, "first refresh after delay + refresh");
}

#[test]
fn stop_signals_follow_their_handle() {
    let (handle, signal) = stop_channel();
    let second = handle.signal();
    let third = signal.clone();
    assert!(!signal.is_stopped() && !handle.is_stopped());
    handle.stop();
    handle.stop();
    assert!(signal.is_stopped() && second.is_stopped() && third.is_stopped() && handle.is_stopped());
    let (handle, signal) = stop_channel();
    drop(handle);
    assert!(signal.is_stopped(), "a dropped handle means stop");
}

#[test]
fn config_from_spec() {
    let spec = GarpSpec::default();
    assert_eq!(BurstConfig::from_spec(&spec).unwrap(), Some(BurstConfig::default()));
    let disabled = GarpSpec { enabled: false, ..GarpSpec::default() };
    assert_eq!(BurstConfig::from_spec(&disabled).unwrap(), None);
    let custom = GarpSpec {
        count: 5,
        interval: "250ms".into(),
        initial_delay: "1s".into(),
        refresh_interval: "1m".into(),
        ..GarpSpec::default()
    };
    assert_eq!(
        BurstConfig::from_spec(&custom).unwrap(),
        Some(BurstConfig {
            count: 5,
            interval: ms(250),
            initial_delay: Duration::from_secs(1),
            refresh_interval: Some(Duration::from_secs(60))
        })
    );
    for count in [0, 11] {
        let bad = GarpSpec { count, ..GarpSpec::default() };
        assert_eq!(BurstConfig::from_spec(&bad), Err(BurstConfigError::Count { count }));
    }
    let bad = GarpSpec { interval: "soon".into(), ..GarpSpec::default() };
    let error = BurstConfig::from_spec(&bad).unwrap_err();
    assert!(matches!(error, BurstConfigError::Duration { field: "interval", .. }));
    assert!(error.to_string().starts_with("garp.interval: \"soon\""), "{error}");
}

/// Counts counter increments by `name{label=value,...}`.
#[derive(Default)]
struct CountingRecorder {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

struct CounterHandle {
    key: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CounterFn for CounterHandle {
    fn increment(&self, value: u64) {
        *self.counts.lock().unwrap().entry(self.key.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.counts.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let key = format!("{}{{{}}}", key.name(), labels.join(","));
        Counter::from_arc(Arc::new(CounterHandle { key, counts: Arc::clone(&self.counts) }))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn metrics_count_announcements_by_family_and_errors() {
    let recorder = CountingRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let (_handle, signal) = stop_channel();
            run_burst(&Fake::default(), &link(), v4(), &config(3, 1, 0, None), signal.clone()).await;
            run_burst(
                &Fake::default(),
                &link(),
                "2001:db8::f0".parse().unwrap(),
                &config(2, 1, 0, None),
                signal.clone(),
            )
            .await;
            run_burst(&Fake::failing(), &link(), v4(), &config(2, 1, 0, None), signal).await;
        });
    });
    let counts = recorder.counts.lock().unwrap().clone();
    assert_eq!(counts.get("purelb_garp_sent_total{family=IPv4}"), Some(&3));
    assert_eq!(counts.get("purelb_garp_sent_total{family=IPv6}"), Some(&2));
    assert_eq!(counts.get("purelb_garp_errors_total{}"), Some(&2));
}
