//! Tests of the planner: each rule on a hand-built snapshot, then properties over random
//! snapshots and timers (no kernel, no API).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus},
        discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use proptest::prelude::*;

use super::{Action, AddWhy, HeldState, Outcome, Plan, Reason, Snapshot, Timers, Timing, plan};
use crate::{
    agent::decide::Kind,
    api::{AddressOptions, AddressPool, PoolSpec, contract},
    core::{
        election::{Members, elect},
        endpoints::{EndpointIndex, ServiceKey},
        ipam::{AddressRange, ParsedPools, parse_pool_spec},
        netlink::{
            Address, AddressFlags, AddressSnapshot, AddressSpec, AddressState, Link, MarkSupport,
            PURELB_ADDRESS_PROTOCOL,
        },
    },
};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const ME: &str = "n1";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn now_ts() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(10),
        handover_timeout: Duration::from_secs(5),
        settle_time: Duration::from_secs(2),
        quiet_wait: Duration::from_millis(50),
        race_wait: Duration::from_millis(300),
    }
}

/// A live Lease of `node` on 192.0.2.0/24, listing `holding` (local addresses on eth0).
fn lease(node: &str, holding: &[IpAddr], draining: bool) -> Lease {
    let mut annotations = BTreeMap::from([(contract::LEASE_ANNOTATION_SUBNETS.to_owned(), "192.0.2.0/24".to_owned())]);
    if !holding.is_empty() {
        let held: Vec<crate::core::election::HeldAddress> = holding
            .iter()
            .map(|a| crate::core::election::HeldAddress { address: *a, interface: Some("eth0".to_owned()) })
            .collect();
        annotations
            .insert(contract::LEASE_ANNOTATION_ANNOUNCING.to_owned(), crate::core::election::format_announcing(&held));
    }
    if draining {
        annotations.insert(contract::LEASE_ANNOTATION_DRAINING.to_owned(), "true".to_owned());
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(contract::node_lease_name(node)),
            namespace: Some("purelb-system".into()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(10),
            renew_time: Some(MicroTime(now_ts())),
            ..LeaseSpec::default()
        }),
    }
}

fn members(leases: &[Lease]) -> Members {
    Members::from_leases(leases, now_ts())
}

fn all_live() -> Members {
    members(&NODES.map(|n| lease(n, &[], false)))
}

fn service(name: &str, kind: &str, ips: &[IpAddr], local_policy: bool) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            annotations: Some(BTreeMap::from([
                (contract::ANNOTATION_POOL_TYPE.to_owned(), kind.to_owned()),
                (contract::ANNOTATION_ALLOCATED_FROM.to_owned(), kind.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            external_traffic_policy: local_policy.then(|| "Local".to_owned()),
            ..ServiceSpec::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..LoadBalancerIngress::default() })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        }),
    }
}

/// A ready endpoint of Service `name` on `node`.
fn slice(name: &str, node: &str) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(format!("{name}-{node}")),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".to_owned(), name.to_owned()),
                ("endpointslice.kubernetes.io/managed-by".to_owned(), "endpointslice-controller.k8s.io".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        endpoints: vec![Endpoint {
            addresses: vec!["203.0.113.10".into()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Endpoint::default()
        }],
        ..EndpointSlice::default()
    }
}

fn index(slices: &[EndpointSlice]) -> EndpointIndex {
    let mut index = EndpointIndex::new();
    index.replace_all(slices, Instant::now());
    index
}

fn groups() -> HashMap<String, ParsedPools> {
    let local = PoolSpec {
        v4pool: Some(AddressPool { pool: "192.0.2.240/28".into(), subnet: "192.0.2.0/24".into(), aggregation: None }),
        ..PoolSpec::default()
    };
    let remote = PoolSpec {
        v4pool: Some(AddressPool {
            pool: "198.51.100.16/28".into(),
            subnet: "198.51.100.0/24".into(),
            aggregation: Some("/32".into()),
        }),
        ..PoolSpec::default()
    };
    HashMap::from([
        ("local".to_owned(), parse_pool_spec("spec.local", &local).unwrap()),
        ("remote".to_owned(), parse_pool_spec("spec.remote", &remote).unwrap()),
    ])
}

fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.to_owned(),
        kind: Some("bridge".to_owned()),
        admin_up: true,
        lower_up: true,
        loopback: false,
        promote_secondaries: None,
        alias: None,
    }
}

fn on_eth0(addr: IpAddr) -> Address {
    address(2, "eth0", addr, 24, true)
}

fn on_dummy(addr: IpAddr) -> Address {
    address(3, "kube-lb0", addr, 32, true)
}

fn address(index: u32, ifname: &str, addr: IpAddr, prefix_len: u8, marked: bool) -> Address {
    Address {
        index,
        ifname: ifname.to_owned(),
        ip: addr,
        prefix_len,
        flags: if marked && ifname == "eth0" || ifname == "kube-lb0" {
            AddressFlags { noprefixroute: true, ..AddressFlags::default() }
        } else {
            AddressFlags::default()
        },
        state: AddressState::default(),
        valid_lifetime: None,
        preferred_lifetime: None,
        protocol: marked.then_some(PURELB_ADDRESS_PROTOCOL),
    }
}

/// eth0 with the node's own 192.0.2.11/24 and `extra` addresses, kube-lb0.
fn kernel(extra: &[Address]) -> AddressSnapshot {
    let mut addresses = vec![address(2, "eth0", ip("192.0.2.11"), 24, false)];
    addresses.extend(extra.iter().cloned());
    AddressSnapshot { links: vec![link(2, "eth0"), link(3, "kube-lb0")], addresses }
}

/// Permanent addresses (lifetimes 0), so that no renewal is due.
fn options() -> (AddressOptions, AddressOptions) {
    let local = AddressOptions { valid_lifetime: 0, preferred_lifetime: 0, no_prefix_route: true };
    let dummy = AddressOptions { valid_lifetime: 0, preferred_lifetime: 0, no_prefix_route: true };
    (local, dummy)
}

