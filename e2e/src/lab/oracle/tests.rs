//! The oracle on hand-made worlds (each documented rule, with winners computed outside Rust), its
//! independence from the product (a test reads `oracle.rs`), and a proptest that the product's
//! own decision (`purelb::agent::decide` over `core::election` and `core::endpoints`, run for
//! every node as the soak's checker used to) agrees with it on random worlds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

use proptest::prelude::*;
use purelb::{
    agent::decide::{self, Inputs},
    core::{election::Members, endpoints::EndpointIndex},
    k8s_openapi::{
        api::{
            coordination::v1::LeaseSpec,
            discovery::v1::{Endpoint, EndpointConditions},
        },
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    },
};

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// "Now" of every world: 2030-01-01T00:00:10Z.
fn now() -> Timestamp {
    Timestamp::from_second(1_893_456_010).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn names(nodes: &[&str]) -> Vec<String> {
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

fn set(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

/// A node Lease renewed `ago` seconds before [`now`], lasting `duration` seconds.
fn lease(node: &str, subnets: &str, ago: i64, duration: i32) -> Lease {
    let mut annotations = BTreeMap::new();
    if !subnets.is_empty() {
        annotations.insert("purelb.io/subnets".to_owned(), subnets.to_owned());
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("purelb-node-{node}")),
            namespace: Some("purelb-system".to_owned()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now().checked_sub(SignedDuration::from_secs(ago)).unwrap())),
            ..LeaseSpec::default()
        }),
    }
}

const SUBNETS: &str = "192.0.2.0/24,2001:db8::/64";

/// Live Leases of `nodes` on the lab subnets.
fn live(nodes: &[&str]) -> Vec<Lease> {
    nodes.iter().map(|n| lease(n, SUBNETS, 0, 2)).collect()
}

fn annotate(mut lease: Lease, key: &str, value: &str) -> Lease {
    lease.metadata.annotations.get_or_insert_default().insert(key.to_owned(), value.to_owned());
    lease
}

/// A Service of `default` with the allocator's annotations and `addresses` in its status.
fn service(name: &str, pool: &str, policy: &str, addresses: &[&str]) -> Service {
    let ingress: Vec<serde_json::Value> = addresses.iter().map(|a| serde_json::json!({"ip": a})).collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": {
            "purelb.io/pool-type": pool, "purelb.io/allocated-from": pool, "purelb.io/allocated-by": "PureLB"}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": ingress}},
    }))
    .unwrap()
}

/// One endpoint: first address, node, and (ready, serving, terminating) if given.
type Ep<'a> = (&'a str, Option<&'a str>, Option<(Option<bool>, Option<bool>, Option<bool>)>);

fn endpoint((address, node, conditions): Ep<'_>) -> Endpoint {
    Endpoint {
        addresses: vec![address.to_owned()],
        node_name: node.map(str::to_owned),
        conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions { ready, serving, terminating }),
        ..Endpoint::default()
    }
}

/// A slice of Service `default/<service>` (`service` empty: no label).
fn slice(name: &str, service: &str, address_type: &str, endpoints: &[Ep<'_>]) -> EndpointSlice {
    let labels =
        (!service.is_empty()).then(|| BTreeMap::from([("kubernetes.io/service-name".to_owned(), service.to_owned())]));
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".to_owned()),
            labels,
            ..ObjectMeta::default()
        },
        address_type: address_type.to_owned(),
        endpoints: endpoints.iter().copied().map(endpoint).collect(),
        ..EndpointSlice::default()
    }
}

const READY: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(true), Some(true), Some(false)));
const NOT_READY: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(false), Some(false), Some(false)));
const TERMINATING: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(false), Some(true), Some(true)));

const LAB: [&str; 4] = ["n1", "n2", "n3", "n4"];

/// The expectation over the four lab nodes.
fn expect(services: &[Service], leases: &[Lease], slices: &[EndpointSlice]) -> Expectation {
    let nodes = names(&LAB);
    expectation(&World { services, leases, slices, nodes: &nodes, now: now() })
}

