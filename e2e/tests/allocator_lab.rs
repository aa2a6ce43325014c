//! The real `purelb allocator` process in the lab: leader election on, RBAC enforced by the
//! emulator with exactly `manifests/rbac.yaml`, its own service-account token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use purelb::{k8s_openapi::api::core::v1::Service, kube::Api};
use purelb_e2e::lab::{Lab, LabOptions, ProcessStatus};

fn purelb_bin() -> std::path::PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("purelb"))
        .find(|p| p.is_file())
        .expect("build the purelb binary first: cargo build -p purelb --bin purelb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_process_allocates_under_the_shipped_rbac() {
    let prefix = format!("plal{}", std::process::id());
    let options = LabOptions::new(&prefix, 2)
        .purelb_bin(purelb_bin())
        .lab_bin(env!("CARGO_BIN_EXE_purelb-lab"))
        .purelb(true, false)
        .ready_timeout(Duration::from_secs(20));
    let lab = Lab::start(options).await.unwrap();
    lab.apply_yaml(
        "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {name: default, namespace: purelb-system}\n\
         spec:\n  local:\n    v4pool: {pool: 192.0.2.240/29, subnet: 192.0.2.0/24}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
         spec:\n  type: LoadBalancer\n  ports: [{port: 80}]\n",
    )
    .await
    .unwrap();
    let api: Api<Service> = Api::namespaced(lab.client(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ip = loop {
        let svc = api.get("web").await.unwrap();
        if let Some(ip) = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|x| x.ip.clone()))
        {
            break ip;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no address; allocator log:\n{}",
            lab.log_tail("allocator", 40).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ip, "192.0.2.240");
    assert!(
        matches!(lab.status_of("allocator").unwrap(), ProcessStatus::Running { .. }),
        "{:?}",
        lab.status_of("allocator")
    );
    let log = lab.log_tail("allocator", 200).unwrap_or_default();
    assert!(
        !log.contains("forbidden") && !log.contains("answered 403") && !log.contains(" 403 "),
        "the shipped RBAC is sufficient:\n{log}"
    );
}

/// Every address each Service showed, as the watch saw the API's states in order: a Service
/// whose address changed, and an address shown by two Services in one state, are violations.
#[derive(Default)]
struct AddressLog {
    current: std::collections::BTreeMap<String, String>,
    first: std::collections::BTreeMap<String, String>,
    violations: Vec<String>,
}

impl AddressLog {
    fn observe(&mut self, name: &str, ip: Option<String>) {
        match ip {
            None => {
                self.current.remove(name);
            }
            Some(ip) => {
                if let Some(first) = self.first.get(name)
                    && *first != ip
                {
                    self.violations.push(format!("{name} changed from {first} to {ip}"));
                }
                self.first.entry(name.to_owned()).or_insert_with(|| ip.clone());
                if let Some((other, _)) = self.current.iter().find(|(n, a)| *n != name && **a == ip) {
                    self.violations.push(format!("{ip} shown by {name} and {other}"));
                }
                self.current.insert(name.to_owned(), ip);
            }
        }
    }
}

fn watch_addresses(client: purelb::kube::Client) -> (Arc<Mutex<AddressLog>>, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use purelb::kube::{ResourceExt, runtime::watcher};
    let log = Arc::new(Mutex::new(AddressLog::default()));
    let sink = log.clone();
    let task = tokio::spawn(async move {
        let api: Api<Service> = Api::namespaced(client, "default");
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let svc = match event {
                Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc)) => svc,
                Ok(watcher::Event::Delete(svc)) => {
                    let mut log = sink.lock().unwrap();
                    log.current.remove(&svc.name_any());
                    log.first.remove(&svc.name_any());
                    continue;
                }
                _ => continue,
            };
            let ip = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .and_then(|i| i.first())
                .and_then(|i| i.ip.clone());
            sink.lock().unwrap().observe(&svc.name_any(), ip);
        }
    });
    (log, task)
}

/// Two allocator replicas with 2 s leases; returns the lab and the leader's process name.
async fn two_allocators(tag: &str) -> (Lab, String, String) {
    let prefix = format!("{tag}{}", std::process::id());
    let mut options = LabOptions::new(&prefix, 1)
        .purelb_bin(purelb_bin())
        .lab_bin(env!("CARGO_BIN_EXE_purelb-lab"))
        .purelb(true, false)
        .allocators(2)
        .ready_timeout(Duration::from_secs(20));
    options.allocator_args = vec!["--lease-duration=2s".into(), "--renew-interval=500ms".into()];
    let lab = Lab::start(options).await.unwrap();
    lab.apply_yaml(
        "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {name: default, namespace: purelb-system}\n\
         spec:\n  local:\n    v4pool: {pool: 192.0.2.64/26, subnet: 192.0.2.0/24}\n",
    )
    .await
    .unwrap();
    let names = lab.allocator_names();
    let leader = purelb_e2e::lab::wait_for(Duration::from_secs(20), || async {
        for name in &names {
            if lab.metric(name, "purelb_allocator_is_leader").await == Some(1.0) {
                return Some(name.clone());
            }
        }
        None
    })
    .await
    .expect("no allocator became leader");
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();
    (lab, leader, standby)
}

