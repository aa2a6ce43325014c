use std::collections::BTreeMap;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};

use super::*;
use crate::api::contract;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn lease(node: &str, subnets: &str, announcing: &str, draining: bool) -> Lease {
    let mut annotations = BTreeMap::from([
        (contract::LEASE_ANNOTATION_SUBNETS.to_owned(), subnets.to_owned()),
        (contract::LEASE_ANNOTATION_ANNOUNCING.to_owned(), announcing.to_owned()),
    ]);
    if draining {
        annotations.insert(contract::LEASE_ANNOTATION_DRAINING.to_owned(), "true".to_owned());
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("purelb-node-{node}")),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(10),
            renew_time: Some(MicroTime(now())),
            ..LeaseSpec::default()
        }),
    }
}

fn members(leases: &[Lease]) -> Members {
    Members::from_leases(leases, now())
}

fn holding(pool_type: PoolType, ips: &[&str]) -> Holding {
    Holding {
        group: "g".into(),
        pool_type,
        addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        sharing_key: None,
        ports: Default::default(),
    }
}

#[test]
fn allocated_reasons_follow_the_failure() {
    let h = holding(PoolType::Local, &["192.0.2.10"]);
    let ok = allocated(Some(&h), None);
    assert_eq!((ok.status, ok.reason, ok.message.as_str()), (true, "Allocated", "192.0.2.10 from ServiceGroup g"));
    let full = Failure { reason: FailReason::PoolFull, message: "no free address".into(), group: Some("g".into()) };
    let f = allocated(None, Some(&full));
    assert_eq!((f.status, f.reason, f.message.as_str()), (false, "PoolExhausted", "no free address"));
    let kept = allocated(Some(&h), Some(&full));
    assert!(kept.status);
    assert!(kept.message.contains("not changed: no free address"), "{}", kept.message);
    let cases = [
        (FailReason::Malformed, "InvalidAnnotation"),
        (FailReason::SharingConflict, "InvalidAnnotation"),
        (FailReason::PortConflict, "InvalidAnnotation"),
        (FailReason::OutsidePools, "InvalidAnnotation"),
        (FailReason::Reserved, "InvalidAnnotation"),
        (FailReason::UnknownGroup, "NoGroup"),
        (FailReason::InvalidGroup, "NoGroup"),
        (FailReason::NamespaceDenied, "NoGroup"),
        (FailReason::Family, "NoGroup"),
        (FailReason::Netbox, "Pending"),
        (FailReason::PoolFull, "PoolExhausted"),
    ];
    for (r, want) in cases {
        assert_eq!(failure_reason(r), want, "{r:?}");
    }
    assert_eq!(allocated(None, None).reason, "Pending");
}

#[test]
fn announced_names_the_holders() {
    let leases = [
        lease("n1", "192.0.2.0/24", "192.0.2.10%eth0", false),
        lease("n2", "192.0.2.0/24,2001:db8::/64", "2001:db8::10%eth1", false),
    ];
    let m = members(&leases);
    let c = announced(&holding(PoolType::Local, &["192.0.2.10", "2001:db8::10"]), &m, false);
    assert_eq!(c.status_text(), "True");
    assert_eq!(c.reason, "Announced");
    assert_eq!(c.message, "192.0.2.10 on n1 (eth0); 2001:db8::10 on n2 (eth1)");
    // A remote address held by two nodes names both.
    let leases = [
        lease("n1", "192.0.2.0/24", "203.0.113.5%kube-lb0", false),
        lease("n2", "192.0.2.0/24", "203.0.113.5%kube-lb0", false),
    ];
    let c = announced(&holding(PoolType::Remote, &["203.0.113.5"]), &members(&leases), false);
    assert_eq!(c.message, "203.0.113.5 on n1 (kube-lb0), n2 (kube-lb0)");
}