fn holders(e: &Expectation, address: &str) -> BTreeSet<String> {
    e[&ip(address)].nodes.clone()
}

// Winners, computed with Python's hashlib (min over sha256(f"{node}#{address}")):
// 192.0.2.240: n1 < n3 < n4 < n2; 192.0.2.241: n3 < n1 < n2 < n4; 2001:db8::f0: n1 < n3 < n4 < n2.

// ---------------------------------------------------------------------------------------------
// The documented rules
// ---------------------------------------------------------------------------------------------

#[test]
fn the_lowest_hash_among_live_candidates_wins() {
    let services = [
        service("a", "local", "Cluster", &["192.0.2.240", "2001:db8::f0"]),
        service("b", "local", "Cluster", &["192.0.2.241"]),
    ];
    let e = expect(&services, &live(&LAB), &[]);
    assert_eq!(e[&ip("192.0.2.240")], Expected { kind: Kind::Local, nodes: set(&["n1"]) });
    assert_eq!(holders(&e, "2001:db8::f0"), set(&["n1"]));
    assert_eq!(holders(&e, "192.0.2.241"), set(&["n3"]));
    // Any spelling of the address elects the same node (canonical text).
    let spelled = [service("c", "local", "Cluster", &["2001:0DB8:0:0::F0"])];
    assert_eq!(holders(&expect(&spelled, &live(&LAB), &[]), "2001:db8::f0"), set(&["n1"]));
}

#[test]
fn a_lease_counts_while_renew_time_plus_duration_is_in_the_future() {
    let services = [service("a", "local", "Cluster", &["192.0.2.240"])];
    let mut leases = live(&["n2", "n3", "n4"]);
    // n1 would win; renewed 2 s ago for 2 s: expired exactly now.
    leases.push(lease("n1", SUBNETS, 2, 2));
    assert_eq!(holders(&expect(&services, &leases, &[]), "192.0.2.240"), set(&["n3"]));
    leases.pop();
    leases.push(lease("n1", SUBNETS, 1, 2));
    assert_eq!(holders(&expect(&services, &leases, &[]), "192.0.2.240"), set(&["n1"]));
    // holderIdentity must be the node of the Lease name.
    let mut stolen = lease("n1", SUBNETS, 0, 2);
    stolen.spec.as_mut().unwrap().holder_identity = Some("n2".to_owned());
    leases.pop();
    leases.push(stolen);
    assert_eq!(holders(&expect(&services, &leases, &[]), "192.0.2.240"), set(&["n3"]));
    // Without Leases nobody holds it, and the address is still PureLB's.
    assert_eq!(expect(&services, &[], &[])[&ip("192.0.2.240")], Expected { kind: Kind::Local, nodes: set(&[]) });
}

#[test]
fn candidates_need_a_subnet_containing_the_address_and_must_not_be_draining() {
    let services = [service("a", "local", "Cluster", &["192.0.2.240"])];
    let mut leases = live(&["n2", "n4"]);
    leases.push(lease("n1", "198.51.100.0/24, 2001:db8::/64", 0, 2));
    leases.push(lease("n3", "bogus, 192.0.2.77/24", 0, 2));
    // n1 has no subnet containing the address; n3's host bits do not matter.
    assert_eq!(holders(&expect(&services, &leases, &[]), "192.0.2.240"), set(&["n3"]));
    let last = leases.pop().unwrap();
    leases.push(annotate(last, "purelb.io/draining", " TRUE "));
    assert_eq!(holders(&expect(&services, &leases, &[]), "192.0.2.240"), set(&["n4"]));
    let last = leases.pop().unwrap();
    leases.push(annotate(last, "purelb.io/draining", "false"));
    assert_eq!(holders(&expect(&services, &leases, &[]), "192.0.2.240"), set(&["n3"]));
}

