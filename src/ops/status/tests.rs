use std::collections::BTreeMap;

use k8s_openapi::{
    api::coordination::v1::LeaseSpec,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};

use super::*;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn lease(name: &str, holder: &str, renewed_ago: i64, duration: i32, annotations: &[(&str, &str)]) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(
                annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now() - k8s_openapi::jiff::SignedDuration::from_secs(renewed_ago))),
            ..LeaseSpec::default()
        }),
    }
}

fn snapshot(leases: Vec<Lease>) -> Snapshot {
    Snapshot { namespace: "purelb-system".into(), now: Some(now()), leases, ..Snapshot::default() }
}

#[test]
fn the_allocator_down_is_a_failure_with_the_reason() {
    let r = report(&snapshot(vec![]), &Handling::default());
    assert_eq!((r.verdict, r.verdict.exit_code()), (Verdict::Fail, 2));
    assert!(r.reasons[0].contains("the allocator is down: no Lease purelb-system/purelb-allocator"), "{:?}", r.reasons);
    let expired = lease("purelb-allocator", "alloc-1", 30, 15, &[]);
    let r = report(&snapshot(vec![expired]), &Handling::default());
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(r.reasons[0].contains("held by alloc-1) was last renewed 30s ago"), "{:?}", r.reasons);
    assert_eq!(r.allocator.renewed_seconds_ago, Some(30));
}

#[test]
fn a_live_allocator_and_nothing_else_is_ok_and_a_dead_agent_or_a_down_session_is_a_warning() {
    let alloc = lease("purelb-allocator", "alloc-1", 2, 15, &[]);
    let r = report(&snapshot(vec![alloc.clone()]), &Handling::default());
    assert_eq!(r.verdict, Verdict::Ok, "{:?}", r.reasons);
    assert!(r.text().starts_with("PureLB in namespace purelb-system: OK\n"), "{}", r.text());
    let agents = vec![
        alloc,
        lease(
            "purelb-node-n1",
            "n1",
            1,
            6,
            &[("purelb.io/subnets", "192.0.2.0/24"), ("purelb.io/bgp", "router=Established")],
        ),
        lease("purelb-node-n2", "n2", 60, 6, &[("purelb.io/subnets", "192.0.2.0/24")]),
        lease("purelb-node-n3", "n3", 1, 6, &[("purelb.io/bgp", "router=Active")]),
    ];
    let r = report(&snapshot(agents), &Handling::default());
    assert_eq!((r.verdict, r.verdict.exit_code()), (Verdict::Warning, 1));
    assert!(r.reasons.iter().any(|x| x.contains("the agent of node n2 is not live")), "{:?}", r.reasons);
    assert!(r.reasons.iter().any(|x| x.contains("node n3: BGP session router is Active")), "{:?}", r.reasons);
    assert_eq!(
        r.agents.iter().map(|a| (a.node.as_str(), a.live)).collect::<Vec<_>>(),
        [("n1", true), ("n2", false), ("n3", true)]
    );
    assert_eq!(r.agents[0].subnets, ["192.0.2.0/24"]);
    let text = r.text();
    assert!(text.contains("BGP"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "WARNING");
    assert_eq!(json["agents"][0]["bgp"]["router"], "Established");
}