/// The inputs of one plan, owned.
struct World {
    services: Vec<Service>,
    members: Members,
    endpoints: EndpointIndex,
    groups: HashMap<String, ParsedPools>,
    ranges: Vec<AddressRange>,
    kernel: AddressSnapshot,
    announce: Vec<String>,
    lease_ok: bool,
    draining: bool,
    drain_started: Option<Instant>,
    now: Instant,
    /// Address options of the local and the dummy interface.
    options: (AddressOptions, AddressOptions),
}

impl World {
    fn new(services: Vec<Service>, members: Members, kernel: AddressSnapshot) -> Self {
        let groups = groups();
        let ranges = groups.values().flat_map(|g| g.all().map(|r| r.range)).collect();
        Self {
            services,
            members,
            endpoints: index(&[]),
            groups,
            ranges,
            kernel,
            announce: vec!["eth0".to_owned()],
            lease_ok: true,
            draining: false,
            drain_started: None,
            now: Instant::now(),
            options: options(),
        }
    }

    fn plan(&self, timers: &Timers) -> Plan {
        let services: Vec<&Service> = self.services.iter().collect();
        let (local_options, dummy_options) = self.options;
        plan(
            &Snapshot {
                node: ME,
                services: &services,
                members: &self.members,
                endpoints: &self.endpoints,
                groups: &self.groups,
                ranges: &self.ranges,
                kernel: &self.kernel,
                announce: &self.announce,
                dummy_interface: "kube-lb0",
                local_options,
                dummy_options,
                marks: MarkSupport::Stored,
                lease_ok: self.lease_ok,
                draining: self.draining,
                drain_started: self.drain_started,
                now: self.now,
                timing: timing(),
            },
            timers,
        )
    }
}

/// Local pool addresses n1 wins and loses among n1..n3.
fn won_and_lost() -> (Vec<IpAddr>, Vec<IpAddr>) {
    (240..=254_u8).map(|last| IpAddr::from([192, 0, 2, last])).partition(|a| elect(NODES, *a) == Some(ME))
}

fn adds(plan: &Plan) -> Vec<(IpAddr, String, AddWhy)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Add { spec, why, .. } => Some((spec.ip, spec.link.to_string(), *why)),
            _ => None,
        })
        .collect()
}

fn removes(plan: &Plan) -> Vec<(IpAddr, String, Reason)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { address, reason, .. } => Some((address.ip, address.ifname.clone(), *reason)),
            _ => None,
        })
        .collect()
}

fn announces(plan: &Plan) -> Vec<IpAddr> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Announce { ip, .. } => Some(*ip),
            _ => None,
        })
        .collect()
}

/// Runs `plan` as if every action succeeded and the kernel now looked as planned: the timers
/// to feed the next plan.
fn applied(plan: Plan) -> Timers {
    let mut failures = BTreeMap::new();
    plan.timers.after_apply(Vec::new(), &mut failures)
}

fn held_local(addr: IpAddr) -> HeldState {
    HeldState {
        spec: AddressSpec::new("eth0", addr, 24).noprefixroute(),
        ifname: "eth0".to_owned(),
        kind: Kind::Local,
        services: vec![ServiceKey::new("default", "web")],
        announced: true,
        quiet_takeover: None,
        force_nodad: false,
    }
}

/// A held address with a lifetime is added again (renewed) once less than half of it is left,
/// and a pass is scheduled every third of the lifetime; one whose flags differ from the spec is added
/// again with the right ones; an announced address present in the kernel is not announced again.
#[test]
fn held_addresses_are_renewed_at_half_their_lifetime_and_re_added_when_their_flags_differ() {
    let (won, _) = won_and_lost();
    let addr = won[0];
    let lifetime = AddressOptions { valid_lifetime: 300, preferred_lifetime: 300, no_prefix_route: true };
    let mut held = held_local(addr);
    held.spec = held.spec.lifetimes(300, 300);
    let timers = Timers { held: BTreeMap::from([(addr, held)]), ..Timers::default() };
    for (left, renew) in [(Some(149), true), (Some(150), false), (Some(151), false), (None, true)] {
        let mut present = on_eth0(addr);
        present.valid_lifetime = left;
        let mut world = World::new(vec![service("web", "local", &[addr], false)], all_live(), kernel(&[present]));
        world.options.0 = lifetime;
        let plan = world.plan(&timers);
        let want = if renew { vec![(addr, "eth0".to_owned(), AddWhy::Renew)] } else { Vec::new() };
        assert_eq!(adds(&plan), want, "{left:?} s left of 300");
        assert!(announces(&plan).is_empty(), "an announced address is announced again: {:?}", plan.actions);
        // A pass every third of the lifetime finds each address before half of it is gone.
        assert_eq!(plan.wake_after, Some(Duration::from_secs(100)), "the renewal is scheduled");
    }
    // Permanent addresses: nothing to renew, no wake-up for it.
    let world = World::new(vec![service("web", "local", &[addr], false)], all_live(), kernel(&[on_eth0(addr)]));
    let plan = world.plan(&Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() });
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.wake_after, None);
    // Flags that differ (no noprefixroute in the kernel): added again with them.
    let mut present = on_eth0(addr);
    present.flags = AddressFlags::default();
    let world = World::new(vec![service("web", "local", &[addr], false)], all_live(), kernel(&[present]));
    let plan = world.plan(&Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() });
    assert_eq!(adds(&plan), vec![(addr, "eth0".to_owned(), AddWhy::Flags)]);
}

