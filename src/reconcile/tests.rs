//! Pure tests of `purelb reconcile`: membership with this node counted, the orphans of a node and
//! why, `--all`, and the report formats. The kernel and cluster paths are covered by
//! `tests/reconcile.rs` (root, private network namespaces) and `e2e/tests/reconcile.rs` (lab).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};

use super::{
    plan::{self, Plan, Reason},
    report::{KeptEntry, LinkEntry, Mode, OrphanEntry, Report},
};
use crate::{
    agent::plan::{Snapshot, Timing},
    api::{AddressOptions, AddressPool, PoolSpec, contract},
    core::{
        election::{Members, elect},
        endpoints::EndpointIndex,
        ipam::{AddressRange, ParsedPools, Subnet, parse_pool_spec},
        netlink::{
            Address, AddressFlags, AddressSnapshot, AddressState, Link, MarkSupport, PURELB_ADDRESS_PROTOCOL,
            PURELB_LINK_ALIAS,
        },
    },
};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn lease(node: &str, subnets: &str, renewed: Timestamp, draining: bool) -> Lease {
    let mut annotations = BTreeMap::from([(contract::LEASE_ANNOTATION_SUBNETS.to_owned(), subnets.to_owned())]);
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
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    }
}

fn live(node: &str) -> Lease {
    lease(node, "192.0.2.0/24", now(), false)
}

