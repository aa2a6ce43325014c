//! The checker on synthetic observations: each invariant fires when it should, and not inside
//! its bound or while a node is exempt.

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn nodes() -> Vec<String> {
    ["n1", "n2", "n3"].iter().map(|n| (*n).to_owned()).collect()
}

fn checker() -> Checker {
    Checker::new(Bounds::default(), &nodes(), "kube-lb0")
}

fn expect(entries: &[(&str, Kind, &[&str])]) -> Expectation {
    entries
        .iter()
        .map(|(a, kind, holders)| {
            (ip(a), Expected { kind: *kind, nodes: holders.iter().map(|n| (*n).to_owned()).collect() })
        })
        .collect()
}

/// `(node, interface, address, owned)`; every node of the lab appears (empty when listed alone).
fn kernel(entries: &[(&str, &str, &str, bool)]) -> Kernel {
    let mut k: Kernel = nodes().into_iter().map(|n| (n, Vec::new())).collect();
    for (node, ifname, a, owned) in entries {
        k.entry((*node).to_owned()).or_default().push(KernelAddress {
            ifname: (*ifname).to_owned(),
            ip: ip(a),
            prefix_len: if a.contains(':') { 64 } else { 24 },
            owned: *owned,
        });
    }
    k
}

fn svc(key: &str, uid: &str, addresses: &[&str], sharing: Option<&str>, ports: &[i32]) -> ServiceView {
    ServiceView {
        key: key.to_owned(),
        uid: uid.to_owned(),
        handled: true,
        addresses: addresses.iter().map(|a| ip(a)).collect(),
        kind: (!addresses.is_empty()).then_some(Kind::Local),
        request: format!("group=local key={sharing:?}"),
        sharing_key: sharing.map(str::to_owned),
        ports: ports.iter().map(|p| ("TCP".to_owned(), *p)).collect(),
    }
}

const A: &str = "192.0.2.240";

#[test]
fn two_holders_beyond_the_handover_bound_break_invariant_1() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n2"])]);
    c.observe(ms(0), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    // A short overlap (150 ms) is a handover.
    for t in [100, 200, 250] {
        c.observe(ms(t), &e, &kernel(&[("n1", "eth0", A, true), ("n2", "eth0", A, true)]), &[]);
    }
    c.observe(ms(300), &e, &kernel(&[("n2", "eth0", A, true)]), &[]);
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    // A long one (over the 1 s bound) is not.
    for t in [400, 500, 700, 900, 1100, 1300, 1401, 1500] {
        c.observe(ms(t), &e, &kernel(&[("n1", "eth0", A, true), ("n2", "eth0", A, true)]), &[]);
    }
    c.observe(ms(1600), &e, &kernel(&[("n2", "eth0", A, true)]), &[]);
    let report = c.report(ms(1700));
    assert_eq!(report.count(Invariant::SingleHolder), 1, "{:?}", report.violations);
    let v = &report.violations[0];
    assert_eq!((v.at, v.since, v.lasted), (ms(1401), ms(400), Some(ms(1200))));
    assert_eq!(v.subject, A);
    assert!(v.detail.contains("n1, n2"), "{}", v.detail);
    // Both overlaps are counted for the report, the one within the bound too.
    let overlaps = &report.exempt["two holders, both agents running (a violation only over the bound)"];
    assert_eq!(overlaps.durations(), [ms(200), ms(1200)]);
    // Remote addresses on every node's dummy interface are not overlaps.
    let mut c = checker();
    let e = expect(&[("198.51.100.16", Kind::Remote, &["n1", "n2", "n3"])]);
    let k = kernel(&[
        ("n1", "kube-lb0", "198.51.100.16", true),
        ("n2", "kube-lb0", "198.51.100.16", true),
        ("n3", "kube-lb0", "198.51.100.16", true),
    ]);
    for t in 0..20 {
        c.observe(ms(t * 100), &e, &k, &[]);
    }
    assert!(c.report(ms(2000)).violations.is_empty());
}

