//! Burst: 5,000 Services created at once are all allocated by the real allocator controller
//! over HTTP against the emulator, with no duplicate address; compared with the emulator's raw
//! write throughput (status patches of the same Services by one client, same transport),
//! measured in the same run.
//!
//! Run: `cargo bench -p purelb-e2e --bench allocator_burst` (`BURST=n` to change the count,
//! `BURST_RUNS` the number of runs, 5: each in a fresh emulator; the ratios are reported as the
//! median and the spread of the runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss)]

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use purelb::{
    allocator::controller::{self, Settings, WriteGate},
    api::ServiceGroup,
    k8s_openapi::{
        api::core::v1::{Namespace, Service},
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    },
    kube::{
        Api, Client, CustomResourceExt,
        api::{Patch, PatchParams, PostParams},
    },
    telemetry::Readiness,
};
use purelb_e2e::apiserver::{Emulator, EmulatorOptions};
use serde_json::json;

/// The `purelb` binary's allocator: the allocator controller runs in this process, and its cost
/// per Service depends on the heap it allocates from (docs/scale.md, "The memory allocator").
#[global_allocator]
static ALLOCATOR: purelb::GlobalAllocator = purelb::GlobalAllocator;

async fn http_client(emulator: &Emulator) -> (purelb_e2e::apiserver::HttpServer, Client) {
    let server = emulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("purelb-burst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    purelb_e2e::apiserver::write_kubeconfig(&path, &server.url(), None, "default").unwrap();
    let kc = purelb::kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = purelb::kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (server, Client::try_from(config).unwrap())
}

/// Creates `n` LoadBalancer Services; `class` set keeps them away from PureLB (the raw
/// measurement's Services must not become work for the allocator).
async fn create_services(client: &Client, ns: &str, n: usize, class: Option<&str>) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "LoadBalancer", "loadBalancerClass": class, "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}})).unwrap();
                api.create(&PostParams::default(), &svc).await.unwrap();
            }
        })
        .await;
}

/// One run's figures.
struct Run {
    raw_rate: f64,
    rate: f64,
    synced: Duration,
    /// The allocator's writes (Service patches, status patches, Events) per Service.
    writes_per_service: f64,
    /// Restart adoption of the n Services ([`restart`]).
    adoption: Duration,
    /// Addresses the restarted allocator changed.
    changed: usize,
    /// The `purelb allocator` process ([`process_adoption`]).
    process: Process,
}

/// The real `purelb allocator` process adopting the allocated Services.
struct Process {
    adoption: Duration,
    /// Its resident set after the adoption and its peak (`VmHWM`), MiB.
    rss: f64,
    peak: f64,
    /// Addresses it changed.
    changed: usize,
}