#[test]
fn a_winner_outside_the_lab_is_nobody_the_lab_must_check() {
    let services = [service("a", "local", "Cluster", &["192.0.2.240"])];
    let leases = live(&["n1", "n2"]);
    let only_n2 = names(&["n2"]);
    let e = expectation(&World { services: &services, leases: &leases, slices: &[], nodes: &only_n2, now: now() });
    assert!(e[&ip("192.0.2.240")].nodes.is_empty(), "n1 wins, and n1 is not a lab node");
}

#[test]
fn traffic_policy_local_elects_among_nodes_with_a_usable_endpoint() {
    let services = [service("web", "local", "Local", &["192.0.2.240"])];
    let leases = live(&LAB);
    let e = |endpoints: &[Ep<'_>]| {
        let slices = [slice("web-1", "web", "IPv4", endpoints)];
        holders(&expect(&services, &leases, &slices), "192.0.2.240")
    };
    assert_eq!(e(&[("10.0.0.2", Some("n2"), READY), ("10.0.0.4", Some("n4"), READY)]), set(&["n4"]));
    // Absent conditions mean ready.
    assert_eq!(e(&[("10.0.0.2", Some("n2"), None)]), set(&["n2"]));
    assert_eq!(e(&[("10.0.0.2", Some("n2"), Some((None, None, None)))]), set(&["n2"]));
    // Serving while terminating keeps a node usable; not serving (or serving, not ready, not
    // terminating) does not.
    assert_eq!(e(&[("10.0.0.3", Some("n3"), TERMINATING), ("10.0.0.2", Some("n2"), READY)]), set(&["n3"]));
    assert_eq!(e(&[("10.0.0.3", Some("n3"), Some((Some(false), None, Some(true))))]), set(&["n3"]));
    assert_eq!(e(&[("10.0.0.3", Some("n3"), Some((Some(false), Some(false), Some(true))))]), set(&[]));
    assert_eq!(e(&[("10.0.0.3", Some("n3"), Some((Some(false), Some(true), Some(false))))]), set(&[]));
    assert_eq!(e(&[("10.0.0.3", Some("n3"), NOT_READY)]), set(&[]));
    // Ready wins over terminating (publishNotReadyAddresses).
    assert_eq!(e(&[("10.0.0.3", Some("n3"), Some((Some(true), Some(true), Some(true))))]), set(&["n3"]));
    // Endpoints on no node, or on a node that is no candidate, make nobody usable.
    assert_eq!(
        e(&[("10.0.0.9", None, READY), ("10.0.0.8", Some(""), READY), ("10.0.0.7", Some("n9"), READY)]),
        set(&[])
    );
    // Only the first address counts, and only in the family of the slice.
    assert_eq!(e(&[("fd00::2", Some("n2"), READY)]), set(&[]));
    let mut two = endpoint(("bogus", Some("n2"), READY));
    two.addresses.push("10.0.0.2".to_owned());
    let slices = [EndpointSlice { endpoints: vec![two], ..slice("web-1", "web", "IPv4", &[]) }];
    assert!(holders(&expect(&services, &leases, &slices), "192.0.2.240").is_empty());
}

#[test]
fn slices_count_for_their_service_and_the_family_of_their_address_type() {
    let services = [service("web", "local", "Local", &["192.0.2.240", "2001:db8::f0"])];
    let leases = live(&LAB);
    let slices = [
        slice("web-v6", "web", "IPv6", &[("fd00::2", Some("n2"), READY)]),
        slice("web-fqdn", "web", "FQDN", &[("10.0.0.3", Some("n3"), READY)]),
        slice("other", "other", "IPv4", &[("10.0.0.4", Some("n4"), READY)]),
        slice("unlabelled", "", "IPv4", &[("10.0.0.4", Some("n4"), READY)]),
        EndpointSlice {
            metadata: ObjectMeta { namespace: Some("team".to_owned()), ..slice("x", "web", "IPv4", &[]).metadata },
            ..slice("x", "web", "IPv4", &[("10.0.0.4", Some("n4"), READY)])
        },
    ];
    let e = expect(&services, &leases, &slices);
    assert_eq!(holders(&e, "2001:db8::f0"), set(&["n2"]));
    assert!(holders(&e, "192.0.2.240").is_empty(), "no IPv4 endpoint of default/web");
}

