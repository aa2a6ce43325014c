//! Netbox groups in the allocation table: what a Service needs from NetBox, committing what
//! NetBox reserved, family policies, sharing, releases, adoption, and no address twice.

use super::*;
use crate::core::ipam::Family;

fn netbox() -> Value {
    json!({"netbox": {"url": "https://netbox.example.com", "tenant": "k8s", "tokenSecretRef": {"name": "nb", "key": "token"}}})
}

fn ok(ips: &[(Family, &str)]) -> NetboxOffers {
    ips.iter().map(|(f, s)| (*f, Ok(ip(s)))).collect()
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name)
}

#[test]
fn a_netbox_group_serves_what_netbox_reserved() {
    let mut a = alloc(&[sg("default", netbox())]);
    let req = svc("web", "a").req();
    let need = a.netbox_need(&req, NS).unwrap();
    assert_eq!((need.group.as_str(), need.families.as_slice()), ("default", [Family::V4].as_slice()));
    assert_eq!(need.spec.tenant, "k8s");
    // Without a reservation the decision fails and says why.
    let f = a.decide(&req, NS);
    assert_eq!(failure(&f).reason, FailReason::Netbox, "{f:?}");
    a.offer(&req.key, ok(&[(Family::V4, "203.0.113.10")]));
    let d = a.decide(&req, NS);
    assert_eq!(addrs(&d), [ip("203.0.113.10")]);
    let h = a.holding(&req.key).unwrap();
    assert_eq!(h.pool_type, PoolType::Netbox);
    assert!(a.netbox_need(&req, NS).is_none(), "holds what it needs");
    assert!(matches!(a.decide(&req, NS), Decision::Keep { ref warnings, .. } if warnings.is_empty()));
    let stats = a.stats("default");
    assert_eq!((stats.allocated[&Family::V4], stats.outside), (1, 0), "NetBox addresses are not outside the pools");
    assert!(stats.available.is_empty() && stats.size.is_empty(), "unknown until NetBox was asked");
    a.set_netbox_available("default", Family::V4, 4);
    assert_eq!(a.stats("default").available[&Family::V4].to_string(), "4");
}

#[test]
fn a_netbox_failure_is_the_decision() {
    let mut a = alloc(&[sg("default", netbox())]);
    let req = svc("web", "a").req();
    let why = Failure { reason: FailReason::PoolFull, message: "none left".into(), group: Some("default".into()) };
    a.offer(&req.key, [(Family::V4, Err(why.clone()))].into_iter().collect());
    assert_eq!(failure(&a.decide(&req, NS)), &why);
    assert!(a.holding(&req.key).is_none());
    assert!(a.take_netbox_releases().is_empty());
}

#[test]
fn families_follow_the_policy() {
    let mut a = alloc(&[sg("default", netbox())]);
    let none_v6 = Failure { reason: FailReason::PoolFull, message: "no IPv6".into(), group: Some("default".into()) };
    // RequireDualStack: both or nothing; the IPv4 address taken meanwhile goes back to NetBox.
    let req = svc("web", "req").families("RequireDualStack", &["IPv4", "IPv6"]).req();
    assert_eq!(a.netbox_need(&req, NS).unwrap().families, [Family::V4, Family::V6]);
    let mut offers = ok(&[(Family::V4, "203.0.113.1")]);
    offers.insert(Family::V6, Err(none_v6.clone()));
    a.offer(&req.key, offers.clone());
    assert_eq!(failure(&a.decide(&req, NS)).message, "no IPv6");
    let released = a.take_netbox_releases();
    assert_eq!(released.len(), 1);
    assert_eq!((released[0].ip, released[0].owners.clone()), (ip("203.0.113.1"), vec![req.key.clone()]));
    assert!(!a.is_held(ip("203.0.113.1")));
    // PreferDualStack: what NetBox has.
    let req = svc("web", "pref").families("PreferDualStack", &["IPv6", "IPv4"]).req();
    a.offer(&req.key, offers);
    assert_eq!(addrs(&a.decide(&req, NS)), [ip("203.0.113.1")]);
    // Dual-stack with both.
    let req = svc("web", "dual").families("RequireDualStack", &["IPv4", "IPv6"]).req();
    a.offer(&req.key, ok(&[(Family::V4, "203.0.113.2"), (Family::V6, "2001:db8::2")]));
    assert_eq!(addrs(&a.decide(&req, NS)), [ip("203.0.113.2"), ip("2001:db8::2")]);
    // Single-stack IPv6.
    let req = svc("web", "six").families("SingleStack", &["IPv6"]).req();
    assert_eq!(a.netbox_need(&req, NS).unwrap().families, [Family::V6]);
    a.offer(&req.key, ok(&[(Family::V6, "2001:db8::3")]));
    assert_eq!(addrs(&a.decide(&req, NS)), [ip("2001:db8::3")]);
    assert_eq!(a.stats("default").allocated[&Family::V6], 2);
}