#[test]
fn a_second_holder_without_a_running_agent_is_counted_apart() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n2"])]);
    c.note(ms(0), &Note::AgentDown("n1".to_owned()));
    let both = kernel(&[("n1", "eth0", A, true), ("n2", "eth0", A, true)]);
    for t in 0..10 {
        c.observe(ms(t * 100), &e, &both, &[]);
    }
    // Back and ready: it must drop the address within the handover bound.
    c.note(ms(1000), &Note::AgentUp("n1".to_owned()));
    c.observe(ms(1050), &e, &both, &[]);
    c.observe(ms(1100), &e, &kernel(&[("n2", "eth0", A, true)]), &[]);
    let report = c.report(ms(1200));
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let stat = &report.exempt["two holders, one of them a node without a running agent"];
    assert_eq!(stat.episodes.len(), 1);
    // After the settle time the restarted node counts again.
    let mut c = checker();
    c.note(ms(0), &Note::AgentDown("n1".to_owned()));
    c.note(ms(100), &Note::AgentUp("n1".to_owned()));
    for t in 0..40 {
        c.observe(ms(t * 100), &e, &both, &[]);
    }
    assert_eq!(c.report(ms(4000)).count(Invariant::SingleHolder), 1);
}

#[test]
fn an_unannounced_address_breaks_invariant_2_after_the_convergence_bound() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"])]);
    let empty = kernel(&[]);
    c.observe(ms(0), &e, &empty, &[]);
    c.observe(ms(4900), &e, &empty, &[]);
    assert!(c.report.violations.is_empty());
    c.observe(ms(5100), &e, &empty, &[]);
    assert_eq!(c.report.count(Invariant::ElectedHolds), 1);
    assert!(c.report.violations[0].detail.contains("should be on n1"));
    // On the wrong interface is not held.
    let mut c = checker();
    let wrong = kernel(&[("n1", "kube-lb0", A, true)]);
    c.observe(ms(0), &e, &wrong, &[]);
    c.observe(ms(6000), &e, &wrong, &[]);
    let report = c.report(ms(6000));
    assert_eq!(report.count(Invariant::ElectedHolds), 1);
    assert_eq!(report.count(Invariant::NoOrphans), 1, "{:?}", report.violations);
}

#[test]
fn a_node_cut_off_or_just_back_is_not_held_to_invariant_2() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"])]);
    let empty = kernel(&[]);
    c.note(ms(0), &Note::AgentCut("n1".to_owned()));
    c.observe(ms(0), &e, &empty, &[]);
    c.observe(ms(10_000), &e, &empty, &[]);
    c.note(ms(10_000), &Note::AgentHealed("n1".to_owned()));
    // Checks resume after the rejoin hold-off; then the convergence bound applies.
    let resume = ms(10_000) + c.bounds().rejoin_hold_off;
    c.observe(resume - ms(100), &e, &empty, &[]);
    c.observe(resume + ms(50), &e, &empty, &[]);
    c.observe(resume + c.bounds().converge - ms(100), &e, &empty, &[]);
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    c.observe(resume + c.bounds().converge + ms(100), &e, &empty, &[]);
    assert_eq!(c.report.count(Invariant::ElectedHolds), 1);
}

#[test]
fn a_service_without_an_address_breaks_invariant_2_unless_allocation_is_paused() {
    let pending = [svc("default/web", "u1", &[], None, &[80])];
    let mut c = checker();
    c.observe(ms(0), &Expectation::new(), &kernel(&[]), &pending);
    c.observe(ms(5100), &Expectation::new(), &kernel(&[]), &pending);
    assert_eq!(c.report.count(Invariant::ElectedHolds), 1);
    assert_eq!(c.report.violations[0].subject, "default/web");

    let mut c = checker();
    c.note(ms(0), &Note::AllocatorDown);
    c.observe(ms(0), &Expectation::new(), &kernel(&[]), &pending);
    c.observe(ms(8000), &Expectation::new(), &kernel(&[]), &pending);
    c.note(ms(8000), &Note::AllocatorUp);
    c.observe(ms(13_000), &Expectation::new(), &kernel(&[]), &pending);
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    let done = [svc("default/web", "u1", &[A], None, &[80])];
    c.observe(ms(13_500), &Expectation::new(), &kernel(&[]), &done);
    let report = c.report(ms(14_000));
    assert!(report.violations.is_empty());
    assert_eq!(report.convergence["allocate"], vec![ms(13_500)]);
}