/// Starts the real allocator controller as the leader (`instance` names it); it runs until the
/// returned sender is used or dropped.
fn start_allocator(
    client: &Client,
    instance: &str,
    readiness: Readiness,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let settings = Settings {
        namespace: "purelb-system".into(),
        lb_class: "purelb.io/purelbv2".into(),
        default_announcer: true,
        instance: instance.into(),
        api_timeout: Duration::from_secs(30),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let client = client.clone();
    let task = tokio::spawn(async move {
        controller::run(client, settings, WriteGate::always(), readiness, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (tx, task)
}

/// One run in a fresh emulator: the raw write rate, then the burst.
async fn one_run(n: usize) -> Run {
    let emulator = Emulator::start(EmulatorOptions::default()).unwrap();
    let (server, client) = http_client(&emulator).await;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &ServiceGroup::crd())
        .await
        .unwrap();
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for ns in ["purelb-system", "raw", "burst"] {
        nsapi
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await
            .unwrap();
    }
    let sg: ServiceGroup = serde_json::from_value(json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup", "metadata": {"name": "default"},
        "spec": {"remote": {"v6pool": {"pool": "2001:db8::/112", "subnet": "2001:db8::/64"}, "v4pool": {"pool": "198.51.100.0/24", "subnet": "198.51.100.0/24"}}}})).unwrap();
    Api::<ServiceGroup>::namespaced(client.clone(), "purelb-system").create(&PostParams::default(), &sg).await.unwrap();

    // Raw write throughput: one client patching the status of n Services, one at a time.
    create_services(&client, "raw", n, Some("bench.example/not-purelb")).await;
    let raw_api: Api<Service> = Api::namespaced(client.clone(), "raw");
    let cpu_before = process_cpu();
    let start = Instant::now();
    for i in 0..n {
        let body = json!({"status": {"loadBalancer": {"ingress": [{"ip": format!("2001:db8:1::{i:x}")}]}}});
        raw_api.patch_status(&format!("s{i}"), &PatchParams::default(), &Patch::Merge(&body)).await.unwrap();
    }
    let raw = start.elapsed();
    let raw_rate = n as f64 / raw.as_secs_f64();
    let raw_cores = (process_cpu() - cpu_before).as_secs_f64() / raw.as_secs_f64();

    // The burst: n Services exist, the allocator starts and allocates them all.
    create_services(&client, "burst", n, None).await;
    let status_writes_before = emulator.requests("patch", "services/status");
    let (lists_before, watches_before) =
        (emulator.requests("list", "services"), emulator.requests("watch", "services"));
    let cpu_before = process_cpu();
    let readiness = Readiness::new();
    let ready_flag = readiness.clone();
    let start = Instant::now();
    let ready_watch = tokio::spawn(async move {
        while !ready_flag.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    });
    let (tx, task) = start_allocator(&client, "bench", readiness);
    // Completion is read from the emulator directly, so observing costs the server almost
    // nothing (an HTTP watch would add its own fan-out and decoding to the measurement). The
    // emulator's request counter is polled (cheap); the store is listed only once it says n
    // status writes have arrived: listing n Services every 20 ms held the store's lock against
    // the allocator's writes, and its cost grew with n (one source of the run-to-run spread).
    let elapsed = loop {
        if emulator.requests("patch", "services/status") - status_writes_before < n as u64 {
            assert!(start.elapsed() < Duration::from_secs(600), "not allocated after 10 minutes");
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let objects = emulator.objects("", "services", Some("burst"));
        let done: Vec<&serde_json::Value> = objects
            .iter()
            .map(AsRef::as_ref)
            .filter(|o| o["status"]["loadBalancer"]["ingress"].as_array().is_some_and(|i| !i.is_empty()))
            .collect();
        if done.len() == n {
            let elapsed = start.elapsed();
            let mut seen = HashSet::new();
            for o in done {
                for i in o["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten() {
                    assert!(seen.insert(i["ip"].to_string()), "duplicate address {}", i["ip"]);
                }
            }
            break elapsed;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "only {}/{n} allocated after 10 minutes", done.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let burst_cores = (process_cpu() - cpu_before).as_secs_f64() / elapsed.as_secs_f64();
    let lists = emulator.requests("list", "services") - lists_before;
    let watches = emulator.requests("watch", "services") - watches_before;
    let synced = ready_watch.await.unwrap();
    let rate = n as f64 / elapsed.as_secs_f64();
    let writes = emulator.requests("patch", "services") + emulator.requests("patch", "services/status")
        - status_writes_before
        + emulator.requests("create", "events");
    println!(
        "raw {raw_rate:.0} writes/s ({raw_cores:.2} cores busy, {:.0} µs of CPU per write); burst: {burst_cores:.2} cores busy, {:.0} µs of CPU per Service; allocator: caches synced after {:.2} s, {n} Services (no duplicates) in {:.2} s = {rate:.0} Services/s = {:.0}% of raw; {:.2} writes per Service, {} of them answered 409 Conflict; Service lists {lists}, watches {watches}",
        1e6 * raw_cores / raw_rate,
        1e6 * burst_cores / rate,
        synced.as_secs_f64(),
        elapsed.as_secs_f64(),
        100.0 * rate / raw_rate,
        writes as f64 / n as f64,
        emulator.conflicts(),
    );
    let _ = tx.send(());
    let _ = task.await;
    let (adoption, changed) = restart(&emulator, &client, n).await;
    let process = process_adoption(&emulator, &client, &server.url(), n).await;
    Run { raw_rate, rate, synced, writes_per_service: writes as f64 / n as f64, adoption, changed, process }
}

/// Every burst Service's addresses, by name.
fn addresses(emulator: &Emulator) -> BTreeMap<String, String> {
    emulator
        .objects("", "services", Some("burst"))
        .iter()
        .map(|o| (o["metadata"]["name"].to_string(), o["status"]["loadBalancer"]["ingress"].to_string()))
        .collect()
}

/// Creates the IPv6 LoadBalancer Service `name` in "burst" (a probe: the newest Service).
async fn create_probe(api: &Api<Service>, name: &str) {
    let probe: Service = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}})).unwrap();
    api.create(&PostParams::default(), &probe).await.unwrap();
}

/// Whether Service `name` has an address in its status.
async fn has_address(api: &Api<Service>, name: &str) -> bool {
    let svc = api.get_status(name).await.unwrap();
    svc.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).is_some_and(|i| !i.is_empty())
}

/// After a second for a late write to land: how many of the `before` addresses changed.
async fn changed_since(emulator: &Emulator, before: &BTreeMap<String, String>) -> usize {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = addresses(emulator);
    before.iter().filter(|(name, ingress)| after.get(*name) != Some(ingress)).count()
}