#[test]
fn no_address_is_given_twice_and_pool_ranges_stay_out_of_reach() {
    let mut a = alloc(&[sg("default", netbox()), sg("pool", local("192.0.2.240/30", None))]);
    let first = svc("web", "a").req();
    a.offer(&first.key, ok(&[(Family::V4, "203.0.113.10")]));
    addrs(&a.decide(&first, NS));
    assert!(!a.netbox_may_use(ip("203.0.113.10")), "held");
    assert!(!a.netbox_may_use(ip("192.0.2.241")), "in a pool's range");
    assert!(a.netbox_may_use(ip("203.0.113.11")));
    // Even if NetBox handed out a held address again, the table refuses it.
    let second = svc("web", "b").req();
    a.offer(&second.key, ok(&[(Family::V4, "203.0.113.10")]));
    let f = a.decide(&second, NS);
    assert_eq!(failure(&f).reason, FailReason::SharingConflict, "{f:?}");
    assert_eq!(a.users_of(ip("203.0.113.10")), std::slice::from_ref(&first.key));
}

#[test]
fn sharing_needs_no_second_reservation() {
    let mut a = alloc(&[sg("default", netbox())]);
    let http = svc("web", "http").share("k").port(80).req();
    a.offer(&http.key, ok(&[(Family::V4, "203.0.113.10")]));
    addrs(&a.decide(&http, NS));
    let https = svc("web", "https").share("k").port(443).req();
    assert!(a.netbox_need(&https, NS).is_none(), "shares the address");
    assert_eq!(addrs(&a.decide(&https, NS)), [ip("203.0.113.10")]);
    // The address goes back to NetBox only when the last sharer lets go.
    a.forget(&http.key);
    assert!(a.take_netbox_releases().is_empty());
    a.forget(&https.key);
    let released = a.take_netbox_releases();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].owners, [https.key.clone(), http.key.clone()], "the last user first, then the others");
}

#[test]
fn releases_remember_the_netbox_of_a_deleted_group() {
    let mut a = alloc(&[sg("default", netbox())]);
    let req = svc("web", "a").req();
    a.offer(&req.key, ok(&[(Family::V4, "203.0.113.10")]));
    addrs(&a.decide(&req, NS));
    a.set_groups(GroupSet::build(std::iter::empty(), NS));
    assert!(matches!(a.decide(&req, NS), Decision::Keep { .. }), "a deleted group never moves an address");
    let gone = a.forget_missing(&std::collections::HashSet::new());
    assert_eq!(gone.len(), 1);
    let released = a.take_netbox_releases();
    assert_eq!(released.len(), 1, "still given back to the NetBox the group named");
    assert_eq!(released[0].spec.as_ref().map(|s| s.tenant.as_str()), Some("k8s"));
}

#[test]
fn released_addresses_carry_the_group_spec() {
    let mut a = alloc(&[sg("default", netbox())]);
    let req = svc("web", "a").req();
    a.offer(&req.key, ok(&[(Family::V4, "203.0.113.10")]));
    addrs(&a.decide(&req, NS));
    let d = a.decide(&svc("web", "a").set("type", json!("ClusterIP")).req(), NS);
    assert!(matches!(d, Decision::Released(_)), "{d:?}");
    assert!(a.take_netbox_releases().is_empty(), "not before the cleared status is written");
    assert!(a.confirm_released(&req.key));
    let released = a.take_netbox_releases();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].spec.as_ref().map(|s| s.url.as_str()), Some("https://netbox.example.com"));
    assert_eq!(released[0].group, "default");
}