#[test]
fn an_endpoint_listed_twice_counts_as_its_worst_listing() {
    let services = [service("web", "local", "Local", &["192.0.2.240"])];
    let leases = live(&LAB);
    let e = |a: Ep<'_>, b: Ep<'_>| {
        let slices = [slice("web-1", "web", "IPv4", &[a]), slice("web-2", "web", "IPv4", &[b])];
        holders(&expect(&services, &leases, &slices), "192.0.2.240")
    };
    assert_eq!(e(("10.0.0.1", Some("n1"), READY), ("10.0.0.1", Some("n1"), NOT_READY)), set(&[]));
    assert_eq!(e(("10.0.0.1", Some("n1"), READY), ("10.0.0.1", Some("n1"), TERMINATING)), set(&["n1"]));
    // Another address on the node is another endpoint.
    assert_eq!(e(("10.0.0.1", Some("n1"), READY), ("10.0.0.5", Some("n1"), NOT_READY)), set(&["n1"]));
    // The same address on two nodes: two endpoints.
    assert_eq!(e(("10.0.0.1", Some("n3"), READY), ("10.0.0.1", Some("n1"), NOT_READY)), set(&["n3"]));
}

#[test]
fn a_shared_local_address_is_elected_once_from_all_its_services() {
    let leases = live(&LAB);
    let a = || service("a", "local", "Local", &["192.0.2.240"]);
    let b = || service("b", "local", "Local", &["192.0.2.240"]);
    let slices = [
        slice("a-1", "a", "IPv4", &[("10.0.0.3", Some("n3"), READY), ("10.0.0.2", Some("n2"), READY)]),
        slice("b-1", "b", "IPv4", &[("10.0.1.2", Some("n2"), READY), ("10.0.1.4", Some("n4"), READY)]),
    ];
    // n2 has endpoints of both; n3 (lower hash) only of a.
    assert_eq!(holders(&expect(&[a(), b()], &leases, &slices), "192.0.2.240"), set(&["n2"]));
    // No node has both: the winner among nodes with either.
    let apart = [slices[0].clone(), slice("b-1", "b", "IPv4", &[("10.0.1.4", Some("n4"), READY)])];
    let nodes_a = [slice("a-1", "a", "IPv4", &[("10.0.0.2", Some("n2"), READY)]), apart[1].clone()];
    assert_eq!(holders(&expect(&[a(), b()], &leases, &apart), "192.0.2.240"), set(&["n3"]));
    assert_eq!(holders(&expect(&[a(), b()], &leases, &nodes_a), "192.0.2.240"), set(&["n4"]));
    // Nobody has an endpoint: nobody, unless a Cluster Service shares it (then the hash winner).
    assert!(holders(&expect(&[a(), b()], &leases, &[]), "192.0.2.240").is_empty());
    let c = service("c", "local", "Cluster", &["192.0.2.240"]);
    assert_eq!(holders(&expect(&[a(), c.clone()], &leases, &[]), "192.0.2.240"), set(&["n1"]));
    // With an endpoint somewhere, the Cluster Service does not widen the choice.
    assert_eq!(holders(&expect(&[a(), c], &leases, &apart), "192.0.2.240"), set(&["n3"]));
}

