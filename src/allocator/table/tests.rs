#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use super::*;
use crate::{api::ServiceGroup, k8s_openapi::api::core::v1::Service};

const NS: &str = "purelb-system";

fn sg(name: &str, spec: Value) -> ServiceGroup {
    serde_json::from_value(json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup",
        "metadata": {"name": name, "namespace": NS, "generation": 1}, "spec": spec}))
    .unwrap()
}

fn local(v4: &str, v6: Option<&str>) -> Value {
    let mut p = json!({"v4pool": {"pool": v4, "subnet": "192.0.2.0/24"}});
    if let Some(v6) = v6 {
        p["v6pool"] = json!({"pool": v6, "subnet": "2001:db8::/64"});
    }
    json!({"local": p})
}

struct Svc(Value);

fn svc(ns: &str, name: &str) -> Svc {
    Svc(json!({"metadata": {"name": name, "namespace": ns, "annotations": {}},
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80, "protocol": "TCP"}]}}))
}

impl Svc {
    fn ann(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["annotations"][k] = json!(v);
        self
    }
    fn group(self, g: &str) -> Self {
        self.ann("purelb.io/service-group", g)
    }
    fn pin(self, a: &str) -> Self {
        self.ann("purelb.io/addresses", a)
    }
    fn share(self, k: &str) -> Self {
        self.ann("purelb.io/allow-shared-ip", k)
    }
    fn families(mut self, policy: &str, fams: &[&str]) -> Self {
        self.0["spec"]["ipFamilyPolicy"] = json!(policy);
        self.0["spec"]["ipFamilies"] = json!(fams);
        self
    }
    fn port(mut self, p: i32) -> Self {
        self.0["spec"]["ports"] = json!([{"port": p, "protocol": "TCP"}]);
        self
    }
    fn set(mut self, path: &str, v: Value) -> Self {
        self.0["spec"][path] = v;
        self
    }
    fn status(mut self, ips: &[&str], from: &str) -> Self {
        self.0["status"] =
            json!({"loadBalancer": {"ingress": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}});
        self = self.ann("purelb.io/allocated-by", "PureLB").ann("purelb.io/allocated-from", from);
        self
    }
    fn req(&self) -> ServiceRequest {
        let s: Service = serde_json::from_value(self.0.clone()).unwrap();
        ServiceRequest::from_service(&s, "purelb.io/purelbv2", true)
    }
}