#[test]
fn adoption_after_a_restart_keeps_netbox_addresses() {
    let mut a = alloc(&[sg("default", netbox())]);
    let req = svc("web", "a").status(&["203.0.113.10"], "default").req();
    a.adopt(&req).unwrap();
    assert!(a.netbox_need(&req, NS).is_none());
    assert!(matches!(a.decide(&req, NS), Decision::Keep { ref warnings, .. } if warnings.is_empty()));
    let stats = a.stats("default");
    assert_eq!((stats.allocated[&Family::V4], stats.outside), (1, 0));
    assert_eq!(a.holding(&req.key).unwrap().pool_type, PoolType::Netbox);
}

#[test]
fn netbox_groups_cannot_pin_and_bad_specs_are_invalid() {
    let mut a = alloc(&[sg("default", netbox())]);
    let f = a.decide(&svc("web", "a").group("default").pin("203.0.113.10").req(), NS);
    assert!(failure(&f).message.contains("cannot pin addresses"), "{f:?}");
    let bad = sg(
        "bad",
        json!({"netbox": {"url": "ftp://nb", "tenant": "k8s", "tokenSecretRef": {"name": "nb", "key": "token"}}}),
    );
    let set = GroupSet::build([&bad], NS);
    assert!(set.invalid["bad"].message.contains("spec.netbox.url"), "{:?}", set.invalid);
    let blank = sg(
        "blank",
        json!({"netbox": {"url": "https://nb", "tenant": " ", "tokenSecretRef": {"name": "nb", "key": "token"}}}),
    );
    assert!(GroupSet::build([&blank], NS).invalid["blank"].message.contains("spec.netbox.tenant"));
    assert_eq!(key("a", "b").to_string(), "a/b");
}

fn netbox_of(tenant: &str) -> Value {
    json!({"netbox": {"url": "https://netbox.example.com", "tenant": tenant, "tokenSecretRef": {"name": "nb", "key": "token"}}})
}

#[test]
fn what_netbox_must_reserve_follows_the_group_the_service_names_else_the_one_it_holds() {
    let mut a = alloc(&[sg("default", netbox_of("main")), sg("nb1", netbox_of("first"))]);
    assert_eq!(a.netbox_spec("nb1").map(|s| s.tenant.as_str()), Some("first"));
    assert!(a.netbox_spec("missing").is_none());
    let first = svc("web", "s").group("nb1").req();
    a.offer(&first.key, ok(&[(Family::V4, "203.0.113.10")]));
    assert_eq!(addrs(&a.decide(&first, NS)), [ip("203.0.113.10")]);
    // Moved to another group by name: that group must reserve the family again.
    let moved = svc("web", "s").group("default").req();
    let need = a.netbox_need(&moved, NS).unwrap();
    assert_eq!((need.group.as_str(), need.families.as_slice()), ("default", [Family::V4].as_slice()));
    // No group named any more: the held group is kept, and only the missing family is asked for.
    let unnamed = svc("web", "s").families("PreferDualStack", &["IPv4", "IPv6"]).req();
    let need = a.netbox_need(&unnamed, NS).unwrap();
    assert_eq!((need.group.as_str(), need.families.as_slice()), ("nb1", [Family::V6].as_slice()));
}

#[test]
fn prefer_dual_stack_keeps_the_family_it_holds_and_takes_only_what_netbox_offers() {
    let mut a = alloc(&[sg("default", netbox_of("main")), sg("nb1", netbox_of("first"))]);
    let req = svc("web", "s").families("PreferDualStack", &["IPv4", "IPv6"]).req();
    a.offer(&req.key, ok(&[(Family::V4, "203.0.113.10")]));
    assert_eq!(addrs(&a.decide(&req, NS)), [ip("203.0.113.10")]);
    // Re-decided without a new reservation: it keeps its IPv4 address.
    let d = a.decide(&req, NS);
    assert!(matches!(d, Decision::Keep { .. }), "{d:?}");
    assert_eq!(addrs(&d), [ip("203.0.113.10")]);
    // Moved to nb1, which reserved only IPv6: the IPv4 address of the old group does not count.
    let moved = svc("web", "s").group("nb1").families("PreferDualStack", &["IPv4", "IPv6"]).req();
    a.offer(&moved.key, ok(&[(Family::V6, "2001:db8::10")]));
    assert_eq!(addrs(&a.decide(&moved, NS)), [ip("2001:db8::10")]);
}