#[test]
fn remote_addresses_go_to_every_node_that_a_service_needs() {
    let leases = live(&["n1"]);
    let cluster = service("r", "remote", "Cluster", &["198.51.100.7"]);
    let local = service("l", "remote", "Local", &["198.51.100.8"]);
    let slices = [slice("l-1", "l", "IPv4", &[("10.0.0.2", Some("n2"), READY), ("10.0.0.3", Some("n3"), TERMINATING)])];
    // Remote addresses need no Lease and no subnet.
    let e = expect(&[cluster, local.clone()], &leases, &slices);
    assert_eq!(e[&ip("198.51.100.7")], Expected { kind: Kind::Remote, nodes: set(&LAB) });
    assert_eq!(e[&ip("198.51.100.8")], Expected { kind: Kind::Remote, nodes: set(&["n2", "n3"]) });
    // Shared by a Cluster and a Local Service: every node.
    let shared = service("c", "remote", "Cluster", &["198.51.100.8"]);
    assert_eq!(holders(&expect(&[local, shared], &leases, &slices), "198.51.100.8"), set(&LAB));
}

#[test]
fn a_local_and_a_remote_service_on_one_address_make_one_local_holder() {
    // docs/agent.md, "Shared addresses": local wins.
    let services =
        [service("l", "local", "Cluster", &["192.0.2.241"]), service("r", "remote", "Cluster", &["192.0.2.241"])];
    let e = expect(&services, &live(&LAB), &[]);
    assert_eq!(e[&ip("192.0.2.241")], Expected { kind: Kind::Local, nodes: set(&["n3"]) });
}

#[test]
fn only_services_with_the_allocators_pool_type_and_addresses_count() {
    let leases = live(&LAB);
    let mut foreign = service("x", "local", "Cluster", &["192.0.2.240"]);
    foreign.metadata.annotations = None;
    let bogus = service("y", "bogus", "Cluster", &["192.0.2.241"]);
    let spaced = service("z", " remote ", "Cluster", &["198.51.100.7", "not-an-address"]);
    let e = expect(&[foreign, bogus, spaced], &leases, &[]);
    assert_eq!(e.keys().copied().collect::<Vec<_>>(), [ip("198.51.100.7")]);
}

// ---------------------------------------------------------------------------------------------
// Independence
// ---------------------------------------------------------------------------------------------

/// What in `source` names (or could reach) the product's decision, election or endpoint code.
fn product_code_named(source: &str) -> Vec<String> {
    const FORBIDDEN: [&str; 9] = [
        "agent::decide",
        "core::election",
        "core::endpoints",
        "decide::",
        "election::",
        "endpoints::",
        "crate::",
        "super::",
        "extern crate",
    ];
    let mut found: Vec<String> = FORBIDDEN.iter().filter(|w| source.contains(*w)).map(|w| format!("`{w}`")).collect();
    // From the product, only the Kubernetes types it re-exports, by full path (no `purelb::{..}`
    // group, no alias of the crate, nothing of this crate either).
    for (at, _) in source.match_indices("purelb") {
        let rest = &source[at + "purelb".len()..];
        let path = rest.starts_with("::") && !rest.starts_with("::k8s_openapi::") && !rest.starts_with("::kube::");
        let alias = rest.starts_with(" as ") || rest.starts_with(';') || rest.starts_with("_e2e");
        if path || alias {
            found.push(format!("`purelb{}`", rest.chars().take(24).collect::<String>()));
        }
    }
    found
}

#[test]
fn the_oracle_does_not_use_the_products_decision_code() {
    let source = include_str!("../oracle.rs");
    assert!(source.contains("fn expectation("), "read the wrong file");
    assert_eq!(product_code_named(source), Vec::<String>::new());
}

#[test]
fn the_independence_check_catches_every_way_in() {
    for bad in [
        "use purelb::agent::decide;",
        "use purelb::{core::election::Members};",
        "use purelb::core::{election as e};",
        "use purelb::core::{endpoints as e};",
        "use purelb as p;",
        "use purelb::{agent};",
        "use super::invariants::Members;",
        "use crate::lab::x;",
        "use purelb_e2e::lab::invariants;",
        "let d = decide::decide(x);",
        "let w = election::elect(x);",
    ] {
        assert!(!product_code_named(bad).is_empty(), "not caught: {bad}");
    }
    for good in [
        "use purelb::k8s_openapi::api::core::v1::Service;",
        "use purelb::kube::ResourceExt;",
        "// purelb.io/subnets",
        "strip_prefix(\"purelb-node-\")",
        "slice.endpoints",
    ] {
        assert_eq!(product_code_named(good), Vec::<String>::new(), "{good}");
    }
}