/// The dummy interface is ensured once per plan, before the first remote addition, and not for
/// local ones.
#[test]
fn the_dummy_interface_is_ensured_once_and_only_for_remote_additions() {
    let (won, _) = won_and_lost();
    let remote = [ip("198.51.100.17"), ip("198.51.100.18")];
    let services = vec![service("web", "remote", &remote, false), service("lan", "local", &won[..1], false)];
    let world = World::new(services, all_live(), kernel(&[]));
    let plan = world.plan(&Timers::default());
    let ensures = plan.actions.iter().filter(|a| matches!(a, Action::EnsureDummy(_))).count();
    assert_eq!(ensures, 1, "{:?}", plan.actions);
    let first_remote = plan.actions.iter().position(|a| matches!(a, Action::Add { kind: Kind::Remote, .. })).unwrap();
    let ensure = plan.actions.iter().position(|a| matches!(a, Action::EnsureDummy(_))).unwrap();
    assert!(ensure < first_remote, "{:?}", plan.actions);
    let local_only = World::new(vec![service("lan", "local", &won[..1], false)], all_live(), kernel(&[]));
    assert!(!local_only.plan(&Timers::default()).actions.iter().any(|a| matches!(a, Action::EnsureDummy(_))));
}

#[test]
fn a_won_local_address_is_added_and_announced_and_an_owned_one_no_service_uses_is_removed() {
    let (won, lost) = won_and_lost();
    let world = World::new(
        vec![service("web", "local", &[won[0]], false)],
        all_live(),
        kernel(&[on_eth0(lost[0]), address(2, "eth0", lost[1], 24, false)]),
    );
    let plan = world.plan(&Timers::default());
    assert_eq!(adds(&plan), vec![(won[0], "eth0".to_owned(), AddWhy::New)]);
    assert_eq!(announces(&plan), vec![won[0]]);
    assert_eq!(removes(&plan), vec![(lost[0], "eth0".to_owned(), Reason::ServiceDeleted)], "unmarked stays");
    assert_eq!(plan.orphans, 1);
    assert!(plan.timers.held[&won[0]].announced);
    // Applied: the next pass keeps it and does nothing.
    let timers = applied(plan);
    let world = World { kernel: kernel(&[on_eth0(won[0])]), ..world };
    let again = world.plan(&timers);
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(again.kept.len(), 1);
}