/// Restart adoption: with the n Services allocated and the allocator stopped, one more Service
/// (the newest: the last the rebuilt table queues) is created and a new allocator started. The
/// adoption time is from its start until that Service has its address: the allocator has then
/// listed every Service, rebuilt its table and gone through every Service before it. Returns
/// that time and how many of the n Services' addresses changed.
async fn restart(emulator: &Emulator, client: &Client, n: usize) -> (Duration, usize) {
    let before = addresses(emulator);
    let api: Api<Service> = Api::namespaced(client.clone(), "burst");
    create_probe(&api, "zz-probe").await;
    let status_writes_before = emulator.requests("patch", "services/status");
    let start = Instant::now();
    let (tx, task) = start_allocator(client, "bench-restarted", Readiness::new());
    let adoption = loop {
        if emulator.requests("patch", "services/status") > status_writes_before && has_address(&api, "zz-probe").await {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(600), "the probe Service has no address after 10 minutes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let changed = changed_since(emulator, &before).await;
    println!(
        "burst: {n} Services: restart: the new allocator adopted {n} Services in {:.2} s (start → the newest Service has its address); {changed} addresses changed",
        adoption.as_secs_f64()
    );
    let _ = tx.send(());
    let _ = task.await;
    (adoption, changed)
}

/// The release `purelb` binary's allocator (leader election on, as deployed) started against
/// the emulator once the n Services (and the restart's probe) are allocated, with one more new
/// Service: its adoption time (start → that Service has its address) and its memory then, the
/// figure a memory limit must allow for (the chart's default limit is 512 MiB). The Services of
/// the raw phase are in its cache too (another class, as a cluster's other Services are).
async fn process_adoption(emulator: &Emulator, client: &Client, url: &str, n: usize) -> Process {
    let binary = purelb_e2e::lab::built_binary("purelb", &["release"])
        .expect("the release purelb binary is missing: build it with `cargo build --release -p purelb --bin purelb`");
    let dir = std::env::temp_dir().join(format!("purelb-burst-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    purelb_e2e::apiserver::write_kubeconfig(&kubeconfig, url, None, "default").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let before = addresses(emulator);
    let api: Api<Service> = Api::namespaced(client.clone(), "burst");
    create_probe(&api, "zz-probe-process").await;
    let log = dir.join("allocator.log");
    let start = Instant::now();
    let mut command = tokio::process::Command::new(&binary);
    // Only the arguments below configure it, not this process's environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PURELB_") || key == "KUBECONFIG" {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(["allocator", "--namespace", "purelb-system", "--log-level", "warn", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let pid = child.id().unwrap();
    let adoption = loop {
        if has_address(&api, "zz-probe-process").await {
            break start.elapsed();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("purelb allocator exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(start.elapsed() < Duration::from_secs(600), "the allocator process did not allocate after 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let changed = changed_since(emulator, &before).await;
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "purelb allocator exited before its memory was read ({status}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let (rss, peak) =
        (purelb_e2e::lab::scale::memory_mib(pid, "VmRSS"), purelb_e2e::lab::scale::memory_mib(pid, "VmHWM"));
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "burst: {n} Services: the purelb allocator process (release binary) adopted them in {:.2} s; RSS {rss:.1} MiB, peak {peak:.1} MiB; {changed} addresses changed",
        adoption.as_secs_f64()
    );
    Process { adoption, rss, peak, changed }
}

/// CPU time (user and system, every thread) of this process so far.
fn process_cpu() -> Duration {
    purelb_e2e::lab::scale::cpu_time(std::process::id())
}

/// Median, min and max.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BURST")
        .unwrap_or_else(|_| "5000,50000".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if let Some(n) = std::env::var("BURST_ONE_RUN").ok().and_then(|v| v.parse().ok()) {
        // A run in a process of its own (see below): the figures for the parent on one line.
        let run = one_run(n).await;
        println!(
            "burst-run: {} {} {} {} {} {} {} {} {} {}",
            run.raw_rate,
            run.rate,
            run.synced.as_secs_f64(),
            run.writes_per_service,
            run.adoption.as_secs_f64(),
            run.changed,
            run.process.adoption.as_secs_f64(),
            run.process.rss,
            run.process.peak,
            run.process.changed,
        );
        return;
    }
    let runs: usize = std::env::var("BURST_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    for n in sizes {
        let mut all = Vec::new();
        for run in 1..=runs {
            print!("burst: {n} Services, run {run}: ");
            all.push(run_in_own_process(n));
        }
        summarize(n, &all);
    }
}

/// One run in a new process of this bench. Runs in one process were not independent: the raw
/// rate fell from run to run (5,872 → 4,799 → 4,327 → 3,715 writes/s at 50,000 Services, each
/// run with a fresh emulator, as the process's heap grew), and with it the ratio rose (36 % →
/// 57 %): the spread was the bench's, not the allocator's.
fn run_in_own_process(n: usize) -> Run {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg("--bench")
        .env("BURST_ONE_RUN", n.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the run failed ({}):\n{text}", out.status);
    let mut run = None;
    for line in text.lines() {
        match line.strip_prefix("burst-run: ") {
            Some(figures) => {
                let f: Vec<&str> = figures.split(' ').collect();
                let x = |i: usize| -> f64 { f[i].parse().unwrap() };
                run = Some(Run {
                    raw_rate: x(0),
                    rate: x(1),
                    synced: Duration::from_secs_f64(x(2)),
                    writes_per_service: x(3),
                    adoption: Duration::from_secs_f64(x(4)),
                    changed: f[5].parse().unwrap(),
                    process: Process {
                        adoption: Duration::from_secs_f64(x(6)),
                        rss: x(7),
                        peak: x(8),
                        changed: f[9].parse().unwrap(),
                    },
                });
            }
            None => println!("{line}"),
        }
    }
    run.expect("the run printed no figures")
}

/// The median and spread of the runs at one size, with the targets: the ratio to the raw rate
/// ≥ 50 % at 5,000 Services (allocator issue), ≥ 80 % from 50,000 on (scale issue); adoption
/// ≤ 10 s in every run, no address changed.
fn summarize(n: usize, all: &[Run]) {
    let runs = all.len();
    let (raw, raw_min, raw_max) = spread(all.iter().map(|r| r.raw_rate).collect());
    println!(
        "burst: emulator raw write throughput at {n} Services over {runs} runs: median {raw:.0} writes/s (min {raw_min:.0}, max {raw_max:.0})"
    );
    let (synced, synced_min, synced_max) = spread(all.iter().map(|r| r.synced.as_secs_f64()).collect());
    println!(
        "burst: allocator caches synced (initial list of {n} Services): median {synced:.2} s (min {synced_min:.2}, max {synced_max:.2})"
    );
    let (rate, rate_min, rate_max) = spread(all.iter().map(|r| r.rate).collect());
    let (writes, _, writes_max) = spread(all.iter().map(|r| r.writes_per_service).collect());
    let (ratio, ratio_min, ratio_max) = spread(all.iter().map(|r| 100.0 * r.rate / r.raw_rate).collect());
    let target = if n >= 50_000 { 80.0 } else { 50.0 };
    println!(
        "burst: allocator allocated {n} Services (no duplicates) over {runs} runs: median {rate:.0} Services/s (min {rate_min:.0}, max {rate_max:.0}); \
         ratio to the same run's raw write rate: median {ratio:.0}% (min {ratio_min:.0}%, max {ratio_max:.0}%; target >= {target:.0}%: {}); \
         {writes:.2} writes per Service (max {writes_max:.2})",
        if ratio >= target { "met" } else { "MISSED" }
    );
    let (adoption, adoption_min, adoption_max) = spread(all.iter().map(|r| r.adoption.as_secs_f64()).collect());
    let changed: usize = all.iter().map(|r| r.changed).sum();
    println!(
        "burst: restart adoption of {n} Services over {runs} runs: median {adoption:.2} s (min {adoption_min:.2}, max {adoption_max:.2}; target <= 10 s: {}); addresses changed: {changed} (target 0: {})",
        if adoption_max <= 10.0 { "met" } else { "MISSED" },
        if changed == 0 { "met" } else { "MISSED" }
    );
    let (adoption, adoption_min, adoption_max) = spread(all.iter().map(|r| r.process.adoption.as_secs_f64()).collect());
    let (rss, rss_min, rss_max) = spread(all.iter().map(|r| r.process.rss).collect());
    let (peak, peak_min, peak_max) = spread(all.iter().map(|r| r.process.peak).collect());
    let changed: usize = all.iter().map(|r| r.process.changed).sum();
    println!(
        "burst: the purelb allocator process at {n} Services over {runs} runs: adoption median {adoption:.2} s (min {adoption_min:.2}, max {adoption_max:.2}); \
         RSS median {rss:.1} MiB (min {rss_min:.1}, max {rss_max:.1}), peak median {peak:.1} MiB (min {peak_min:.1}, max {peak_max:.1}; the chart's limit 512 MiB: {}); addresses changed: {changed}",
        if peak_max <= 512.0 { "fits" } else { "EXCEEDED" }
    );
}