// ---------------------------------------------------------------------------------------------
// The product agrees
// ---------------------------------------------------------------------------------------------

/// Who should hold what according to the product: the agent's own decision for every node (what
/// the soak's checker computed before it had an oracle).
fn product_expectation(world: &World<'_>) -> Expectation {
    let members = Members::from_leases(world.leases, world.now);
    let mut endpoints = EndpointIndex::new();
    endpoints.replace_all(world.slices, Instant::now());
    // Groups only give aggregation and DAD options, never who holds what.
    let groups = HashMap::new();
    let kind = |k: decide::Kind| match k {
        decide::Kind::Local => Kind::Local,
        decide::Kind::Remote => Kind::Remote,
    };
    let mut expected = Expectation::new();
    for node in world.nodes {
        let inputs = Inputs { node, members: &members, endpoints: &endpoints, groups: &groups };
        let decision = decide::decide(world.services, &inputs);
        for (_, ip, k) in &decision.considered {
            let entry = expected.entry(*ip).or_insert_with(|| Expected { kind: kind(*k), nodes: BTreeSet::new() });
            if kind(*k) == Kind::Local {
                entry.kind = Kind::Local;
            }
        }
        for wanted in decision.wanted.values() {
            let entry = expected
                .entry(wanted.ip)
                .or_insert_with(|| Expected { kind: kind(wanted.kind), nodes: BTreeSet::new() });
            entry.nodes.insert(node.clone());
        }
    }
    expected
}

const NODE_NAMES: [&str; 5] = ["n1", "n2", "n3", "n4", "n9"];
const SERVICE_ADDRESSES: [&str; 5] = ["192.0.2.240", "192.0.2.241", "2001:db8::f0", "198.51.100.7", "203.0.113.9"];
const LEASE_SUBNETS: [&str; 8] = [
    "192.0.2.0/24",
    "2001:db8::/64",
    "198.51.100.0/24",
    "192.0.2.77/24",
    "bogus",
    "2001:db8:5::/120",
    " 198.51.100.0/25 ",
    "203.0.113.0/33",
];
const POD_ADDRESSES: [&str; 6] = ["10.0.0.1", "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::1", "bogus"];

/// A node's Lease: `state` 0–5 renewed `ago` s before now for `duration` s (live or expired),
/// 6 another holder, 7 no renewTime, 8 no duration, 9 none. Subnets: the lab's (most of the
/// time), or a few of [`LEASE_SUBNETS`].
fn arb_lease(node: &'static str) -> impl Strategy<Value = Option<Lease>> {
    (
        0..10u8,
        proptest::sample::select(vec![0, 0, 0, 1, 2, 3]),
        1..4i32,
        proptest::option::weighted(0.3, proptest::sample::subsequence(LEASE_SUBNETS.to_vec(), 0..=4)),
        proptest::sample::select(vec![None, None, None, Some("true"), Some(" TRUE "), Some("false"), Some("yes")]),
    )
        .prop_map(move |(state, ago, duration, subnets, draining)| {
            let subnets = subnets.map_or_else(|| LEASE_SUBNETS[..3].join(","), |s| s.join(","));
            let mut l = lease(node, &subnets, ago, duration);
            if let Some(value) = draining {
                l = annotate(l, "purelb.io/draining", value);
            }
            let spec = l.spec.as_mut()?;
            match state {
                6 => spec.holder_identity = Some("someone-else".to_owned()),
                7 => spec.renew_time = None,
                8 => spec.lease_duration_seconds = None,
                9 => return None,
                _ => {}
            }
            Some(l)
        })
}