#[test]
fn an_owned_address_where_it_should_not_be_breaks_invariant_3_after_the_sweep_interval() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"])]);
    let k =
        kernel(&[("n1", "eth0", A, true), ("n2", "eth0", "192.0.2.241", true), ("n3", "eth0", "192.0.2.13", false)]);
    c.observe(ms(0), &e, &k, &[]);
    c.observe(ms(1900), &e, &k, &[]);
    assert!(c.report.violations.is_empty());
    c.observe(ms(2100), &e, &k, &[]);
    let report = c.report(ms(2100));
    assert_eq!(report.count(Invariant::NoOrphans), 1, "{:?}", report.violations);
    assert!(report.violations[0].detail.contains("on n2 eth0"));
    // Unowned addresses (the node's own, an administrator's) are never orphans.
    assert!(!report.violations.iter().any(|v| v.subject == "192.0.2.13"));
}

#[test]
fn the_last_holder_keeping_a_local_address_until_the_winner_holds_it_is_no_orphan() {
    let mut c = checker();
    c.observe(ms(0), &expect(&[(A, Kind::Local, &["n1"])]), &kernel(&[("n1", "eth0", A, true)]), &[]);
    // n2 wins at 1 s (a node rejoined) and takes 3 s to hold it: n1 keeps it meanwhile.
    let moved = expect(&[(A, Kind::Local, &["n2"])]);
    for t in (1000..4000).step_by(100) {
        c.observe(ms(t), &moved, &kernel(&[("n1", "eth0", A, true)]), &[]);
    }
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    // n2 holds it; n1 lets go 100 ms later (a handover overlap within the bound).
    c.observe(ms(4000), &moved, &kernel(&[("n1", "eth0", A, true), ("n2", "eth0", A, true)]), &[]);
    c.observe(ms(4100), &moved, &kernel(&[("n2", "eth0", A, true)]), &[]);
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    // Keeping it after the winner holds it is an orphan (and two holders).
    c.observe(ms(5000), &moved, &kernel(&[("n1", "eth0", A, true), ("n2", "eth0", A, true)]), &[]);
    c.observe(ms(7500), &moved, &kernel(&[("n1", "eth0", A, true), ("n2", "eth0", A, true)]), &[]);
    let report = c.report(ms(8000));
    assert_eq!(report.count(Invariant::NoOrphans), 1);
    assert_eq!(report.count(Invariant::SingleHolder), 1);
}

#[test]
fn the_sweep_interval_counts_from_the_change_that_made_the_address_an_orphan() {
    let mut c = checker();
    let k = kernel(&[("n1", "eth0", A, true)]);
    c.observe(ms(0), &expect(&[(A, Kind::Local, &["n1"])]), &k, &[]);
    // The Service is deleted at 5 s: 2 s to go.
    c.observe(ms(5000), &Expectation::new(), &k, &[]);
    c.observe(ms(5000 + 1900), &Expectation::new(), &k, &[]);
    assert!(c.report.violations.is_empty());
    c.observe(ms(5000 + 2100), &Expectation::new(), &k, &[]);
    assert_eq!(c.report(ms(8000)).count(Invariant::NoOrphans), 1);
}

#[test]
fn an_address_change_nobody_asked_for_breaks_invariant_4() {
    let mut c = checker();
    let none = Expectation::new();
    let k = kernel(&[]);
    c.observe(ms(0), &none, &k, &[svc("default/web", "u1", &[A], None, &[80])]);
    c.observe(ms(100), &none, &k, &[svc("default/web", "u1", &["192.0.2.241"], None, &[80])]);
    c.observe(ms(200), &none, &k, &[svc("default/web", "u1", &[], None, &[80])]);
    let report = c.report(ms(300));
    assert_eq!(report.count(Invariant::StableAddresses), 2, "{:?}", report.violations);
    assert!(report.violations[0].detail.contains("from 192.0.2.240 to 192.0.2.241"));
    assert!(report.violations[1].detail.contains("removed"));

    // Asked (another group): fine, also when the address follows a little later; a re-created
    // Service (new uid) is another Service.
    let mut c = checker();
    c.observe(ms(0), &none, &k, &[svc("default/web", "u1", &[A], None, &[80])]);
    let mut asked = svc("default/web", "u1", &[A], None, &[80]);
    asked.request = "group=remote".to_owned();
    c.observe(ms(100), &none, &k, std::slice::from_ref(&asked));
    asked.addresses = vec![ip("198.51.100.16")];
    c.observe(ms(200), &none, &k, &[asked]);
    c.observe(ms(300), &none, &k, &[svc("default/web", "u2", &["192.0.2.242"], None, &[80])]);
    // A port change is not asking for another address.
    c.observe(ms(400), &none, &k, &[svc("default/web", "u2", &["192.0.2.242"], None, &[81])]);
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    // A request the allocator had long enough to act on does not excuse a later change.
    let mut moved = svc("default/web", "u2", &["192.0.2.242"], None, &[81]);
    moved.request = "group=other".to_owned();
    c.observe(ms(500), &none, &k, std::slice::from_ref(&moved));
    moved.addresses = vec![ip("192.0.2.243")];
    c.observe(ms(20_000), &none, &k, &[moved]);
    assert_eq!(c.report(ms(20_000)).count(Invariant::StableAddresses), 1);
}