fn alloc(groups: &[ServiceGroup]) -> Allocator {
    Allocator::new(GroupSet::build(groups.iter(), NS))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addrs(d: &Decision) -> Vec<IpAddr> {
    match d {
        Decision::Changed { holding, .. } | Decision::Keep { holding, .. } => holding.addresses.clone(),
        other => panic!("expected an allocation, got {other:?}"),
    }
}

fn failure(d: &Decision) -> &Failure {
    match d {
        Decision::Failed { failure, .. } => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn default_group_and_lowest_address() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    assert_eq!(addrs(&a.decide(&svc("web", "a").req(), NS)), [ip("192.0.2.240")]);
    assert_eq!(addrs(&a.decide(&svc("web", "b").req(), NS)), [ip("192.0.2.241")]);
    let again = a.decide(&svc("web", "a").req(), NS);
    assert!(matches!(again, Decision::Keep { .. }), "idempotent: {again:?}");
}

#[test]
fn pool_precedence_pin_then_annotation_then_namespace_then_default() {
    let groups = [
        sg("default", local("192.0.2.10/32", None)),
        sg(
            "team",
            json!({"local": {"v4pool": {"pool": "192.0.2.20/32", "subnet": "192.0.2.0/24"}}, "namespaces": ["shop"]}),
        ),
        sg("named", local("192.0.2.30/31", None)),
    ];
    let mut a = alloc(&groups);
    // Pin wins over the annotation's group... only when they agree; here the pin decides.
    assert_eq!(addrs(&a.decide(&svc("shop", "pinned").pin("192.0.2.31").req(), NS)), [ip("192.0.2.31")]);
    assert_eq!(a.holding(&ServiceKey::new("shop", "pinned")).unwrap().group, "named");
    assert_eq!(addrs(&a.decide(&svc("shop", "annotated").group("named").req(), NS)), [ip("192.0.2.30")]);
    assert_eq!(addrs(&a.decide(&svc("shop", "ns-default").req(), NS)), [ip("192.0.2.20")]);
    assert_eq!(addrs(&a.decide(&svc("other", "fallback").req(), NS)), [ip("192.0.2.10")]);
    let f = a.decide(&svc("shop", "conflicting").pin("192.0.2.10").group("named").req(), NS);
    assert!(
        failure(&f).message.contains("belongs to ServiceGroup default but purelb.io/service-group says named"),
        "{f:?}"
    );
}

#[test]
fn namespace_default_tie_break_and_enforcement() {
    let groups = [
        sg(
            "a",
            json!({"local": {"v4pool": {"pool": "192.0.2.1/32", "subnet": "192.0.2.0/24"}}, "namespaces": ["shop"]}),
        ),
        sg(
            "b",
            json!({"local": {"v4pool": {"pool": "192.0.2.2/32", "subnet": "192.0.2.0/24"}}, "namespaces": ["shop"], "namespaceDefault": true}),
        ),
        sg(
            "fence",
            json!({"local": {"v4pool": {"pool": "192.0.2.3/32", "subnet": "192.0.2.0/24"}}, "namespaces": ["secure"], "enforceNamespaces": true}),
        ),
        sg("default", local("192.0.2.4/32", None)),
    ];
    let mut a = alloc(&groups);
    assert_eq!(addrs(&a.decide(&svc("shop", "x").req(), NS)), [ip("192.0.2.2")], "namespaceDefault breaks the tie");
    // An enforcing group serves no other namespace.
    let f = a.decide(&svc("shop", "y").group("fence").req(), NS);
    assert_eq!(failure(&f).reason, FailReason::NamespaceDenied);
    assert!(failure(&f).message.contains("namespace shop may not use it"), "{f:?}");
    // A fenced namespace may only use groups that list it.
    let f = a.decide(&svc("secure", "z").group("default").req(), NS);
    assert_eq!(failure(&f).reason, FailReason::NamespaceDenied);
    assert_eq!(addrs(&a.decide(&svc("secure", "ok").req(), NS)), [ip("192.0.2.3")]);
}

#[test]
fn family_policies() {
    let mut a = alloc(&[
        sg("default", local("192.0.2.240/30", Some("2001:db8::f0/126"))),
        sg("v4only", json!({"local": {"v4pool": {"pool": "192.0.2.100/32", "subnet": "192.0.2.0/24"}}})),
    ]);
    assert_eq!(
        addrs(&a.decide(&svc("n", "single6").families("SingleStack", &["IPv6"]).req(), NS)),
        [ip("2001:db8::f0")]
    );
    assert_eq!(
        addrs(&a.decide(&svc("n", "prefer").families("PreferDualStack", &["IPv6", "IPv4"]).req(), NS)),
        [ip("2001:db8::f1"), ip("192.0.2.240")]
    );
    assert_eq!(
        addrs(&a.decide(
            &svc("n", "prefer-v4only").families("PreferDualStack", &["IPv4", "IPv6"]).group("v4only").req(),
            NS
        )),
        [ip("192.0.2.100")]
    );
    let f = a.decide(&svc("n", "require").families("RequireDualStack", &["IPv4", "IPv6"]).group("v4only").req(), NS);
    assert_eq!(failure(&f).reason, FailReason::Family);
    assert_eq!(
        addrs(&a.decide(&svc("n", "require-ok").families("RequireDualStack", &["IPv4", "IPv6"]).req(), NS)).len(),
        2
    );
}

#[test]
fn partial_dual_stack_failure_rolls_back() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", Some("2001:db8::f0/128")))]);
    assert_eq!(
        addrs(&a.decide(&svc("n", "takes-v6").families("SingleStack", &["IPv6"]).req(), NS)),
        [ip("2001:db8::f0")]
    );
    let f = a.decide(&svc("n", "dual").families("RequireDualStack", &["IPv4", "IPv6"]).req(), NS);
    assert_eq!(failure(&f).reason, FailReason::PoolFull);
    assert_eq!(a.stats("default").allocated[&Family::V4], 0, "the IPv4 address taken in this pass was given back");
    assert_eq!(addrs(&a.decide(&svc("n", "v4").req(), NS)), [ip("192.0.2.240")]);
}

#[test]
fn gaining_and_losing_a_family_keeps_the_other() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", Some("2001:db8::f0/126")))]);
    let single = svc("n", "s");
    assert_eq!(addrs(&a.decide(&single.req(), NS)), [ip("192.0.2.240")]);
    let dual = svc("n", "s").families("PreferDualStack", &["IPv4", "IPv6"]);
    let d = a.decide(&dual.req(), NS);
    assert_eq!(addrs(&d), [ip("192.0.2.240"), ip("2001:db8::f0")], "keeps IPv4, gains IPv6");
    let back = a.decide(&svc("n", "s").req(), NS);
    match back {
        Decision::Changed { holding, released, .. } => {
            assert_eq!(holding.addresses, [ip("192.0.2.240")]);
            assert_eq!(released, [ip("2001:db8::f0")]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.stats("default").allocated[&Family::V6], 1, "taken until the status no longer shows it");
    assert!(a.confirm_released(&ServiceKey::new("n", "s")));
    assert_eq!(a.stats("default").allocated[&Family::V6], 0);
}

#[test]
fn an_address_given_up_goes_to_no_one_else_until_the_status_is_written() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", Some("2001:db8::f0/128")))]);
    let dual = |name: &str| svc("n", name).families("PreferDualStack", &["IPv4", "IPv6"]);
    assert_eq!(addrs(&a.decide(&dual("a").req(), NS)), [ip("192.0.2.240"), ip("2001:db8::f0")]);
    assert!(matches!(a.decide(&svc("n", "a").req(), NS), Decision::Changed { .. }));
    // The write of a's status has not landed: b must not get a's IPv6 address yet.
    let early = a.decide(&dual("b").req(), NS);
    assert!(matches!(&early, Decision::Failed { .. }), "{early:?}");
    assert!(a.confirm_released(&ServiceKey::new("n", "a")));
    assert!(!a.confirm_released(&ServiceKey::new("n", "a")), "once");
    assert_eq!(addrs(&a.decide(&dual("b").req(), NS)), [ip("192.0.2.241"), ip("2001:db8::f0")]);
}

#[test]
fn sharing_and_its_conflicts() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    let one = addrs(&a.decide(&svc("n", "dns-tcp").share("dns").port(53).req(), NS));
    let mut udp = svc("n", "dns-udp").share("dns");
    udp.0["spec"]["ports"] = json!([{"port": 53, "protocol": "UDP"}]);
    assert_eq!(addrs(&a.decide(&udp.req(), NS)), one, "same key, different protocol: shared");
    let f = a.decide(&svc("n", "dns-clash").share("dns").port(53).req(), NS);
    assert_eq!(failure(&f).reason, FailReason::PortConflict);
    assert!(failure(&f).message.contains("53/TCP") && failure(&f).message.contains("n/dns-tcp"), "{f:?}");
    let f = a.decide(&svc("n", "pin-shared").pin(&one[0].to_string()).port(8080).req(), NS);
    assert_eq!(failure(&f).reason, FailReason::SharingConflict);
    let f = a.decide(&svc("n", "other-key").share("web").pin(&one[0].to_string()).port(9).req(), NS);
    assert_eq!(failure(&f).reason, FailReason::SharingConflict);
    // Another key: the message names the key in use, so the user knows which value shares it.
    assert!(failure(&f).message.contains("with sharing key \"dns\""), "{f:?}");
    // The address is freed only when the last user goes.
    a.forget(&ServiceKey::new("n", "dns-tcp"));
    assert_eq!(a.users_of(one[0]), [ServiceKey::new("n", "dns-udp")]);
    a.forget(&ServiceKey::new("n", "dns-udp"));
    assert!(a.users_of(one[0]).is_empty());
    assert_eq!(a.stats("default").allocated[&Family::V4], 0);
}