fn duplicates(violations: &[String]) -> usize {
    violations.iter().filter(|v| v.contains(" shown by ")).count()
}

fn changed(violations: &[String]) -> usize {
    violations.iter().filter(|v| v.contains(" changed from ")).count()
}

/// Creates `count` Services `s0`.. one every 100 ms.
fn burst(client: purelb::kube::Client, count: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Service> = Api::namespaced(client, "default");
        for i in 0..count {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s{i}"), "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
            }))
            .unwrap();
            api.create(&Default::default(), &svc).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn all_addressed(lab: &Lab, log: &Arc<Mutex<AddressLog>>, count: usize, within: Duration) {
    let done =
        purelb_e2e::lab::wait_for(within, || async { (log.lock().unwrap().current.len() == count).then_some(()) })
            .await;
    assert!(
        done.is_some(),
        "only {} of {count} Services got an address\n{}\n{}",
        log.lock().unwrap().current.len(),
        lab.log_tail("allocator", 30).unwrap_or_default(),
        lab.log_tail("allocator-2", 30).unwrap_or_default()
    );
}

/// Issue 16 §3: the leader frozen (SIGSTOP) past its lease during a burst of creations, then
/// resumed: the standby takes over, no address is given twice or changed, and the resumed
/// process steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumes_as_a_standby_and_nothing_is_duplicated() {
    let (lab, leader, standby) = two_allocators("pause").await;
    let (log, watch) = watch_addresses(lab.client());
    let creations = burst(lab.client(), 40);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.pause(&leader).unwrap();
    let paused = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    lab.resume(&leader).unwrap();
    eprintln!("MEASURE paused leader: frozen for {:?}", paused.elapsed());
    creations.await.unwrap();
    all_addressed(&lab, &log, 40, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let violations = log.lock().unwrap().violations.clone();
    eprintln!(
        "MEASURE paused leader: 40 Services, {} duplicate addresses, {} changed addresses",
        duplicates(&violations),
        changed(&violations)
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(lab.metric(&standby, "purelb_allocator_is_leader").await, Some(1.0));
    assert_eq!(lab.metric(&leader, "purelb_allocator_is_leader").await, Some(0.0), "the resumed process steps down");
    let old = lab.log_tail(&leader, 200).unwrap_or_default();
    assert!(old.contains("no longer leader") || old.contains("standing by"), "{old}");
    watch.abort();
}

/// Issue 16 §3: the leader's writes held by the API server longer than its lease (applied after
/// it gave up on them): the standby takes over, waits out the old leader's write window, and
/// no address is given twice or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_writes_of_a_deposed_leader_duplicate_nothing() {
    let (lab, leader, standby) = two_allocators("late").await;
    let (log, watch) = watch_addresses(lab.client());
    let creations = burst(lab.client(), 40);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.late_writes(&leader, Duration::from_secs(3)).await.unwrap();
    // Free the lowest addresses while the old leader's writes are held: a new leader that does
    // not wait for them hands those out again in another order than the late writes say.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    for name in ["s0", "s1", "s2"] {
        services.delete(name, &Default::default()).await.unwrap();
    }
    let took_over = purelb_e2e::lab::wait_for(Duration::from_secs(20), || async {
        (lab.metric(&standby, "purelb_allocator_is_leader").await == Some(1.0)).then_some(())
    })
    .await;
    assert!(took_over.is_some(), "the standby never took over");
    creations.await.unwrap();
    all_addressed(&lab, &log, 37, Duration::from_secs(40)).await;
    lab.late_writes(&leader, Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let injected = lab.injected().await.unwrap();
    assert!(injected.delayed > 0, "the fault never struck: {injected:?}");
    let violations = log.lock().unwrap().violations.clone();
    eprintln!(
        "MEASURE late writes: 40 Services (3 deleted), {} late writes, {} duplicate addresses, {} changed addresses",
        injected.delayed,
        duplicates(&violations),
        changed(&violations)
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(lab.metric(&leader, "purelb_allocator_is_leader").await, Some(0.0));
    watch.abort();
}