#[test]
fn announced_says_why_nobody_holds_an_address() {
    let h = holding(PoolType::Local, &["192.0.2.10"]);
    let none = announced(&h, &members(&[]), false);
    assert_eq!((none.status, none.reason), (false, "NoAgent"));

    let other_subnet = [lease("n1", "198.51.100.0/24", "", false)];
    let c = announced(&h, &members(&other_subnet), false);
    assert_eq!((c.status, c.reason), (false, "NoCandidateNode"));
    assert!(c.message.contains("192.0.2.10"), "{}", c.message);

    let draining = [lease("n1", "192.0.2.0/24", "", true)];
    let c = announced(&h, &members(&draining), false);
    assert_eq!(c.reason, "NoCandidateNode");
    assert!(c.message.contains("draining, not candidates: n1"), "{}", c.message);

    let candidate = [lease("n1", "192.0.2.0/24", "", false)];
    let c = announced(&h, &members(&candidate), true);
    assert_eq!((c.status, c.reason), (false, "NoUsableEndpoint"));
    let c = announced(&h, &members(&candidate), false);
    assert_eq!((c.status, c.reason), (false, "Pending"));
    assert!(c.message.contains("waiting for n1"), "{}", c.message);

    // One address held and one not: not announced, because of the one that is not.
    let leases = [lease("n1", "192.0.2.0/24", "192.0.2.10%eth0", false)];
    let c = announced(&holding(PoolType::Local, &["192.0.2.10", "2001:db8::10"]), &members(&leases), false);
    assert_eq!((c.status, c.reason), (false, "NoCandidateNode"));
    assert!(c.message.contains("2001:db8::10"), "{}", c.message);

    // A remote address has no subnet rule: nobody holding it is pending, not NoCandidateNode.
    let c = announced(&holding(PoolType::Remote, &["203.0.113.5"]), &members(&other_subnet), false);
    assert_eq!(c.reason, "Pending");
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::from_second(1_700_000_000).unwrap()),
    }
}

#[test]
fn only_changed_conditions_are_written_and_transition_times_move_with_the_status() {
    let want =
        [Wanted::new(ALLOCATED, true, "Allocated", "a".into()), Wanted::new(ANNOUNCED, false, "Pending", "p".into())];
    let now = "2027-01-01T00:00:00Z";
    // Nothing there: both, with the time now.
    let all = changes(&[], &want, Some(3), now);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["lastTransitionTime"], now);
    assert_eq!(all[0]["observedGeneration"], 3);
    // Same: nothing.
    let same = [
        condition(ALLOCATED, "True", "Allocated", "a", Some(3)),
        condition(ANNOUNCED, "False", "Pending", "p", Some(3)),
        condition("example.com/Other", "True", "X", "", None),
    ];
    assert!(changes(&same, &want, Some(3), now).is_empty());
    // Another message, same status: written, the transition time kept.
    let other = [condition(ALLOCATED, "True", "Allocated", "b", Some(3))];
    let c = changes(&other, &want[..1], Some(3), now);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["lastTransitionTime"], "2023-11-14T22:13:20Z");
    // A new generation alone is a change.
    assert_eq!(changes(&same, &want, Some(4), now).len(), 2);
    // Another status: the transition time is now.
    let flipped = [condition(ANNOUNCED, "True", "Announced", "p", Some(3))];
    let c = changes(&flipped, &want[1..], Some(3), now);
    assert_eq!(c[0]["lastTransitionTime"], now);
    assert_eq!(c[0]["status"], "False");
}

#[test]
fn removals_touch_only_purelb_conditions() {
    let existing = [
        condition(ALLOCATED, "True", "Allocated", "a", None),
        condition("example.com/Other", "True", "X", "", None),
        condition(ANNOUNCED, "True", "Announced", "a", None),
    ];
    let r = removals(&existing);
    assert_eq!(r, vec![json!({"$patch": "delete", "type": ALLOCATED}), json!({"$patch": "delete", "type": ANNOUNCED})]);
}