#[test]
fn live_changes_reallocate_and_nothing_else_moves_addresses() {
    let groups = [
        sg("default", local("192.0.2.240/30", None)),
        sg("other", json!({"local": {"v4pool": {"pool": "192.0.2.10/31", "subnet": "192.0.2.0/24"}}})),
    ];
    let mut a = alloc(&groups);
    assert_eq!(addrs(&a.decide(&svc("n", "s").req(), NS)), [ip("192.0.2.240")]);
    // Annotation changes the group: re-allocated.
    let moved = a.decide(&svc("n", "s").group("other").req(), NS);
    assert!(matches!(&moved, Decision::Changed { released, .. } if released == &[ip("192.0.2.240")]), "{moved:?}");
    assert_eq!(addrs(&moved), [ip("192.0.2.10")]);
    // Pin changes: re-allocated within the group.
    assert_eq!(addrs(&a.decide(&svc("n", "s").group("other").pin("192.0.2.11").req(), NS)), [ip("192.0.2.11")]);
    // A new namespace default group does not move a Service that never asked for one.
    let mut b = alloc(&groups);
    assert_eq!(addrs(&b.decide(&svc("shop", "s").req(), NS)), [ip("192.0.2.240")]);
    let with_ns_group = [
        groups[0].clone(),
        groups[1].clone(),
        sg(
            "shopgroup",
            json!({"local": {"v4pool": {"pool": "192.0.2.50/32", "subnet": "192.0.2.0/24"}}, "namespaces": ["shop"]}),
        ),
    ];
    b.set_groups(GroupSet::build(with_ns_group.iter(), NS));
    assert!(matches!(b.decide(&svc("shop", "s").req(), NS), Decision::Keep { .. }));
}