#[test]
fn an_address_given_to_two_services_without_a_common_key_breaks_invariant_5() {
    let none = Expectation::new();
    let k = kernel(&[]);
    let mut c = checker();
    c.observe(
        ms(0),
        &none,
        &k,
        &[svc("default/a", "u1", &[A], None, &[80]), svc("default/b", "u2", &[A], None, &[81])],
    );
    assert_eq!(c.report.count(Invariant::SharedOnlyByKey), 1);
    let mut c = checker();
    let a = svc("default/a", "u1", &[A], Some("k"), &[80]);
    c.observe(ms(0), &none, &k, &[a.clone(), svc("default/b", "u2", &[A], Some("k"), &[81])]);
    assert!(c.report.violations.is_empty());
    c.observe(ms(100), &none, &k, &[a.clone(), svc("default/c", "u3", &[A], Some("other"), &[82])]);
    c.observe(ms(200), &none, &k, &[a, svc("default/d", "u4", &[A], Some("k"), &[80])]);
    let report = c.report(ms(300));
    assert_eq!(report.count(Invariant::SharedOnlyByKey), 2, "{:?}", report.violations);
    assert!(report.violations[1].detail.contains("both use 80/TCP"), "{}", report.violations[1].detail);
}

#[test]
fn withdrawing_an_address_during_an_api_outage_breaks_invariant_2() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"]), ("198.51.100.16", Kind::Remote, &["n1", "n2", "n3"])]);
    let all = kernel(&[
        ("n1", "eth0", A, true),
        ("n1", "kube-lb0", "198.51.100.16", true),
        ("n2", "kube-lb0", "198.51.100.16", true),
        ("n3", "kube-lb0", "198.51.100.16", true),
    ]);
    c.observe(ms(0), &e, &all, &[]);
    c.note(ms(50), &Note::ApiDown);
    // Leases expire in the store: nobody should hold the local address any more, as far as the
    // store says; the agents must keep it anyway.
    let stale = expect(&[(A, Kind::Local, &[]), ("198.51.100.16", Kind::Remote, &["n1", "n2", "n3"])]);
    for t in 1..30 {
        c.observe(ms(t * 100), &stale, &all, &[]);
    }
    c.note(ms(3000), &Note::ApiUp);
    for t in 30..100 {
        c.observe(ms(t * 100), &e, &all, &[]);
    }
    let report = c.report(ms(10_000));
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(
        !report.convergence.keys().any(|k| k.starts_with("withdraw") || k.starts_with("move")),
        "outage artefacts are not convergences: {:?}",
        report.convergence
    );

    let mut c = checker();
    c.observe(ms(0), &e, &all, &[]);
    c.note(ms(50), &Note::ApiDown);
    let without = kernel(&[
        ("n1", "kube-lb0", "198.51.100.16", true),
        ("n2", "kube-lb0", "198.51.100.16", true),
        ("n3", "kube-lb0", "198.51.100.16", true),
    ]);
    for t in 1..10 {
        c.observe(ms(t * 100), &stale, &without, &[]);
    }
    let report = c.report(ms(1000));
    assert_eq!(report.count(Invariant::ElectedHolds), 1, "{:?}", report.violations);
    assert!(report.violations[0].detail.contains("while the API was unavailable"));

    // After the API is back, a change pending or made since may move an address.
    let mut c = checker();
    c.observe(ms(0), &e, &all, &[]);
    c.note(ms(50), &Note::ApiDown);
    c.observe(ms(100), &stale, &all, &[]);
    c.note(ms(200), &Note::ApiUp);
    let moved = expect(&[("192.0.2.241", Kind::Local, &["n1"]), ("198.51.100.16", Kind::Remote, &["n1", "n2", "n3"])]);
    for t in 3..10 {
        c.observe(ms(t * 100), &moved, &without, &[]);
    }
    assert_eq!(c.report(ms(1000)).count(Invariant::ElectedHolds), 0);

    // An orphan (here: the Service of the remote address was deleted just before) may go.
    let mut c = checker();
    let only_local = expect(&[(A, Kind::Local, &["n1"])]);
    c.observe(ms(0), &only_local, &all, &[]);
    c.note(ms(50), &Note::ApiDown);
    for t in 1..10 {
        c.observe(ms(t * 100), &stale, &kernel(&[("n1", "eth0", A, true)]), &[]);
    }
    assert!(c.report(ms(1000)).violations.is_empty());
}