fn service(name: &str, kind: &str, group: &str, ips: &[IpAddr], policy: Option<&str>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            annotations: Some(BTreeMap::from([
                (contract::ANNOTATION_POOL_TYPE.to_owned(), kind.to_owned()),
                (contract::ANNOTATION_ALLOCATED_FROM.to_owned(), group.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            external_traffic_policy: policy.map(Into::into),
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

fn groups() -> HashMap<String, ParsedPools> {
    let local = PoolSpec {
        v4pool: Some(AddressPool { pool: "192.0.2.240/28".into(), subnet: "192.0.2.0/24".into(), aggregation: None }),
        ..PoolSpec::default()
    };
    let remote = PoolSpec {
        v4pool: Some(AddressPool {
            pool: "198.51.100.16/28".into(),
            subnet: "198.51.100.0/24".into(),
            aggregation: Some("/28".into()),
        }),
        ..PoolSpec::default()
    };
    HashMap::from([
        ("local".to_owned(), parse_pool_spec("spec.local", &local).unwrap()),
        ("remote".to_owned(), parse_pool_spec("spec.remote", &remote).unwrap()),
    ])
}

fn link(index: u32, name: &str, alias: Option<&str>) -> Link {
    Link {
        index,
        name: name.to_owned(),
        kind: Some("bridge".to_owned()),
        admin_up: true,
        lower_up: true,
        loopback: false,
        promote_secondaries: None,
        alias: alias.map(str::to_owned),
    }
}

fn address(index: u32, ifname: &str, text: &str, prefix_len: u8, marked: bool) -> Address {
    Address {
        index,
        ifname: ifname.to_owned(),
        ip: ip(text),
        prefix_len,
        flags: AddressFlags::default(),
        state: AddressState::default(),
        valid_lifetime: None,
        preferred_lifetime: None,
        protocol: marked.then_some(PURELB_ADDRESS_PROTOCOL),
    }
}

/// `plan::node_plan` on the eth0 / kube-lb0 node `n1`.
fn node_plan(
    services: &[Service],
    members: &Members,
    snapshot: &AddressSnapshot,
    ranges: &[AddressRange],
    marks: MarkSupport,
) -> Plan {
    let groups = groups();
    let endpoints = EndpointIndex::new();
    let services: Vec<&Service> = services.iter().collect();
    let announce = vec!["eth0".to_owned()];
    plan::node_plan(&Snapshot {
        node: "n1",
        services: &services,
        members,
        endpoints: &endpoints,
        groups: &groups,
        ranges,
        kernel: snapshot,
        announce: &announce,
        dummy_interface: "kube-lb0",
        local_options: AddressOptions::local_default(),
        dummy_options: AddressOptions::dummy_default(),
        marks,
        lease_ok: true,
        draining: false,
        drain_started: None,
        now: std::time::Instant::now(),
        timing: Timing {
            lease_duration: std::time::Duration::ZERO,
            handover_timeout: std::time::Duration::ZERO,
            settle_time: std::time::Duration::ZERO,
            quiet_wait: std::time::Duration::ZERO,
            race_wait: std::time::Duration::ZERO,
        },
    })
}

/// Pool addresses 192.0.2.240.. that `n1` wins and loses among n1..n3 (fixed by the hash).
fn won_and_lost() -> (Vec<IpAddr>, Vec<IpAddr>) {
    (240..=254_u8).map(|last| IpAddr::from([192, 0, 2, last])).partition(|a| elect(NODES, *a) == Some("n1"))
}

#[test]
fn reconcile_counts_its_own_node_whatever_its_lease_says() {
    let subnets = vec![Subnet::new(ip("192.0.2.0"), 24)];
    let long_ago = Timestamp::from_second(1_700_000_000).unwrap();
    for own in [None, Some(lease("n1", "192.0.2.0/24", long_ago, false)), Some(lease("n1", "", now(), true))] {
        let mut leases = vec![live("n2"), lease("n3", "192.0.2.0/24", long_ago, false)];
        leases.extend(own.clone());
        let members = plan::members_with_self("n1", &leases, &subnets, now()).unwrap();
        let me = members.get("n1").unwrap_or_else(|| panic!("n1 missing with own Lease {own:?}"));
        assert!(!me.draining);
        assert_eq!(me.subnets, subnets);
        assert!(members.get("n2").is_some(), "live peers count");
        assert!(members.get("n3").is_none(), "expired peers do not");
    }
}

#[test]
fn reconcile_keeps_what_the_node_wins_and_names_the_reason_for_each_orphan() {
    let (won, lost) = won_and_lost();
    let (mine, theirs, deleted) = (won[0], lost[0], lost[1]);
    let admin = won[1];
    let leases: Vec<Lease> = vec![live("n2"), live("n3")];
    let subnets = vec![Subnet::new(ip("192.0.2.0"), 24)];
    // n1 has no Lease yet (an init container before the agent): it still counts.
    let members = plan::members_with_self("n1", &leases, &subnets, now()).unwrap();
    let services = [
        service("mine", "local", "local", &[mine], None),
        service("theirs", "local", "local", &[theirs], None),
        service("routed", "remote", "remote", &[ip("198.51.100.16"), ip("198.51.100.17")], None),
        service("local-policy", "remote", "remote", &[ip("198.51.100.18")], Some("Local")),
        service("nobody", "local", "local", &[ip("192.0.2.239")], Some("Local")),
    ];
    let snapshot = AddressSnapshot {
        links: vec![link(2, "eth0", None), link(3, "kube-lb0", None), link(4, "other0", None)],
        addresses: vec![
            address(2, "eth0", "192.0.2.11", 24, false),
            address(2, "eth0", &mine.to_string(), 24, true),
            address(2, "eth0", &theirs.to_string(), 24, true),
            address(2, "eth0", &deleted.to_string(), 24, true),
            address(2, "eth0", &admin.to_string(), 24, false),
            address(2, "eth0", "192.0.2.239", 24, true),
            address(3, "kube-lb0", "198.51.100.16", 28, true),
            address(3, "kube-lb0", "198.51.100.17", 32, true),
            address(3, "kube-lb0", "198.51.100.18", 28, true),
            // Marked, on an interface PureLB does not manage: still PureLB's (the mark decides).
            address(4, "other0", "203.0.113.5", 32, true),
            address(4, "other0", "203.0.113.6", 32, false),
        ],
    };
    let plan = node_plan(&services, &members, &snapshot, &[], MarkSupport::Stored);
    let kept: Vec<(IpAddr, &str)> = plan.kept.iter().map(|k| (k.address.ip, k.address.ifname.as_str())).collect();
    assert_eq!(kept, vec![(mine, "eth0"), (ip("198.51.100.16"), "kube-lb0")]);
    assert_eq!(plan.kept[0].services[0].to_string(), "default/mine");
    let orphans: BTreeMap<IpAddr, (Reason, String)> =
        plan.orphans.iter().map(|o| (o.address.ip, (o.reason, o.detail.clone()))).collect();
    assert_eq!(orphans.len(), 6, "{orphans:#?}");
    let winner = elect(NODES, theirs).unwrap();
    assert_eq!(orphans[&theirs].0, Reason::NotElected);
    assert!(orphans[&theirs].1.contains(&format!("node {winner} is elected")), "{}", orphans[&theirs].1);
    assert_eq!(orphans[&deleted].0, Reason::ServiceDeleted);
    assert_eq!(orphans[&ip("198.51.100.17")].0, Reason::WrongInterface);
    assert!(orphans[&ip("198.51.100.17")].1.contains("kube-lb0 with prefix length /28"));
    assert_eq!(orphans[&ip("198.51.100.18")].0, Reason::NoUsableEndpoint);
    assert!(orphans[&ip("198.51.100.18")].1.contains("default/local-policy"));
    assert_eq!(orphans[&ip("192.0.2.239")].0, Reason::NoUsableEndpoint);
    assert!(!orphans.contains_key(&admin), "unmarked addresses are never orphans");
    assert_eq!(orphans[&ip("203.0.113.5")].0, Reason::ServiceDeleted, "the mark decides, as in the agent");
    assert!(!orphans.contains_key(&ip("203.0.113.6")));
}

#[test]
fn reconcile_treats_unmarked_pool_addresses_as_owned_only_on_kernels_without_marks() {
    let members = plan::members_with_self("n1", &[], &[Subnet::new(ip("192.0.2.0"), 24)], now()).unwrap();
    let groups = groups();
    let snapshot = AddressSnapshot {
        links: vec![link(2, "eth0", None)],
        addresses: vec![address(2, "eth0", "192.0.2.11", 24, false), address(2, "eth0", "192.0.2.241", 24, false)],
    };
    let ranges: Vec<_> = groups.values().flat_map(|g| g.all().map(|r| r.range)).collect();
    let plan_with = |marks| node_plan(&[], &members, &snapshot, &ranges, marks);
    assert!(plan_with(MarkSupport::Stored).orphans.is_empty());
    let old_kernel = plan_with(MarkSupport::NotStored);
    assert_eq!(old_kernel.orphans.len(), 1);
    assert_eq!(old_kernel.orphans[0].address.ip, ip("192.0.2.241"));
}

#[test]
fn reconcile_all_takes_every_marked_address_and_only_links_purelb_created() {
    let snapshot = AddressSnapshot {
        links: vec![
            link(2, "eth0", None),
            link(3, "kube-lb0", Some(PURELB_LINK_ALIAS)),
            link(4, "kube-lb1", Some(PURELB_LINK_ALIAS)),
            link(5, "br-admin", Some("created by someone")),
        ],
        addresses: vec![
            address(2, "eth0", "192.0.2.11", 24, false),
            address(2, "eth0", "192.0.2.240", 24, true),
            address(3, "kube-lb0", "198.51.100.16", 28, true),
            address(3, "kube-lb0", "fe80::1", 64, false),
            address(4, "kube-lb1", "198.51.100.17", 32, true),
            address(4, "kube-lb1", "203.0.113.9", 32, false),
            address(5, "br-admin", "2001:db8::5", 64, true),
        ],
    };
    let plan = plan::all_plan(&snapshot);
    let orphans: Vec<String> = plan.orphans.iter().map(|o| o.address.ip.to_string()).collect();
    assert_eq!(orphans, ["192.0.2.240", "198.51.100.16", "198.51.100.17", "2001:db8::5"]);
    assert!(plan.orphans.iter().all(|o| o.reason == Reason::All));
    let links: Vec<(&str, bool)> = plan.links.iter().map(|l| (l.link.name.as_str(), l.remove)).collect();
    assert_eq!(links, [("kube-lb0", true), ("kube-lb1", false)], "link-local addresses do not keep a link");
    assert!(plan.links[1].detail.contains("203.0.113.9/32"), "{}", plan.links[1].detail);
}

fn sample_report(dry_run: bool) -> Report {
    let snapshot_address = address(2, "eth0", "192.0.2.241", 24, true);
    let plan = Plan {
        orphans: vec![plan::Orphan {
            address: snapshot_address.clone(),
            reason: Reason::ServiceDeleted,
            detail: "gone".to_owned(),
        }],
        kept: vec![plan::Kept {
            address: address(3, "kube-lb0", "198.51.100.16", 28, true),
            services: vec![crate::core::endpoints::ServiceKey::new("default", "routed")],
        }],
        links: Vec::new(),
    };
    let mut orphans: Vec<OrphanEntry> = plan.orphans.iter().map(OrphanEntry::planned).collect();
    if !dry_run {
        orphans[0].removed = true;
    }
    Report {
        mode: Mode::Node,
        node: Some("n1".to_owned()),
        dry_run,
        orphans,
        links: Vec::<LinkEntry>::new(),
        kept: plan.kept.iter().map(KeptEntry::from_kept).collect(),
    }
}

#[test]
fn reconcile_reports_as_json_and_text() {
    let report = sample_report(true);
    let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
    assert_eq!(json["mode"], "node");
    assert_eq!(json["node"], "n1");
    assert_eq!(json["dryRun"], true);
    let orphan = &json["orphans"][0];
    assert_eq!(orphan["interface"], "eth0");
    assert_eq!(orphan["address"], "192.0.2.241/24");
    assert_eq!(orphan["reason"], "service deleted");
    assert_eq!(orphan["removed"], false);
    assert!(orphan.get("error").is_none());
    assert_eq!(json["kept"][0]["services"][0], "default/routed");
    assert_eq!(report.found(), 1);
    assert_eq!(report.failures(), 0);

    let text = report.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "would remove 192.0.2.241/24 from eth0: service deleted (gone)");
    assert!(lines[1].starts_with("node n1: 1 orphaned address found, none removed (dry run)"), "{}", lines[1]);
    let text = sample_report(false).text();
    assert!(text.starts_with("removed 192.0.2.241/24 from eth0"), "{text}");
    assert!(text.contains("1 removed; 1 PureLB address this node should hold kept"), "{text}");

    let mut failed = sample_report(false);
    failed.orphans[0].removed = false;
    failed.orphans[0].error = Some("EPERM".to_owned());
    assert_eq!(failed.failures(), 1);
    assert!(failed.text().starts_with("cannot remove 192.0.2.241/24 from eth0: service deleted (gone): EPERM"));
}

#[test]
fn reconcile_reasons_read_the_same_in_json_and_text() {
    for reason in [
        Reason::ServiceDeleted,
        Reason::NotElected,
        Reason::NoUsableEndpoint,
        Reason::WrongInterface,
        Reason::HandedOver,
        Reason::All,
    ] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
}