#[test]
fn pool_edit_keeps_held_addresses_and_counts_them() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    assert_eq!(addrs(&a.decide(&svc("n", "s").req(), NS)), [ip("192.0.2.240")]);
    // The pool shrinks to a range that still contains the address: nothing moves.
    a.set_groups(GroupSet::build([sg("default", local("192.0.2.240/29", None))].iter(), NS));
    assert!(matches!(a.decide(&svc("n", "s").req(), NS), Decision::Keep { ref warnings, .. } if warnings.is_empty()));
    // The pool moves away entirely: the Service keeps it, with a warning, counted as outside.
    a.set_groups(GroupSet::build([sg("default", local("192.0.2.100/30", None))].iter(), NS));
    match a.decide(&svc("n", "s").req(), NS) {
        Decision::Keep { holding, warnings } => {
            assert_eq!(holding.addresses, [ip("192.0.2.240")]);
            assert!(warnings[0].contains("no longer in any range"), "{warnings:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.stats("default").outside, 1);
    // The group becomes invalid or is deleted: still kept.
    a.set_groups(GroupSet::build(
        [sg("default", json!({"local": {"v4pool": {"pool": "bad", "subnet": "192.0.2.0/24"}}}))].iter(),
        NS,
    ));
    assert!(
        matches!(a.decide(&svc("n", "s").req(), NS), Decision::Keep { ref holding, .. } if holding.addresses == [ip("192.0.2.240")])
    );
    a.set_groups(GroupSet::default());
    assert!(matches!(a.decide(&svc("n", "s").req(), NS), Decision::Keep { .. }));
}

#[test]
fn release_on_type_change_class_change_and_deletion() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    for name in ["t", "c", "d"] {
        a.decide(&svc("n", name).req(), NS);
    }
    assert!(matches!(a.decide(&svc("n", "t").set("type", json!("ClusterIP")).req(), NS), Decision::Released(_)));
    assert!(matches!(
        a.decide(&svc("n", "c").set("loadBalancerClass", json!("other.io/lb")).req(), NS),
        Decision::Released(_)
    ));
    assert_eq!(a.addresses_in_use(), 3, "given up, but taken until the cleared status is written");
    assert!(a.confirm_released(&ServiceKey::new("n", "t")));
    assert!(a.confirm_released(&ServiceKey::new("n", "c")));
    let existing: HashSet<ServiceKey> = [ServiceKey::new("n", "t"), ServiceKey::new("n", "c")].into();
    let gone = a.forget_missing(&existing);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].0, ServiceKey::new("n", "d"));
    assert_eq!(a.addresses_in_use(), 0);
    assert!(matches!(a.decide(&svc("n", "t").set("type", json!("ClusterIP")).req(), NS), Decision::NotHandled));
}