#[test]
fn request_windows_follow_changes_drift_and_unmanaged_holders() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"])]);
    c.observe(ms(1000), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    assert_eq!(c.allowed(ip(A), ms(1500), ms(1600)), Some(WindowCause::Change));
    assert_eq!(c.allowed(ip(A), ms(800), ms(1001)), Some(WindowCause::Change));
    assert_eq!(c.allowed(ip(A), ms(6100), ms(6200)), None);
    assert_eq!(c.allowed(ip("192.0.2.241"), ms(1500), ms(1600)), None);
    c.note(ms(20_000), &Note::Drift { node: "n1".to_owned(), ip: ip(A) });
    assert_eq!(c.allowed(ip(A), ms(20_100), ms(20_200)), Some(WindowCause::Drift));
    c.observe(ms(20_080), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    c.note(ms(30_000), &Note::AgentDown("n1".to_owned()));
    c.observe(ms(30_000), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    assert_eq!(c.allowed(ip(A), ms(31_000), ms(31_100)), Some(WindowCause::UnmanagedHolder));
    let report = c.report(ms(40_000));
    assert_eq!(report.convergence["announce local"], vec![ms(0)]);
    assert_eq!(report.convergence["drift repair"], vec![ms(80)]);
}

#[test]
fn a_change_window_opens_at_the_observation_before_the_one_that_saw_it() {
    // The Service was deleted between two samples: its address went within milliseconds, so a
    // request sent before the checker saw the change may fail, and may fail only then.
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"])]);
    c.observe(ms(0), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    c.observe(ms(10_000), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    assert_eq!(c.allowed(ip(A), ms(10_010), ms(10_011)), None);
    c.observe(ms(10_050), &expect(&[]), &kernel(&[]), &[]);
    assert_eq!(c.allowed(ip(A), ms(10_010), ms(10_011)), Some(WindowCause::Change));
    assert_eq!(c.allowed(ip(A), ms(9_000), ms(9_001)), None);
}

#[test]
fn an_address_released_right_after_an_api_outage_opens_a_change_window() {
    // CI, seed 376867715: the API server restarted, the allocator then moved a Service to another
    // group and its old address went; a request to it failed and was counted outside every window.
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n1"])]);
    c.observe(ms(0), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    c.note(ms(11000), &Note::ApiDown);
    c.observe(ms(11050), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    c.note(ms(11100), &Note::ApiUp);
    c.observe(ms(12000), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    // A holder change inside the artefact period (Leases expired in the store) opens none.
    c.observe(ms(12050), &expect(&[(A, Kind::Local, &["n2"])]), &kernel(&[("n1", "eth0", A, true)]), &[]);
    assert_eq!(c.allowed(ip(A), ms(12060), ms(12070)), None);
    // The address left every status: requests to it may fail.
    c.observe(ms(12100), &expect(&[]), &kernel(&[]), &[]);
    assert_eq!(c.allowed(ip(A), ms(12070), ms(13070)), Some(WindowCause::Change));
}

#[test]
fn convergence_is_timed_from_the_change_to_the_kernel_matching() {
    let mut c = checker();
    let e = expect(&[(A, Kind::Local, &["n2"])]);
    c.observe(ms(0), &Expectation::new(), &kernel(&[]), &[]);
    c.observe(ms(100), &e, &kernel(&[]), &[]);
    c.observe(ms(150), &e, &kernel(&[("n1", "eth0", A, true)]), &[]);
    c.observe(ms(180), &e, &kernel(&[("n2", "eth0", A, true)]), &[]);
    let moved = expect(&[(A, Kind::Local, &["n3"])]);
    c.observe(ms(1000), &moved, &kernel(&[("n2", "eth0", A, true)]), &[]);
    c.observe(ms(1040), &moved, &kernel(&[("n3", "eth0", A, true)]), &[]);
    let report = c.report(ms(2000));
    assert_eq!(report.convergence["announce local"], vec![ms(80)]);
    assert_eq!(report.convergence["move local"], vec![ms(40)]);
    // n2 and n3 never overlapped; the local address went dark for at most one observation.
    assert!(report.violations.is_empty());
}

fn service(name: &str, ip: &str, pool: &str, policy: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "annotations": {
            "purelb.io/pool-type": pool, "purelb.io/allocated-from": pool, "purelb.io/allocated-by": "PureLB"}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
    }))
    .unwrap()
}

#[test]
fn services_are_read_with_what_they_ask_for() {
    let mut s = service("web", A, "local", "Cluster");
    let view = service_view(&s);
    assert!(view.handled && view.allocated());
    assert_eq!((view.key.as_str(), view.uid.as_str()), ("default/web", "uid-web"));
    assert_eq!(view.ports, BTreeSet::from([("TCP".to_owned(), 80)]));
    s.annotations_mut().insert("purelb.io/allow-shared-ip".to_owned(), " k1 ".to_owned());
    let shared = service_view(&s);
    assert_eq!(shared.sharing_key.as_deref(), Some("k1"));
    assert_ne!(shared.request, view.request);
    // Another traffic policy or port does not ask for another address.
    if let Some(spec) = s.spec.as_mut() {
        spec.external_traffic_policy = Some("Local".to_owned());
        spec.load_balancer_class = Some("other.io/lb".to_owned());
    }
    let other = service_view(&s);
    assert!(!other.handled);
}

/// Renewals every 500 ms from `from_ms` (wall clock = epoch + at) for `nodes`, observed every
/// 100 ms until `to_ms`, with `observe` called after each.
fn renewing(
    c: &mut Checker,
    epoch: Timestamp,
    from_ms: u64,
    to_ms: u64,
    stalled: &[(&str, u64, u64)],
    e: &Expectation,
    k: &Kernel,
) {
    let mut last: BTreeMap<String, Timestamp> = BTreeMap::new();
    for t in (from_ms..to_ms).step_by(100) {
        let now = epoch + ms(t);
        for node in nodes() {
            let stalled_now = stalled.iter().any(|(n, a, b)| *n == node && (*a..*b).contains(&t));
            if t % 500 == 0 && !stalled_now {
                last.insert(node, now);
            }
        }
        c.renewals(ms(t), now, &last);
        c.observe(ms(t), e, k, &[]);
    }
}

fn orphans(c: &Checker) -> usize {
    c.violations().iter().filter(|v| v.invariant == Invariant::NoOrphans).count()
}

#[test]
fn a_node_whose_own_lease_renewals_stall_is_not_held_to_invariant_3_until_it_recovers() {
    let epoch = Timestamp::from_second(1_800_000_000).unwrap();
    let e = Expectation::new();
    let k = kernel(&[("n2", "eth0", A, true)]);
    // Regular renewals: the orphan on n2 is flagged after the sweep interval.
    let mut c = checker();
    renewing(&mut c, epoch, 0, 3000, &[], &e, &k);
    assert_eq!(orphans(&c), 1, "{:?}", c.report.violations);
    // n2's renewals stall from 500 ms to 1.5 s (its next one lands at 1.5 s, a 1 s gap): it is
    // not current from 1.25 s, then recovers for a lease duration (2 s) from the renewal at
    // 1.5 s; the sweep interval counts from 3.5 s.
    let mut c = checker();
    renewing(&mut c, epoch, 0, 5400, &[("n2", 500, 1500)], &e, &k);
    assert!(c.report.violations.is_empty(), "{:?}", c.report.violations);
    renewing(&mut c, epoch, 5400, 5700, &[], &e, &k);
    assert_eq!(orphans(&c), 1, "{:?}", c.report.violations);
}