/// Each removal and whether it stops the address's announcements (GARP refresh, BGP).
fn stops(plan: &Plan) -> Vec<(IpAddr, String, bool)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { address, stop_announcing, .. } => {
                Some((address.ip, address.ifname.clone(), *stop_announcing))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn an_orphan_stops_being_announced_unless_the_address_is_held_at_another_place() {
    let (won, lost) = won_and_lost();
    // lost[0]: owned, on eth0, wanted nowhere here. won[0]: wanted on eth0, and a stray owned
    // copy sits on kube-lb0.
    let world = World::new(
        vec![service("web", "local", &[won[0]], false)],
        all_live(),
        kernel(&[on_eth0(lost[0]), on_dummy(won[0])]),
    );
    let plan = world.plan(&Timers::default());
    let mut got = stops(&plan);
    got.sort();
    let mut want = vec![(lost[0], "eth0".to_owned(), true), (won[0], "kube-lb0".to_owned(), false)];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_held_address_someone_removed_is_added_back_as_a_repair_and_announced_again() {
    let (won, _) = won_and_lost();
    let world = World::new(vec![service("web", "local", &[won[0]], false)], all_live(), kernel(&[]));
    let timers = Timers { held: BTreeMap::from([(won[0], held_local(won[0]))]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert_eq!(adds(&plan), vec![(won[0], "eth0".to_owned(), AddWhy::Repair)]);
    assert_eq!(announces(&plan), vec![won[0]]);
}

#[test]
fn without_a_current_lease_nothing_new_is_claimed_and_nothing_removed() {
    let (won, lost) = won_and_lost();
    let mut world = World::new(
        vec![service("web", "local", &[won[0], won[1]], false)],
        all_live(),
        kernel(&[on_eth0(won[1]), on_eth0(lost[0])]),
    );
    world.lease_ok = false;
    // won[1] was held, and is still wanted; won[0] is new; lost[0] is held but lost.
    let timers = Timers {
        held: BTreeMap::from([(won[1], held_local(won[1])), (lost[0], held_local(lost[0]))]),
        ..Timers::default()
    };
    let plan = world.plan(&timers);
    assert!(adds(&plan).is_empty(), "{:?}", plan.actions);
    assert!(removes(&plan).is_empty(), "{:?}", plan.actions);
    assert!(plan.timers.held.contains_key(&lost[0]) && plan.timers.held.contains_key(&won[1]));
    // An orphan is not touched either.
    world.kernel = kernel(&[on_eth0(lost[2])]);
    assert!(world.plan(&Timers::default()).actions.is_empty());
}

#[test]
fn a_draining_node_claims_nothing_new_and_lets_go_quietly_once_its_successor_holds_the_address() {
    let (won, _) = won_and_lost();
    let addr = won[0];
    let successor = elect(["n2", "n3"], addr).unwrap();
    let mut world = World::new(
        vec![service("web", "local", &[addr, won[1]], false)],
        members(&[
            lease(ME, &[addr], true),
            lease(successor, &[], false),
            lease(if successor == "n2" { "n3" } else { "n2" }, &[], false),
        ]),
        kernel(&[on_eth0(addr)]),
    );
    world.draining = true;
    world.drain_started = Some(world.now);
    let timers = Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() };
    // The successor does not hold it yet: kept, nothing new (won[1]) claimed.
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert!(plan.timers.held.contains_key(&addr));
    // It does now: let go at a quiet moment, at most `quiet_wait` from now.
    let mut others: Vec<Lease> = vec![lease(ME, &[addr], true), lease(successor, &[addr], false)];
    others.push(lease(if successor == "n2" { "n3" } else { "n2" }, &[], false));
    world.members = members(&others);
    let plan = world.plan(&timers);
    let [Action::LetGoQuietly { address, until, .. }] = plan.actions.as_slice() else { panic!("{:?}", plan.actions) };
    assert_eq!(address.ip, addr);
    assert_eq!(*until, world.now + timing().quiet_wait);
    assert_eq!(plan.removals().count(), 1);
    // A connection raced the withdrawal: the next try waits afresh for a quiet moment.
    let mut failures = BTreeMap::new();
    let later = world.now + timing().quiet_wait * 2;
    let raced = plan.timers.clone().after_apply(vec![Outcome::Raced(held_local(addr))], &mut failures);
    world.now = later;
    let again = world.plan(&raced);
    let [Action::LetGoQuietly { until, .. }] = again.actions.as_slice() else { panic!("{:?}", again.actions) };
    assert_eq!(*until, later + timing().race_wait, "a fresh, longer wait after a race");
    // A failed removal keeps the old window: the wait is over, so it is let go at once.
    let failed = plan.timers.clone().after_apply(vec![Outcome::StillHeld(held_local(addr))], &mut failures);
    let again = world.plan(&failed);
    let [Action::LetGoQuietly { until, .. }] = again.actions.as_slice() else { panic!("{:?}", again.actions) };
    assert!(*until < later);
    world.now -= timing().quiet_wait * 2;
    // After the handover timeout: removed, counted as a handover.
    world.now += timing().handover_timeout;
    world.members = members(&others[..1]);
    let plan = world.plan(&timers);
    assert!(
        matches!(plan.actions.as_slice(), [Action::Remove { reason: Reason::HandedOver, handover: true, .. }]),
        "{:?}",
        plan.actions
    );
}

#[test]
fn another_draining_holder_is_neither_a_successor_nor_a_winner_holding_the_address() {
    let (won, lost) = won_and_lost();
    // This node drains and holds won[0]; n2 lists it too but drains as well: not a successor,
    // so the address is kept (until one comes, or the handover timeout).
    let addr = won[0];
    let mut world = World::new(
        vec![service("web", "local", &[addr], false)],
        members(&[lease(ME, &[addr], true), lease("n2", &[addr], true), lease("n3", &[], false)]),
        kernel(&[on_eth0(addr)]),
    );
    world.draining = true;
    world.drain_started = Some(world.now);
    let timers = Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    // This node (not draining) lost lost[0] to its winner; the only other node listing it is
    // draining, not the winner: kept until the winner holds it or the bound passes.
    let winner = elect(NODES, lost[0]).unwrap();
    let other = NODES.iter().copied().find(|n| *n != ME && *n != winner).unwrap();
    let mut leases = vec![lease(ME, &[lost[0]], false), lease(winner, &[], false)];
    leases.push(lease(other, &[lost[0]], true));
    let world =
        World::new(vec![service("web", "local", &[lost[0]], false)], members(&leases), kernel(&[on_eth0(lost[0])]));
    let timers = Timers { held: BTreeMap::from([(lost[0], held_local(lost[0]))]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert!(removes(&plan).is_empty(), "{:?}", plan.actions);
    assert!(plan.timers.losing.contains_key(&lost[0]));
}

#[test]
fn a_held_local_address_whose_service_is_gone_is_removed_at_once() {
    // Nobody won it (no Service uses it any more): nothing to wait for.
    let (won, _) = won_and_lost();
    let world = World::new(
        vec![],
        members(&[lease(ME, &[won[0]], false), lease("n2", &[], false)]),
        kernel(&[on_eth0(won[0])]),
    );
    let timers = Timers { held: BTreeMap::from([(won[0], held_local(won[0]))]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert_eq!(removes(&plan), vec![(won[0], "eth0".to_owned(), Reason::ServiceDeleted)]);
    assert!(plan.timers.losing.is_empty());
}

#[test]
fn a_takeover_from_a_draining_holder_is_quiet_until_it_lets_go_or_the_bound_passes() {
    let (won, _) = won_and_lost();
    // n1 wins won[0] among live candidates; n2 holds it and drains.
    let addr = won.iter().copied().find(|a| elect(["n1", "n3"], *a) == Some(ME)).unwrap();
    let mut world = World::new(
        vec![service("web", "local", &[addr], false)],
        members(&[lease(ME, &[], false), lease("n2", &[addr], true), lease("n3", &[], false)]),
        kernel(&[]),
    );
    let plan = world.plan(&Timers::default());
    assert_eq!(adds(&plan).len(), 1, "held at once (make before break)");
    assert!(announces(&plan).is_empty(), "but not announced while the old holder lists it");
    assert!(plan.timers.held[&addr].quiet_takeover.is_some());
    assert!(plan.wake_after.is_some());
    let timers = applied(plan);
    world.kernel = kernel(&[on_eth0(addr)]);
    // The old holder let go: announced now.
    world.members = members(&[lease(ME, &[], false), lease("n2", &[], true), lease("n3", &[], false)]);
    let plan = world.plan(&timers);
    assert_eq!(announces(&plan), vec![addr]);
    assert!(adds(&plan).is_empty());
    // Or: it still lists it after the bound: announced anyway.
    world.members = members(&[lease(ME, &[], false), lease("n2", &[addr], true), lease("n3", &[], false)]);
    world.now += timing().handover_bound();
    assert_eq!(announces(&world.plan(&timers)), vec![addr]);
}

#[test]
fn a_takeover_from_a_holder_that_is_not_draining_is_announced_at_once() {
    // n1 wins; n2 still lists the address but is not draining (it lost the election, e.g. to a
    // node that came back): nothing to wait for, the clients move at once.
    let (won, _) = won_and_lost();
    let addr = won[0];
    let world = World::new(
        vec![service("web", "local", &[addr], false)],
        members(&[lease(ME, &[], false), lease("n2", &[addr], false), lease("n3", &[], false)]),
        kernel(&[]),
    );
    let plan = world.plan(&Timers::default());
    assert_eq!(adds(&plan).len(), 1);
    assert_eq!(announces(&plan), vec![addr], "a holder that is not draining is not waited for");
    assert!(plan.timers.held[&addr].quiet_takeover.is_none());
}

#[test]
fn an_address_yielded_to_another_claimer_is_not_claimed_again_within_one_lease_duration() {
    let (won, _) = won_and_lost();
    let mut world = World::new(vec![service("web", "local", &[won[0]], false)], all_live(), kernel(&[]));
    let timers = Timers { yielded: HashMap::from([(won[0], world.now)]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty());
    assert!(plan.wake_after.unwrap() > timing().lease_duration);
    assert!(plan.timers.yielded.contains_key(&won[0]));
    world.now += timing().lease_duration;
    let plan = world.plan(&timers);
    assert_eq!(adds(&plan).len(), 1);
    assert!(plan.timers.yielded.is_empty());
}

/// A remote IPv6 address goes on the dummy interface without duplicate address detection (on a
/// link without carrier it would stay tentative and BIRD would not export it); IPv4 has no DAD.
#[test]
fn remote_ipv6_addresses_are_added_without_dad() {
    let v6 = ip("2001:db8:5::11");
    let v4 = ip("198.51.100.18");
    let mut world = World::new(vec![service("web", "remote", &[v4, v6], false)], all_live(), kernel(&[]));
    let remote6 = PoolSpec {
        v6pool: Some(AddressPool {
            pool: "2001:db8:5::10/124".into(),
            subnet: "2001:db8:5::/64".into(),
            aggregation: Some("/128".into()),
        }),
        ..PoolSpec::default()
    };
    let mut both = world.groups["remote"].clone();
    both.v6 = parse_pool_spec("spec.remote", &remote6).unwrap().v6;
    world.groups.insert("remote".to_owned(), both);
    let plan = world.plan(&Timers::default());
    let specs: Vec<(IpAddr, bool)> = plan.additions().map(|spec| (spec.ip, spec.flags.nodad)).collect();
    assert_eq!(specs, vec![(v4, false), (v6, true)], "{:?}", plan.actions);
}

/// A local IPv6 address of a group with `skipIPv6DAD` is added without DAD; without it, with.
#[test]
fn local_ipv6_addresses_skip_dad_only_when_their_group_says_so() {
    // An address of the pool this node wins (the test is about the spec, not the election).
    let v6 = (0xf1..=0xff_u16)
        .map(|last| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]))
        .find(|a| elect(NODES, *a) == Some(ME))
        .unwrap();
    for skip in [false, true] {
        // Every node is on the IPv6 subnet too.
        let leases: Vec<Lease> = NODES
            .map(|n| {
                let mut l = lease(n, &[], false);
                if let Some(a) = l.metadata.annotations.as_mut() {
                    a.insert(contract::LEASE_ANNOTATION_SUBNETS.to_owned(), "192.0.2.0/24,2001:db8::/64".to_owned());
                }
                l
            })
            .to_vec();
        let mut svc = service("web6", "local", &[v6], false);
        if let Some(a) = svc.metadata.annotations.as_mut() {
            a.insert(contract::ANNOTATION_ALLOCATED_FROM.to_owned(), "local6".to_owned());
        }
        let mut world = World::new(vec![svc], members(&leases), kernel(&[]));
        let spec = PoolSpec {
            v6pool: Some(AddressPool {
                pool: "2001:db8::f0/124".into(),
                subnet: "2001:db8::/64".into(),
                aggregation: None,
            }),
            skip_ipv6_dad: Some(skip),
            ..PoolSpec::default()
        };
        world.groups.insert("local6".to_owned(), parse_pool_spec("spec.local", &spec).unwrap());
        world.kernel.addresses.push(address(2, "eth0", ip("2001:db8::11"), 64, false));
        let plan = world.plan(&Timers::default());
        let specs: Vec<(IpAddr, bool)> = plan.additions().map(|spec| (spec.ip, spec.flags.nodad)).collect();
        assert_eq!(specs, vec![(v6, skip)], "skipIPv6DAD {skip}: {:?} {:?}", plan.actions, plan.decision);
    }
}

#[test]
fn a_remote_address_that_became_local_elsewhere_goes_at_once_without_settling() {
    // Held on kube-lb0 for a remote Service; now only a local Service uses it, and no node of
    // this lab is a candidate for it (other subnet): the dummy copy goes at once (settling is
    // for endpoints that flap, not for an address that changed kind).
    let addr = ip("198.51.100.17");
    let world = World::new(vec![service("web", "local", &[addr], false)], all_live(), kernel(&[on_dummy(addr)]));
    let held = HeldState {
        spec: AddressSpec::new("kube-lb0", addr, 32).noprefixroute(),
        ifname: "kube-lb0".to_owned(),
        kind: Kind::Remote,
        services: vec![ServiceKey::new("default", "web")],
        announced: true,
        quiet_takeover: None,
        force_nodad: false,
    };
    let timers = Timers { held: BTreeMap::from([(addr, held)]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert_eq!(removes(&plan).iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), vec![(addr, "kube-lb0")]);
    assert!(plan.timers.settling.is_empty());
}

#[test]
fn a_remote_address_whose_local_endpoint_went_away_settles_before_it_is_withdrawn() {
    let addr = ip("198.51.100.17");
    let mut world = World::new(vec![service("web", "remote", &[addr], true)], all_live(), kernel(&[on_dummy(addr)]));
    let held = HeldState {
        spec: AddressSpec::new("kube-lb0", addr, 32).noprefixroute(),
        ifname: "kube-lb0".to_owned(),
        kind: Kind::Remote,
        services: vec![ServiceKey::new("default", "web")],
        announced: false,
        quiet_takeover: None,
        force_nodad: false,
    };
    let timers = Timers { held: BTreeMap::from([(addr, held)]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    let since = plan.timers.settling[&addr];
    let timers = applied(plan);
    world.now += timing().settle_time - Duration::from_millis(1);
    assert!(world.plan(&timers).actions.is_empty());
    assert_eq!(world.plan(&timers).timers.settling[&addr], since, "the timer is not restarted");
    world.now += Duration::from_millis(1);
    assert_eq!(removes(&world.plan(&timers)), vec![(addr, "kube-lb0".to_owned(), Reason::NoUsableEndpoint)]);
    // An endpoint came back: held, no timer left.
    world.endpoints = index(&[slice("web", ME)]);
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty());
    assert!(plan.timers.settling.is_empty());
}

#[test]
fn a_local_address_of_a_local_policy_service_without_any_endpoint_settles_too() {
    let (won, _) = won_and_lost();
    let addr = won[0];
    let mut world = World::new(vec![service("web", "local", &[addr], true)], all_live(), kernel(&[on_eth0(addr)]));
    world.endpoints = index(&[slice("web", ME)]);
    let timers = applied(world.plan(&Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() }));
    assert!(timers.held.contains_key(&addr));
    // Holding it, with nothing kept for a successor: what the others announce decides nothing
    // (mutation testing: `waits_on_holders` → `true`, or its first `!` deleted, went unseen).
    assert!(!timers.waits_on_holders());
    assert!(!Timers::default().waits_on_holders());
    // A rollout: the only endpoint is gone for a moment.
    world.endpoints = index(&[]);
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty(), "kept for the settle time: {:?}", plan.actions);
    let timers = applied(plan);
    world.now += timing().settle_time;
    assert_eq!(removes(&world.plan(&timers)), vec![(addr, "eth0".to_owned(), Reason::NoUsableEndpoint)]);
    // The new endpoint is on n2: n1 keeps it until n2 holds it (make before break).
    world.endpoints = index(&[slice("web", "n2")]);
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert!(plan.timers.losing.contains_key(&addr));
    let timers = applied(plan);
    // What n2 announces decides now: the controller must run a pass when it changes.
    assert!(timers.waits_on_holders());
    world.members = members(&[lease(ME, &[addr], false), lease("n2", &[addr], false), lease("n3", &[], false)]);
    assert_eq!(removes(&world.plan(&timers)), vec![(addr, "eth0".to_owned(), Reason::NotElected)]);
}

#[test]
fn a_lost_local_address_is_kept_until_the_winner_holds_it_or_the_bound_passes() {
    let (_, lost) = won_and_lost();
    let addr = lost[0];
    let winner = elect(NODES, addr).unwrap();
    let mut world = World::new(vec![service("web", "local", &[addr], false)], all_live(), kernel(&[on_eth0(addr)]));
    let timers = Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() };
    let plan = world.plan(&timers);
    assert!(plan.actions.is_empty());
    let timers = applied(plan);
    world.now += timing().handover_bound();
    let plan = world.plan(&timers);
    assert_eq!(removes(&plan), vec![(addr, "eth0".to_owned(), Reason::NotElected)]);
    let Action::Remove { detail, .. } = &plan.actions[0] else { panic!() };
    assert!(detail.contains(&format!("node {winner} is elected")), "{detail}");
}

#[test]
fn a_move_to_another_interface_adds_the_new_place_before_it_removes_the_old_one() {
    let (won, _) = won_and_lost();
    let addr = won[0];
    // Held on eth0 /24; the announce interface is now eth1 (same subnet).
    let mut world = World::new(vec![service("web", "local", &[addr], false)], all_live(), kernel(&[on_eth0(addr)]));
    world.kernel.links.push(link(4, "eth1"));
    world.kernel.addresses.push(address(4, "eth1", ip("192.0.2.12"), 24, false));
    world.announce = vec!["eth1".to_owned()];
    let timers = Timers { held: BTreeMap::from([(addr, held_local(addr))]), ..Timers::default() };
    let plan = world.plan(&timers);
    let add =
        plan.actions.iter().position(|a| matches!(a, Action::Add { spec, .. } if spec.link.to_string() == "eth1"));
    let remove = plan.actions.iter().position(
        |a| matches!(a, Action::Remove { address, stop_announcing: false, reason: Reason::WrongInterface, .. } if address.ifname == "eth0"),
    );
    assert!(add.unwrap() < remove.unwrap(), "{:?}", plan.actions);
    assert_eq!(plan.timers.held[&addr].ifname, "eth1");
}

#[test]
fn an_address_that_failed_dad_is_removed_and_added_again_without_dad() {
    let addr = ip("2001:db8::f0");
    let mut failed = address(2, "eth0", addr, 64, true);
    failed.state.dad_failed = true;
    failed.flags.noprefixroute = true;
    let spec = PoolSpec {
        v6pool: Some(AddressPool {
            pool: "2001:db8::f0/124".into(),
            subnet: "2001:db8::/64".into(),
            aggregation: None,
        }),
        ..PoolSpec::default()
    };
    let mut world = World::new(
        vec![service("web6", "local", &[addr], false)],
        members(&[lease(ME, &[], false)].map(|mut l| {
            l.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(contract::LEASE_ANNOTATION_SUBNETS.to_owned(), "192.0.2.0/24,2001:db8::/64".to_owned());
            l
        })),
        kernel(&[address(2, "eth0", ip("2001:db8::11"), 64, false), failed.clone()]),
    );
    world.groups.insert("local".to_owned(), parse_pool_spec("spec.local", &spec).unwrap());
    let plan = world.plan(&Timers::default());
    assert!(matches!(&plan.actions[0], Action::RemoveFailedDad(a) if *a == failed), "{:?}", plan.actions);
    let [(_, _, AddWhy::NoDad)] = adds(&plan).as_slice() else { panic!("{:?}", plan.actions) };
    assert!(plan.timers.held[&addr].force_nodad && plan.timers.held[&addr].spec.flags.nodad);
}

#[test]
fn failed_actions_are_folded_back_into_the_timers() {
    let (won, lost) = won_and_lost();
    let world = World::new(vec![service("web", "local", &[won[0]], false)], all_live(), kernel(&[on_eth0(lost[0])]));
    let held = held_local(lost[0]);
    let timers = Timers {
        held: BTreeMap::from([(lost[0], held.clone())]),
        losing: HashMap::from([(lost[0], world.now - timing().handover_bound())]),
        ..Timers::default()
    };
    let plan = world.plan(&timers);
    assert_eq!(removes(&plan).len(), 1);
    let mut failures = plan.failures.clone();
    let after = plan.timers.clone().after_apply(
        vec![Outcome::AddFailed { ip: won[0], message: "EPERM".to_owned() }, Outcome::StillHeld(held.clone())],
        &mut failures,
    );
    assert!(!after.held.contains_key(&won[0]));
    assert_eq!(failures[&won[0]], "EPERM");
    assert_eq!(after.held[&lost[0]], held);
    let after = plan.timers.after_apply(vec![Outcome::AnnounceFailed(won[0])], &mut failures);
    assert!(!after.held[&won[0]].announced, "announced again by the next pass");
}

// --- Properties over random snapshots.

/// A random world: which pool addresses Services use (local / remote, policy), which nodes
/// are live, draining or hold what, which endpoints exist, what the kernel has, what this node
/// held before and since when, and whether its Lease is current or it drains.
#[derive(Debug, Clone)]
struct Random {
    services: Vec<(u8, bool, bool)>,
    peers: Vec<(bool, bool, Vec<u8>)>,
    endpoints: Vec<(u8, u8)>,
    kernel: Vec<(u8, u8, bool)>,
    held: Vec<(u8, u8, u8)>,
    lease_ok: bool,
    draining: bool,
    elapsed_ms: u64,
}

fn pool_address(n: u8) -> IpAddr {
    if n.is_multiple_of(2) {
        IpAddr::from([192, 0, 2, 240 + (n / 2) % 16])
    } else {
        IpAddr::from([198, 51, 100, 16 + (n / 2) % 16])
    }
}

fn random() -> impl Strategy<Value = Random> {
    (
        proptest::collection::vec((any::<u8>(), any::<bool>(), any::<bool>()), 0..8),
        proptest::collection::vec((any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..4)), 2),
        proptest::collection::vec((0_u8..8, 0_u8..3), 0..6),
        proptest::collection::vec((any::<u8>(), 0_u8..4, any::<bool>()), 0..8),
        proptest::collection::vec((any::<u8>(), 0_u8..4, 0_u8..4), 0..6),
        any::<bool>(),
        any::<bool>(),
        0_u64..20_000,
    )
        .prop_map(|(services, peers, endpoints, kernel, held, lease_ok, draining, elapsed_ms)| Random {
            services,
            peers,
            endpoints,
            kernel,
            held,
            lease_ok,
            draining,
            elapsed_ms,
        })
}

/// Places: eth0 /24, eth0 /32, kube-lb0 /32, kube-lb0 /28.
fn place(p: u8, addr: IpAddr, marked: bool) -> Address {
    match p % 4 {
        0 => address(2, "eth0", addr, 24, marked),
        1 => address(2, "eth0", addr, 32, marked),
        2 => address(3, "kube-lb0", addr, 32, marked),
        _ => address(3, "kube-lb0", addr, 28, marked),
    }
}

impl Random {
    fn world(&self) -> (World, Timers) {
        let services: Vec<Service> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, (n, local_policy, _))| {
                let addr = pool_address(*n);
                let kind = if n.is_multiple_of(2) { "local" } else { "remote" };
                service(&format!("s{i}"), kind, &[addr], *local_policy)
            })
            .collect();
        let mut leases = vec![lease(ME, &[], self.draining)];
        for (i, (live, draining, holding)) in self.peers.iter().enumerate() {
            if *live {
                let holding: Vec<IpAddr> = holding.iter().map(|n| pool_address(n & !1)).collect();
                leases.push(lease(NODES[i + 1], &holding, *draining));
            }
        }
        let slices: Vec<EndpointSlice> = self
            .endpoints
            .iter()
            .filter(|(s, _)| usize::from(*s) < services.len())
            .map(|(s, node)| slice(&format!("s{s}"), NODES[usize::from(*node)]))
            .collect();
        // The kernel lists an address at most once per interface.
        let mut kernel_addresses: Vec<Address> = Vec::new();
        for (n, p, marked) in &self.kernel {
            let a = place(*p, pool_address(*n), *marked);
            if !kernel_addresses.iter().any(|k| k.ip == a.ip && k.ifname == a.ifname) {
                kernel_addresses.push(a);
            }
        }
        let mut world = World::new(services, members(&leases), kernel(&kernel_addresses));
        world.endpoints = index(&slices);
        world.lease_ok = self.lease_ok;
        world.draining = self.draining;
        let start = world.now;
        world.drain_started = self.draining.then_some(start);
        world.now = start + Duration::from_millis(self.elapsed_ms);
        let mut timers = Timers::default();
        for (n, p, timer) in &self.held {
            let at = place(*p, pool_address(*n), true);
            let kind = if at.ifname == "eth0" { Kind::Local } else { Kind::Remote };
            timers.held.insert(
                at.ip,
                HeldState {
                    spec: AddressSpec::new(at.ifname.clone(), at.ip, at.prefix_len),
                    ifname: at.ifname.clone(),
                    kind,
                    services: Vec::new(),
                    announced: true,
                    quiet_takeover: None,
                    force_nodad: false,
                },
            );
            let map = match timer {
                0 => &mut timers.settling,
                1 => &mut timers.losing,
                2 => &mut timers.yielded,
                _ => &mut timers.handing_over,
            };
            map.insert(at.ip, start);
        }
        (world, timers)
    }
}

type Place = (IpAddr, String, u8);

/// The kernel after every action of `plan` succeeded.
fn kernel_after(kernel: &AddressSnapshot, plan: &Plan) -> AddressSnapshot {
    let mut out = kernel.clone();
    for action in &plan.actions {
        match action {
            Action::Add { spec, .. } => {
                let ifname = spec.link.to_string();
                out.addresses.retain(|a| !(a.ip == spec.ip && a.ifname == ifname));
                let mut added = address(if ifname == "eth0" { 2 } else { 3 }, &ifname, spec.ip, spec.prefix_len, true);
                added.flags = spec.flags;
                out.addresses.push(added);
            }
            Action::Remove { address, .. }
            | Action::LetGoQuietly { address, .. }
            | Action::RemoveFailedDad(address) => {
                out.addresses.retain(|a| place_of(a) != place_of(address));
            }
            Action::EnsureDummy(_) | Action::Announce { .. } => {}
        }
    }
    out
}

fn place_of(a: &Address) -> Place {
    (a.ip, a.ifname.clone(), a.prefix_len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The controller runs no pass when only what the other nodes announce changed and
    /// [`Timers::waits_on_holders`] is false (not draining): the plan after the last one must
    /// then be the same whatever they announce now.
    #[test]
    fn what_the_others_announce_changes_no_plan_unless_a_rule_waits_on_it(
        r in random(),
        now_holding in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 2),
    ) {
        // A draining node always waits on its successors (the controller's rule).
        let r = Random { draining: false, ..r };
        let (before, timers) = r.world();
        let last = before.plan(&timers);
        let timers = applied(last.clone());
        if timers.waits_on_holders() {
            return Ok(());
        }
        let mut r2 = r.clone();
        for (peer, holding) in r2.peers.iter_mut().zip(now_holding) {
            peer.2 = holding;
        }
        let (mut same, _) = r.world();
        let (mut changed, _) = r2.world();
        prop_assert!(same.members.same_election(&changed.members));
        for world in [&mut same, &mut changed] {
            world.kernel = kernel_after(&before.kernel, &last);
            world.now = before.now;
        }
        let (a, b) = (same.plan(&timers), changed.plan(&timers));
        prop_assert_eq!(&a.actions, &b.actions);
        prop_assert_eq!(&a.timers, &b.timers);
        prop_assert_eq!(a.wake_after, b.wake_after);
        prop_assert_eq!(&a.failures, &b.failures);
    }

    #[test]
    fn every_owned_address_ends_in_exactly_one_of_kept_added_or_removed(r in random()) {
        let (world, timers) = r.world();
        let plan = world.plan(&timers);
        let owned: Vec<&Address> = world.kernel.addresses.iter().filter(|a| a.has_purelb_mark()).collect();
        let kept: BTreeSet<Place> = plan.kept.iter().map(|k| place_of(&k.address)).collect();
        let removed: Vec<Place> = plan.removals().map(|(a, _, _)| place_of(a)).collect();
        let removed_set: BTreeSet<Place> = removed.iter().cloned().collect();
        prop_assert_eq!(removed.len(), removed_set.len(), "an address is removed once");
        let added: BTreeSet<Place> =
            plan.additions().map(|s| (s.ip, s.link.to_string(), s.prefix_len)).collect();
        let still_held: BTreeSet<Place> =
            plan.timers.held.values().map(|h| (h.spec.ip, h.ifname.clone(), h.spec.prefix_len)).collect();
        for a in &owned {
            let p = place_of(a);
            let fates = [kept.contains(&p), removed_set.contains(&p), added.contains(&p) && !kept.contains(&p)];
            let count = fates.iter().filter(|f| **f).count();
            // Untouched without a current Lease (kept as held, or an orphan left alone) is the
            // fourth fate, allowed only then, or while a timer keeps a held address.
            if count == 0 {
                prop_assert!(
                    !world.lease_ok || still_held.contains(&p),
                    "{:?} has no fate: {:?}", p, plan.actions
                );
            } else {
                prop_assert_eq!(count, 1, "{:?}: kept {} removed {} added {}", p, fates[0], fates[1], fates[2]);
            }
        }
        // Nothing kept, added or removed that the kernel does not have (adds aside).
        for p in kept.iter().chain(removed_set.iter()) {
            prop_assert!(owned.iter().any(|a| place_of(a) == *p));
        }
    }

    #[test]
    fn no_address_is_removed_where_the_same_plan_adds_it_and_adds_come_first(r in random()) {
        let (world, timers) = r.world();
        let plan = world.plan(&timers);
        let added: Vec<(usize, Place)> = plan.actions.iter().enumerate().filter_map(|(i, a)| match a {
            Action::Add { spec, .. } => Some((i, (spec.ip, spec.link.to_string(), spec.prefix_len))),
            _ => None,
        }).collect();
        for (i, action) in plan.actions.iter().enumerate() {
            let (Action::Remove { address, .. } | Action::LetGoQuietly { address, .. }) = action else { continue };
            let p = place_of(address);
            prop_assert!(!added.iter().any(|(_, a)| *a == p), "{:?} added and removed", p);
            // Moved elsewhere on this node: the new place is added before the old one goes.
            for (j, a) in &added {
                if a.0 == p.0 {
                    prop_assert!(j < &i, "{:?} removed before its new place is added", p);
                }
            }
        }
        // The plan holds every address it adds, and at most one place per address.
        for (_, (ip, ifname, prefix_len)) in &added {
            let h = &plan.timers.held[ip];
            prop_assert_eq!((&h.ifname, h.spec.prefix_len), (ifname, *prefix_len));
        }
    }

    #[test]
    fn without_a_current_lease_or_while_draining_no_local_address_is_claimed_anew(r in random()) {
        let (world, timers) = r.world();
        let plan = world.plan(&timers);
        if !world.lease_ok || world.draining {
            for spec in plan.additions() {
                let before = timers.held.get(&spec.ip);
                let local = spec.link.to_string() == "eth0";
                prop_assert!(
                    !local || before.is_some_and(|h| h.ifname == "eth0" && h.spec.prefix_len == spec.prefix_len),
                    "new local claim of {} (lease_ok {}, draining {})", spec.ip, world.lease_ok, world.draining
                );
            }
        }
        if !world.lease_ok {
            // Nothing removed but an old place of an address held elsewhere now.
            for (address, _, _) in plan.removals() {
                prop_assert!(plan.timers.held.get(&address.ip).is_some_and(|h| h.ifname != address.ifname || h.spec.prefix_len != address.prefix_len));
            }
        }
    }

    #[test]
    fn every_address_held_afterwards_is_wanted_or_kept_by_a_rule(r in random()) {
        let (world, timers) = r.world();
        let plan = world.plan(&timers);
        for (ip, h) in &plan.timers.held {
            let wanted = plan.decision.wanted.contains_key(ip);
            let timer = plan.timers.settling.contains_key(ip)
                || plan.timers.losing.contains_key(ip)
                || plan.timers.handing_over.contains_key(ip);
            let frozen = !world.lease_ok || (world.draining && h.kind == Kind::Local);
            prop_assert!(wanted || timer || frozen, "{} held without a reason", ip);
            if timer {
                prop_assert!(plan.wake_after.is_some() || plan.timers.handing_over.contains_key(ip), "a timer without a wake-up");
            }
        }
    }
}