#[test]
fn pinned_address_outside_every_pool_is_refused() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    let f = a.decide(&svc("n", "s").pin("198.51.100.7").req(), NS);
    assert_eq!(failure(&f).reason, FailReason::OutsidePools);
    assert!(failure(&f).message.contains("198.51.100.7"), "{f:?}");
    let f = a.decide(&svc("n", "s").pin("not-an-ip").req(), NS);
    assert_eq!(failure(&f).reason, FailReason::Malformed);
    assert!(failure(&f).message.contains("purelb.io/addresses") && failure(&f).message.contains("not-an-ip"), "{f:?}");
}

#[test]
fn exhaustion_then_release_then_the_waiting_service_gets_it() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/31", None))]);
    a.decide(&svc("n", "a").req(), NS);
    a.decide(&svc("n", "b").req(), NS);
    let f = a.decide(&svc("n", "c").req(), NS);
    assert_eq!(failure(&f).reason, FailReason::PoolFull);
    assert!(failure(&f).message.contains("ServiceGroup default has no free IPv4 address"), "{f:?}");
    a.forget(&ServiceKey::new("n", "a"));
    assert_eq!(addrs(&a.decide(&svc("n", "c").req(), NS)), [ip("192.0.2.240")]);
}

#[test]
fn adoption_keeps_addresses_and_new_services_avoid_them() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    // As the Go PureLB leaves them: annotations and status, possibly a non-lowest address.
    a.adopt(&svc("n", "old1").status(&["192.0.2.242"], "default").req()).unwrap();
    a.adopt(&svc("n", "old2").status(&["192.0.2.240"], "default").req()).unwrap();
    assert!(matches!(a.decide(&svc("n", "old1").status(&["192.0.2.242"], "default").req(), NS), Decision::Keep { .. }));
    assert_eq!(addrs(&a.decide(&svc("n", "new").req(), NS)), [ip("192.0.2.241")]);
    assert_eq!(addrs(&a.decide(&svc("n", "new2").req(), NS)), [ip("192.0.2.243")]);
    // A second claim on the same address without a sharing key is refused.
    let e = a.adopt(&svc("n", "dup").status(&["192.0.2.240"], "default").req()).unwrap_err();
    assert_eq!(e.reason, FailReason::SharingConflict);
}

#[test]
fn unknown_invalid_and_elsewhere_groups_are_explained() {
    let mut elsewhere = sg("remote-team", local("192.0.2.1/32", None));
    elsewhere.metadata.namespace = Some("team".into());
    let groups = [
        sg("default", local("192.0.2.240/30", None)),
        sg("broken", json!({"local": {"v4pool": {"pool": "192.0.2.250-192.0.2.240", "subnet": "192.0.2.0/24"}}})),
        elsewhere,
    ];
    let mut a = alloc(&groups);
    let f = a.decide(&svc("n", "s").group("nope").req(), NS);
    assert!(failure(&f).message.contains("ServiceGroup nope does not exist in namespace purelb-system"), "{f:?}");
    let f = a.decide(&svc("n", "s").group("broken").req(), NS);
    assert!(
        failure(&f).message.contains("ServiceGroup broken is invalid") && failure(&f).message.contains("reversed"),
        "{f:?}"
    );
    let f = a.decide(&svc("n", "s").group("remote-team").req(), NS);
    assert!(failure(&f).message.contains("team/remote-team is not in PureLB's namespace"), "{f:?}");
}