/// Service `s<i>`: namespace, pool type, traffic policy, addresses.
fn arb_service(i: usize) -> impl Strategy<Value = Service> {
    (
        proptest::sample::select(vec!["default", "default", "team"]),
        proptest::sample::select(vec![
            Some("local"),
            Some("local"),
            Some("local"),
            Some("remote"),
            Some(" remote"),
            Some("x"),
            None,
        ]),
        proptest::sample::select(vec![None, Some("Cluster"), Some("Local"), Some("Local")]),
        proptest::sample::subsequence(SERVICE_ADDRESSES.to_vec(), 1..=2),
    )
        .prop_map(move |(namespace, pool, policy, addresses)| {
            let mut svc = service(&format!("s{i}"), pool.unwrap_or_default(), policy.unwrap_or_default(), &addresses);
            svc.metadata.namespace = Some(namespace.to_owned());
            if pool.is_none() {
                svc.metadata.annotations = None;
            }
            if let Some(spec) = svc.spec.as_mut() {
                spec.external_traffic_policy = policy.map(str::to_owned);
            }
            svc
        })
}

fn arb_condition() -> impl Strategy<Value = Option<bool>> {
    proptest::sample::select(vec![None, Some(true), Some(false)])
}

fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
    (
        proptest::sample::select(POD_ADDRESSES.to_vec()),
        proptest::sample::select(vec![None, Some(""), Some("n1"), Some("n2"), Some("n3"), Some("n4"), Some("n9")]),
        proptest::option::weighted(0.9, (arb_condition(), arb_condition(), arb_condition())),
    )
        .prop_map(|(address, node, conditions)| endpoint((address, node, conditions)))
}

/// Slice `e<j>` of Service `s<service>` (or unlabelled), in a namespace, of an address type.
fn arb_slice(j: usize) -> impl Strategy<Value = EndpointSlice> {
    (
        0..5usize,
        proptest::sample::select(vec!["default", "default", "team"]),
        proptest::sample::select(vec!["IPv4", "IPv4", "IPv6", "IPv6", "FQDN"]),
        proptest::collection::vec(arb_endpoint(), 0..6),
    )
        .prop_map(move |(service, namespace, address_type, endpoints)| {
            let label = if service == 4 { String::new() } else { format!("s{service}") };
            let mut s = slice(&format!("e{j}"), &label, address_type, &[]);
            s.metadata.namespace = Some(namespace.to_owned());
            s.endpoints = endpoints;
            s
        })
}

#[derive(Debug, Clone)]
struct RandomWorld {
    services: Vec<Service>,
    leases: Vec<Lease>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<String>,
}

fn arb_world() -> impl Strategy<Value = RandomWorld> {
    let leases: Vec<_> = NODE_NAMES.iter().map(|n| arb_lease(n)).collect();
    let services: Vec<_> = (0..4).map(arb_service).collect();
    let slices: Vec<_> = (0..6).map(arb_slice).collect();
    (leases, services, 0..=4usize, slices, 1..=4usize).prop_map(|(leases, services, keep, mut slices, nodes)| {
        slices.truncate(keep + 2);
        RandomWorld {
            services,
            leases: leases.into_iter().flatten().collect(),
            slices,
            nodes: LAB[..nodes].iter().map(|n| (*n).to_owned()).collect(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_product_decides_what_the_oracle_expects(world in arb_world()) {
        let w = World { services: &world.services, leases: &world.leases, slices: &world.slices, nodes: &world.nodes, now: now() };
        let oracle = expectation(&w);
        let product = product_expectation(&w);
        prop_assert_eq!(oracle.keys().collect::<Vec<_>>(), product.keys().collect::<Vec<_>>());
        for (ip, expected) in &oracle {
            prop_assert_eq!(Some(expected), product.get(ip), "address {}", ip);
        }
    }
}