#[test]
fn overlapping_groups_later_one_is_invalid_whatever_the_order() {
    let a = sg("aaa", local("192.0.2.240/29", None));
    let b = sg("bbb", local("192.0.2.244/30", None));
    for order in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
        let set = GroupSet::build(order.iter(), NS);
        assert!(set.valid.contains_key("aaa"));
        assert!(
            set.invalid["bbb"]
                .message
                .contains("overlaps spec.local.v4pool.pool \"192.0.2.240/29\" of ServiceGroup purelb-system/aaa"),
            "{:?}",
            set.invalid
        );
    }
}

#[test]
fn balance_pools_spreads_allocations() {
    let spec = json!({"local": {"balancePools": true, "v4pools": [
        {"pool": "192.0.2.10/31", "subnet": "192.0.2.0/24"}, {"pool": "192.0.2.20/31", "subnet": "192.0.2.0/24"}]}});
    let mut a = alloc(&[sg("default", spec)]);
    let got: Vec<IpAddr> = ["a", "b", "c", "d"].iter().flat_map(|n| addrs(&a.decide(&svc("n", n).req(), NS))).collect();
    assert_eq!(got, [ip("192.0.2.10"), ip("192.0.2.20"), ip("192.0.2.11"), ip("192.0.2.21")]);
}

mod netbox;

#[test]
fn failure_labels_are_the_metric_label_values() {
    let labels: Vec<&str> = FailReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(
        labels,
        [
            "full",
            "port_conflict",
            "sharing_conflict",
            "namespace_denied",
            "unknown_group",
            "invalid_group",
            "outside_pools",
            "reserved",
            "malformed",
            "family",
            "netbox"
        ]
    );
}

#[test]
fn the_table_shows_its_groups_holders_and_outside_addresses_per_family() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", Some("2001:db8::f0/124")))]);
    assert!(a.groups().contains("default"));
    assert!(!a.groups().contains("other"));
    assert_eq!(a.holders().count(), 0);
    // An adopted IPv4 address outside the group's ranges counts for IPv4 only.
    a.adopt(&svc("web", "old").status(&["198.51.100.5"], "default").req()).unwrap();
    let holders: Vec<String> = a.holders().map(|(k, h)| format!("{k} {}", h.group)).collect();
    assert_eq!(holders, ["web/old default"]);
    let stats = a.stats("default");
    assert_eq!(stats.outside, 1);
    assert_eq!(stats.allocated.get(&Family::V4), Some(&1));
    assert_eq!(stats.allocated.get(&Family::V6), Some(&0));
}

fn local_in(pool: &str, subnet: &str) -> Value {
    json!({"local": {"v4pool": {"pool": pool, "subnet": subnet}}})
}

/// Two local groups of two IPv4 addresses each: `default` and `other`.
fn default_and_other() -> Allocator {
    alloc(&[
        sg("default", local("192.0.2.240/31", None)),
        sg("other", local_in("198.51.100.240/31", "198.51.100.0/24")),
    ])
}

#[test]
fn pinned_addresses_of_two_groups_are_refused_and_of_one_group_are_served() {
    let mut a = alloc(&[
        sg("default", local("192.0.2.240/30", Some("2001:db8::f0/126"))),
        sg("other", json!({"local": {"v6pool": {"pool": "2001:db8:1::f0/126", "subnet": "2001:db8:1::/64"}}})),
    ]);
    let f = a.decide(
        &svc("n", "two").pin("192.0.2.241,2001:db8:1::f1").families("RequireDualStack", &["IPv4", "IPv6"]).req(),
        NS,
    );
    assert_eq!(failure(&f).reason, FailReason::Malformed, "{f:?}");
    assert!(failure(&f).message.contains("different ServiceGroups"), "{f:?}");
    let d = a.decide(
        &svc("n", "one").pin("192.0.2.241,2001:db8::f1").families("RequireDualStack", &["IPv4", "IPv6"]).req(),
        NS,
    );
    assert_eq!(addrs(&d), [ip("192.0.2.241"), ip("2001:db8::f1")]);
}

#[test]
fn prefer_dual_stack_with_no_family_of_the_group_fails() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    let f = a.decide(&svc("n", "v6").families("PreferDualStack", &["IPv6"]).req(), NS);
    assert_eq!(failure(&f).reason, FailReason::Family, "{f:?}");
    assert!(failure(&f).message.contains("serves none of the Service's families"), "{f:?}");
}

#[test]
fn adoption_records_only_our_services_and_is_held_says_so() {
    let mut a = alloc(&[sg("default", local("192.0.2.240/30", None))]);
    assert!(!a.is_held(ip("192.0.2.240")));
    // Another controller's Service with a status: not ours, nothing recorded.
    let mut foreign = svc("n", "foreign").status(&["192.0.2.240"], "default");
    foreign.0["metadata"]["annotations"]["purelb.io/allocated-by"] = json!("someone-else");
    a.adopt(&foreign.req()).unwrap();
    assert!(!a.is_held(ip("192.0.2.240")), "a Service PureLB did not allocate was adopted");
    // Ours once, but no longer handled (another loadBalancerClass): nothing recorded either.
    let mut moved_away = svc("n", "moved-away").status(&["192.0.2.242"], "default");
    moved_away.0["spec"]["loadBalancerClass"] = json!("example.com/other");
    assert!(!moved_away.req().handled);
    a.adopt(&moved_away.req()).unwrap();
    assert!(!a.is_held(ip("192.0.2.242")), "a Service PureLB no longer handles was adopted");
    a.adopt(&svc("n", "ours").status(&["192.0.2.241"], "default").req()).unwrap();
    assert!(a.is_held(ip("192.0.2.241")));
    assert_eq!(addrs(&a.decide(&svc("n", "new").req(), NS)), [ip("192.0.2.240")]);
}

#[test]
fn forgetting_a_service_also_frees_the_address_it_was_giving_up() {
    let mut a = default_and_other();
    assert_eq!(addrs(&a.decide(&svc("n", "s").req(), NS)), [ip("192.0.2.240")]);
    // Moved to another group: 192.0.2.240 waits for the status write (pending release)...
    assert_eq!(addrs(&a.decide(&svc("n", "s").group("other").req(), NS)), [ip("198.51.100.240")]);
    assert!(a.is_held(ip("192.0.2.240")));
    // ...but the Service is deleted first: both addresses are free.
    a.forget(&ServiceKey::new("n", "s"));
    assert!(!a.is_held(ip("192.0.2.240")) && !a.is_held(ip("198.51.100.240")));
    assert_eq!(addrs(&a.decide(&svc("n", "t").req(), NS)), [ip("192.0.2.240")]);
}

/// A Service that keeps its address when its sharing key changes keeps the key the address is
/// shared under: the address is not moved, and the table still says which key shares it.
#[test]
fn a_kept_address_keeps_the_sharing_key_it_was_taken_under() {
    let mut a = default_and_other();
    let first = a.decide(&svc("n", "s").share("k1").req(), NS);
    let again = a.decide(&svc("n", "s").share("k2").req(), NS);
    assert_eq!(addrs(&again), addrs(&first), "the address moved");
    let key = ServiceKey::new("n", "s");
    let holding = a.holders().find(|(k, _)| **k == key).map(|(_, h)| h.clone()).unwrap();
    assert_eq!(holding.sharing_key.as_deref(), Some("k1"));
}

#[test]
fn a_new_address_takes_the_new_sharing_key() {
    let mut a = default_and_other();
    a.decide(&svc("n", "s").share("k1").req(), NS);
    let d = a.decide(&svc("n", "s").share("k2").group("other").req(), NS);
    assert_eq!(addrs(&d), [ip("198.51.100.240")]);
    let key = ServiceKey::new("n", "s");
    let holding = a.holders().find(|(k, _)| **k == key).map(|(_, h)| h.clone()).unwrap();
    assert_eq!(holding.sharing_key.as_deref(), Some("k2"));
}
