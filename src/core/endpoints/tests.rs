#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// `slice("ns", "svc-abc").service("svc").ipv4().endpoint("192.0.2.1").node("n1").ready(false)`:
/// `node`, `ready`, `serving`, `terminating` and `no_conditions` act on the last endpoint.
#[must_use]
struct SliceBuilder {
    slice: EndpointSlice,
}

fn slice(namespace: &str, name: &str) -> SliceBuilder {
    SliceBuilder {
        slice: EndpointSlice {
            address_type: "IPv4".into(),
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    "endpointslice-controller.k8s.io".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..EndpointSlice::default()
        },
    }
}

impl SliceBuilder {
    fn label(mut self, key: &str, value: &str) -> Self {
        self.slice.metadata.labels.get_or_insert_default().insert(key.into(), value.into());
        self
    }

    fn service(self, name: &str) -> Self {
        self.label(SERVICE_NAME_LABEL, name)
    }

    fn managed_by(self, manager: &str) -> Self {
        self.label(MANAGED_BY_LABEL, manager)
    }

    fn unmanaged(mut self) -> Self {
        self.slice.metadata.labels.get_or_insert_default().remove(MANAGED_BY_LABEL);
        self
    }

    fn ipv4(mut self) -> Self {
        self.slice.address_type = "IPv4".into();
        self
    }

    fn ipv6(mut self) -> Self {
        self.slice.address_type = "IPv6".into();
        self
    }

    fn fqdn(mut self) -> Self {
        self.slice.address_type = "FQDN".into();
        self
    }

    fn port(mut self, port: i32) -> Self {
        self.slice.ports.get_or_insert_default().push(EndpointPort { port: Some(port), ..EndpointPort::default() });
        self
    }

    /// A new endpoint with this address, no node, and conditions present but all unset.
    fn endpoint(mut self, address: &str) -> Self {
        self.slice.endpoints.push(Endpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions::default()),
            ..Endpoint::default()
        });
        self
    }

    fn last(&mut self) -> &mut Endpoint {
        self.slice.endpoints.last_mut().expect("call endpoint() first")
    }

    fn extra_address(mut self, address: &str) -> Self {
        self.last().addresses.push(address.into());
        self
    }

    fn node(mut self, node: &str) -> Self {
        self.last().node_name = Some(node.into());
        self
    }

    fn no_conditions(mut self) -> Self {
        self.last().conditions = None;
        self
    }

    fn conditions(&mut self) -> &mut EndpointConditions {
        self.last().conditions.get_or_insert_default()
    }

    fn ready(mut self, ready: bool) -> Self {
        self.conditions().ready = Some(ready);
        self
    }

    fn serving(mut self, serving: bool) -> Self {
        self.conditions().serving = Some(serving);
        self
    }

    fn terminating(mut self, terminating: bool) -> Self {
        self.conditions().terminating = Some(terminating);
        self
    }

    /// Shorthand for a pod on its way out: not ready, serving, terminating.
    fn draining(self) -> Self {
        self.ready(false).serving(true).terminating(true)
    }

    fn build(self) -> EndpointSlice {
        self.slice
    }
}

fn svc(namespace: &str, name: &str) -> ServiceKey {
    ServiceKey::new(namespace, name)
}

fn t0() -> Instant {
    Instant::now()
}

fn index_of(slices: &[&EndpointSlice]) -> EndpointIndex {
    let mut index = EndpointIndex::new();
    index.replace_all(slices.iter().copied(), t0());
    index
}

fn nodes(index: &EndpointIndex, service: &ServiceKey, family: Family) -> Vec<String> {
    index.usable_nodes(service, family).into_iter().map(str::to_owned).collect()
}

fn changed(services: &[&ServiceKey]) -> BTreeSet<ServiceKey> {
    services.iter().map(|service| (*service).clone()).collect()
}

/// The answer of the index must equal the full rescan of the same slices.
fn assert_matches_rescan(index: &EndpointIndex, slices: &[&EndpointSlice], service: &ServiceKey) {
    for family in [Family::V4, Family::V6] {
        let incremental: BTreeSet<String> = nodes(index, service, family).into_iter().collect();
        let rescan = usable_nodes_by_rescan(slices.iter().copied(), service, family);
        assert_eq!(incremental, rescan, "{service} {family}");
    }
}

// ---------------------------------------------------------------------------------------------
// Condition rules
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_endpoint_makes_its_node_usable() {
    let s = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").ready(true).build();
    let index = index_of(&[&s]);
    let web = svc("ns", "web");
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert!(!index.has_usable_endpoint(&web, Family::V4, "n2"));
    assert!(!index.has_usable_endpoint(&svc("ns", "other"), Family::V4, "n1"));
    assert!(!index.has_usable_endpoint(&svc("other-ns", "web"), Family::V4, "n1"));
    assert_eq!(nodes(&index, &web, Family::V4), ["n1"]);
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 1, serving_terminating: 0 });
}

#[test]
fn absent_ready_and_serving_mean_true() {
    let web = svc("ns", "web");
    let no_conditions = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").no_conditions().build();
    assert!(index_of(&[&no_conditions]).has_usable_endpoint(&web, Family::V4, "n1"));
    let unset_conditions = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").build();
    assert!(index_of(&[&unset_conditions]).has_usable_endpoint(&web, Family::V4, "n1"));
    // ready absent, serving false: still ready (serving does not override ready).
    let serving_false = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").serving(false).build();
    assert!(index_of(&[&serving_false]).has_usable_endpoint(&web, Family::V4, "n1"));
    // ready false, serving absent (true), terminating true: serving-terminating.
    let serving_absent =
        slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").ready(false).terminating(true).build();
    let index = index_of(&[&serving_absent]);
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 0, serving_terminating: 1 });
}

#[test]
fn not_ready_endpoint_is_not_usable() {
    let s = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").ready(false).build();
    let index = index_of(&[&s]);
    assert!(!index.has_usable_endpoint(&svc("ns", "web"), Family::V4, "n1"));
    assert!(index.usable_nodes(&svc("ns", "web"), Family::V4).is_empty());
    assert_eq!(index.node_endpoints(&svc("ns", "web"), Family::V4, "n1"), NodeEndpoints::default());
}

#[test]
fn absent_terminating_means_false() {
    // Not ready, serving, terminating unset: a pod that is simply not ready, not a draining one.
    let s = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").ready(false).serving(true).build();
    assert!(!index_of(&[&s]).has_usable_endpoint(&svc("ns", "web"), Family::V4, "n1"));
}

#[test]
fn serving_terminating_keeps_a_node_usable_only_while_nothing_is_ready() {
    let web = svc("ns", "web");
    let draining_only = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").draining().build();
    let index = index_of(&[&draining_only]);
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 0, serving_terminating: 1 });

    let terminating_not_serving = slice("ns", "web-1")
        .service("web")
        .endpoint("192.0.2.1")
        .node("n1")
        .ready(false)
        .serving(false)
        .terminating(true)
        .build();
    assert!(!index_of(&[&terminating_not_serving]).has_usable_endpoint(&web, Family::V4, "n1"));

    let both = slice("ns", "web-1")
        .service("web")
        .endpoint("192.0.2.1")
        .node("n1")
        .draining()
        .endpoint("192.0.2.2")
        .node("n1")
        .ready(true)
        .build();
    let index = index_of(&[&both]);
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 1, serving_terminating: 1 });
}

// ---------------------------------------------------------------------------------------------
// Slices, families, managers
// ---------------------------------------------------------------------------------------------

#[test]
fn address_type_must_match_the_family() {
    let web = svc("ns", "web");
    let v4 = slice("ns", "web-v4").service("web").ipv4().endpoint("192.0.2.1").node("n1").build();
    let fqdn = slice("ns", "web-fqdn").service("web").fqdn().endpoint("db.example.com").node("n2").build();
    let index = index_of(&[&v4, &fqdn]);
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert!(!index.has_usable_endpoint(&web, Family::V6, "n1"));
    assert!(!index.has_usable_endpoint(&web, Family::V4, "n2"), "FQDN slices never count");
    assert!(!index.has_usable_endpoint(&web, Family::V6, "n2"));
    assert_eq!(index.slice_count(&web), 2, "FQDN slices are still slices of the Service");
}

#[test]
fn dual_stack_service_answers_per_family() {
    let web = svc("ns", "web");
    let v4 = slice("ns", "web-v4")
        .service("web")
        .ipv4()
        .endpoint("192.0.2.1")
        .node("n1")
        .endpoint("192.0.2.2")
        .node("n2")
        .ready(false)
        .build();
    let v6 = slice("ns", "web-v6")
        .service("web")
        .ipv6()
        .endpoint("2001:db8::1")
        .node("n1")
        .ready(false)
        .endpoint("2001:db8::2")
        .node("n2")
        .build();
    let index = index_of(&[&v4, &v6]);
    assert_eq!(nodes(&index, &web, Family::V4), ["n1"]);
    assert_eq!(nodes(&index, &web, Family::V6), ["n2"]);
    assert_matches_rescan(&index, &[&v4, &v6], &web);
}

#[test]
fn addresses_of_the_wrong_family_or_unparseable_are_skipped() {
    let web = svc("ns", "web");
    let s = slice("ns", "web-1")
        .service("web")
        .ipv4()
        .endpoint("2001:db8::1")
        .node("n1")
        .endpoint("not-an-address")
        .node("n2")
        .endpoint("192.0.2.3")
        .node("n3")
        .build();
    let index = index_of(&[&s]);
    assert_eq!(nodes(&index, &web, Family::V4), ["n3"]);
    assert!(index.usable_nodes(&web, Family::V6).is_empty());
}

#[test]
fn only_the_first_address_of_an_endpoint_counts() {
    let web = svc("ns", "web");
    // 192.0.2.9 appears only as a second address: it is not a listing of 192.0.2.9.
    let a = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").extra_address("192.0.2.9").build();
    let b = slice("ns", "web-b").service("web").endpoint("192.0.2.9").node("n1").ready(false).build();
    let index = index_of(&[&a, &b]);
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 1, serving_terminating: 0 });
}

#[test]
fn endpoints_without_node_name_are_external() {
    let web = svc("ns", "web");
    let s = slice("ns", "web-1")
        .service("web")
        .endpoint("192.0.2.1")
        .endpoint("192.0.2.2")
        .node("")
        .endpoint("192.0.2.3")
        .node("n1")
        .ready(false)
        .build();
    let index = index_of(&[&s]);
    assert!(index.usable_nodes(&web, Family::V4).is_empty(), "external endpoints make no node usable");
    assert!(!index.has_usable_endpoint(&web, Family::V4, ""));
    assert_eq!(index.external_endpoints(&web, Family::V4), 2);
    assert_eq!(index.external_endpoints(&web, Family::V6), 0);
    let mut index = index;
    index.delete(&s, t0());
    assert_eq!(index.external_endpoints(&web, Family::V4), 0);
    // Only external endpoints: still counted (mutation testing: a family with no endpoint on a
    // node could be taken for empty and dropped, with its external count).
    let only_external = slice("ns", "web-2").service("web").endpoint("192.0.2.4").endpoint("192.0.2.5").build();
    index.apply(&only_external, t0());
    assert_eq!(index.external_endpoints(&web, Family::V4), 2);
}

#[test]
fn slices_of_every_manager_count() {
    let web = svc("ns", "web");
    let builtin = slice("ns", "web-builtin").service("web").endpoint("192.0.2.1").node("n1").build();
    let istio = slice("ns", "web-istio").service("web").managed_by("istio.io").endpoint("192.0.2.2").node("n2").build();
    let consul =
        slice("ns", "web-consul").service("web").managed_by("consul.hashicorp.com").endpoint("192.0.2.3").node("n3");
    let consul = consul.build();
    let by_hand = slice("ns", "web-manual").service("web").unmanaged().endpoint("192.0.2.4").node("n4").build();
    let index = index_of(&[&builtin, &istio, &consul, &by_hand]);
    assert_eq!(nodes(&index, &web, Family::V4), ["n1", "n2", "n3", "n4"]);
    assert_eq!(index.slice_count(&web), 4);
}

#[test]
fn slices_without_the_service_label_are_only_counted() {
    let mut index = EndpointIndex::new();
    let unlabelled = slice("ns", "loose").endpoint("192.0.2.1").node("n1").build();
    index.apply(&unlabelled, t0());
    assert_eq!(index.unlabelled_slices(), 1);
    assert_eq!(index.slice_total(), 1);
    assert_eq!(index.slice_counts().count(), 0);
    let empty_label = slice("ns", "loose-2").service("").endpoint("192.0.2.2").node("n2").build();
    index.apply(&empty_label, t0());
    assert_eq!(index.unlabelled_slices(), 2);

    // Gaining the label makes it count; losing it again withdraws it.
    let labelled = slice("ns", "loose").service("web").endpoint("192.0.2.1").node("n1").build();
    assert_eq!(index.apply(&labelled, t0()), changed(&[&svc("ns", "web")]));
    assert_eq!(index.unlabelled_slices(), 1);
    assert_eq!(index.slice_count(&svc("ns", "web")), 1);
    assert_eq!(index.apply(&unlabelled, t0()), changed(&[&svc("ns", "web")]));
    assert_eq!(index.unlabelled_slices(), 2);
    assert_eq!(index.slice_count(&svc("ns", "web")), 0);
    index.delete(&unlabelled, t0());
    index.delete(&empty_label, t0());
    assert_eq!((index.unlabelled_slices(), index.slice_total()), (0, 0));
}

#[test]
fn namespaces_keep_services_apart() {
    let a = slice("team-a", "web-1").service("web").endpoint("192.0.2.1").node("n1").build();
    let b = slice("team-b", "web-1").service("web").endpoint("192.0.2.1").node("n2").build();
    let mut index = index_of(&[&a, &b]);
    assert_eq!(nodes(&index, &svc("team-a", "web"), Family::V4), ["n1"]);
    assert_eq!(nodes(&index, &svc("team-b", "web"), Family::V4), ["n2"]);
    // Same slice name in another namespace is another slice.
    assert_eq!(index.delete(&a, t0()), changed(&[&svc("team-a", "web")]));
    assert_eq!(nodes(&index, &svc("team-b", "web"), Family::V4), ["n2"]);
}

// ---------------------------------------------------------------------------------------------
// The same address in several slices
// ---------------------------------------------------------------------------------------------

#[test]
fn an_address_in_several_port_slices_is_ready_only_if_every_listing_says_so() {
    let web = svc("ns", "web");
    let http = slice("ns", "web-http").service("web").port(80).endpoint("192.0.2.1").node("n1").build();
    let metrics_ready = slice("ns", "web-metrics").service("web").port(9090).endpoint("192.0.2.1").node("n1").build();
    let index = index_of(&[&http, &metrics_ready]);
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1").ready, 1, "one endpoint, listed twice");

    let metrics_not_ready =
        slice("ns", "web-metrics").service("web").port(9090).endpoint("192.0.2.1").node("n1").ready(false).build();
    let index = index_of(&[&http, &metrics_not_ready]);
    assert!(!index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_matches_rescan(&index, &[&http, &metrics_not_ready], &web);
}

#[test]
fn rollout_transient_address_in_two_slices_with_different_readiness() {
    let web = svc("ns", "web");
    let mut index = EndpointIndex::new();
    let old_home = slice("ns", "web-old").service("web").endpoint("192.0.2.1").node("n1").ready(true).build();
    assert_eq!(index.apply(&old_home, t0()), changed(&[&web]));
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));

    // The controller lists the address in its new slice (not ready yet) before removing it from
    // the old one: the disagreement makes it not usable.
    let new_home_not_ready =
        slice("ns", "web-new").service("web").endpoint("192.0.2.1").node("n1").ready(false).build();
    assert_eq!(index.apply(&new_home_not_ready, t0()), changed(&[&web]));
    assert!(!index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_matches_rescan(&index, &[&old_home, &new_home_not_ready], &web);

    // Both agree again.
    let new_home_ready = slice("ns", "web-new").service("web").endpoint("192.0.2.1").node("n1").ready(true).build();
    assert_eq!(index.apply(&new_home_ready, t0()), changed(&[&web]));
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));

    // The old slice lets go of the address: the new listing alone decides.
    let old_home_empty = slice("ns", "web-old").service("web").build();
    assert!(index.apply(&old_home_empty, t0()).is_empty(), "n1 stays usable");
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1").ready, 1);
    assert_matches_rescan(&index, &[&old_home_empty, &new_home_ready], &web);
}

#[test]
fn a_ready_and_a_draining_listing_make_a_serving_terminating_endpoint() {
    let web = svc("ns", "web");
    let a = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").ready(true).build();
    let b = slice("ns", "web-b").service("web").endpoint("192.0.2.1").node("n1").draining().build();
    let index = index_of(&[&a, &b]);
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 0, serving_terminating: 1 });
    assert!(index.has_usable_endpoint(&web, Family::V4, "n1"));
}

#[test]
fn an_address_under_two_nodes_is_two_endpoints() {
    let web = svc("ns", "web");
    let old = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").draining().build();
    let new = slice("ns", "web-b").service("web").endpoint("192.0.2.1").node("n2").ready(true).build();
    let index = index_of(&[&old, &new]);
    assert_eq!(index.node_endpoints(&web, Family::V4, "n1"), NodeEndpoints { ready: 0, serving_terminating: 1 });
    assert_eq!(index.node_endpoints(&web, Family::V4, "n2"), NodeEndpoints { ready: 1, serving_terminating: 0 });
    assert_matches_rescan(&index, &[&old, &new], &web);
}

#[test]
fn ipv6_addresses_are_compared_as_addresses_not_text() {
    let web = svc("ns", "web");
    let a = slice("ns", "web-a").service("web").ipv6().endpoint("2001:db8::1").node("n1").build();
    let b = slice("ns", "web-b").service("web").ipv6().endpoint("2001:0db8:0:0::1").node("n1").ready(false).build();
    let index = index_of(&[&a, &b]);
    assert!(!index.has_usable_endpoint(&web, Family::V6, "n1"), "the same address, listed not ready once");
}

// ---------------------------------------------------------------------------------------------
// Delete, resync, change reports
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_withdraws_the_slice() {
    let web = svc("ns", "web");
    let a = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").build();
    let b = slice("ns", "web-b").service("web").endpoint("192.0.2.2").node("n2").build();
    let mut index = index_of(&[&a, &b]);
    assert_eq!(index.delete(&a, t0()), changed(&[&web]));
    assert_eq!(nodes(&index, &web, Family::V4), ["n2"]);
    assert_eq!(index.slice_count(&web), 1);
    assert!(index.delete(&a, t0()).is_empty(), "deleting twice is harmless");
    assert_eq!(index.delete(&b, t0()), changed(&[&web]));
    assert_eq!(index.slice_count(&web), 0);
    assert_eq!(index.slice_counts().count(), 0, "a Service with no slice is forgotten");
    assert_eq!(index.slice_total(), 0);
}

#[test]
fn delete_uses_the_slice_name_not_its_last_content() {
    let web = svc("ns", "web");
    let mut index = EndpointIndex::new();
    index.apply(&slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").build(), t0());
    // The delete event carries a different (stale or newer) body: what was indexed is withdrawn.
    let tombstone = slice("ns", "web-a").build();
    assert_eq!(index.delete(&tombstone, t0()), changed(&[&web]));
    assert!(index.usable_nodes(&web, Family::V4).is_empty());
}

#[test]
fn replace_all_deletes_what_is_not_listed() {
    let web = svc("ns", "web");
    let api = svc("ns", "api");
    let a = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").build();
    let b = slice("ns", "web-b").service("web").endpoint("192.0.2.2").node("n2").build();
    let c = slice("ns", "api-a").service("api").endpoint("192.0.2.3").node("n3").build();
    let mut index = EndpointIndex::new();
    assert!(!index.is_synced());
    assert_eq!(index.replace_all([&a, &b, &c], t0()), changed(&[&web, &api]));
    assert!(index.is_synced());

    let b_not_ready = slice("ns", "web-b").service("web").endpoint("192.0.2.2").node("n2").ready(false).build();
    let d = slice("ns", "api-b").service("api").endpoint("192.0.2.4").node("n4").build();
    // a and c are gone, b changed, d is new.
    assert_eq!(index.replace_all([&b_not_ready, &d], t0()), changed(&[&web, &api]));
    assert!(index.usable_nodes(&web, Family::V4).is_empty());
    assert_eq!(nodes(&index, &api, Family::V4), ["n4"]);
    assert_eq!((index.slice_count(&web), index.slice_count(&api), index.slice_total()), (1, 1, 2));
    assert_matches_rescan(&index, &[&b_not_ready, &d], &web);

    assert_eq!(index.replace_all([], t0()), changed(&[&api]), "web had no usable node left to lose");
    assert_eq!(index.slice_total(), 0);
}

#[test]
fn replace_all_reports_only_net_changes() {
    let web = svc("ns", "web");
    let a = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").build();
    let mut index = index_of(&[&a]);
    // The endpoint moved to another slice while the watch was down: nothing changed for n1.
    let b = slice("ns", "web-b").service("web").endpoint("192.0.2.1").node("n1").build();
    assert!(index.replace_all([&b], t0()).is_empty());
    assert_eq!(nodes(&index, &web, Family::V4), ["n1"]);
    assert_eq!(index.slice_total(), 1);
}

#[test]
fn watch_events_follow_the_watcher_protocol() {
    let web = svc("ns", "web");
    let a = slice("ns", "web-a").service("web").endpoint("192.0.2.1").node("n1").build();
    let b = slice("ns", "web-b").service("web").endpoint("192.0.2.2").node("n2").build();
    let c = slice("ns", "web-c").service("web").endpoint("192.0.2.3").node("n3").build();
    let start = t0();
    let mut index = EndpointIndex::new();
    assert!(index.handle_event(&watcher::Event::Init, start).is_empty());
    assert!(index.handle_event(&watcher::Event::InitApply(a.clone()), start).is_empty());
    assert!(index.handle_event(&watcher::Event::InitApply(b.clone()), start).is_empty());
    assert!(index.usable_nodes(&web, Family::V4).is_empty(), "nothing counts before InitDone");
    assert!(!index.is_synced());
    assert_eq!(index.handle_event(&watcher::Event::InitDone, start), changed(&[&web]));
    assert!(index.is_synced());
    assert_eq!(nodes(&index, &web, Family::V4), ["n1", "n2"]);

    assert_eq!(index.handle_event(&watcher::Event::Apply(c.clone()), start), changed(&[&web]));
    assert_eq!(index.handle_event(&watcher::Event::Delete(a.clone()), start), changed(&[&web]));
    assert_eq!(nodes(&index, &web, Family::V4), ["n2", "n3"]);

    // The watch restarts; while it relists, the old answers stand; b is gone at InitDone.
    index.handle_event(&watcher::Event::Init, start);
    index.handle_event(&watcher::Event::InitApply(c.clone()), start);
    assert_eq!(nodes(&index, &web, Family::V4), ["n2", "n3"]);
    assert_eq!(index.handle_event(&watcher::Event::InitDone, start), changed(&[&web]));
    assert_eq!(nodes(&index, &web, Family::V4), ["n3"]);
    assert_eq!(index.slice_count(&web), 1);
}

#[test]
fn changes_report_only_services_whose_answer_changed() {
    let web = svc("ns", "web");
    let api = svc("ns", "api");
    let w1 = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").build();
    let a1 = slice("ns", "api-1").service("api").endpoint("192.0.2.2").node("n1").build();
    let mut index = index_of(&[&w1, &a1]);

    assert!(index.apply(&w1, t0()).is_empty(), "re-applying the same slice changes nothing");
    let w1_port = slice("ns", "web-1").service("web").port(8080).endpoint("192.0.2.1").node("n1").build();
    assert!(index.apply(&w1_port, t0()).is_empty(), "a port change is no change of the answer");
    let w1_second = slice("ns", "web-1")
        .service("web")
        .endpoint("192.0.2.1")
        .node("n1")
        .endpoint("192.0.2.5")
        .node("n1")
        .ready(false)
        .build();
    assert!(index.apply(&w1_second, t0()).is_empty(), "n1 was usable and still is");
    let w1_down = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").ready(false).build();
    assert_eq!(index.apply(&w1_down, t0()), changed(&[&web]), "api is not reported");
    assert!(index.has_usable_endpoint(&api, Family::V4, "n1"));

    // A slice moving from one Service to another reports both.
    let w1_for_api = slice("ns", "web-1").service("api").endpoint("192.0.2.9").node("n2").build();
    let w1_ready = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").build();
    index.apply(&w1_ready, t0());
    assert_eq!(index.apply(&w1_for_api, t0()), changed(&[&web, &api]));
    assert_eq!(nodes(&index, &api, Family::V4), ["n1", "n2"]);
    assert!(index.usable_nodes(&web, Family::V4).is_empty());
}

#[test]
fn slice_counts_per_service() {
    let s1 = slice("ns", "web-1").service("web").build();
    let s2 = slice("ns", "web-2").service("web").ipv6().build();
    let s3 = slice("ns", "api-1").service("api").build();
    let s4 = slice("other", "web-1").service("web").build();
    let index = index_of(&[&s1, &s2, &s3, &s4]);
    let counts: BTreeMap<String, usize> =
        index.slice_counts().map(|(service, count)| (service.to_string(), count)).collect();
    assert_eq!(counts, BTreeMap::from([("ns/api".into(), 1), ("ns/web".into(), 2), ("other/web".into(), 1)]));
}

#[test]
fn staleness_is_zero_on_a_quiet_cluster_and_grows_only_while_the_watch_fails() {
    let start = t0();
    let at = |secs: u64| start + Duration::from_secs(secs);
    let mut index = EndpointIndex::new();
    assert_eq!(index.staleness(start), None, "not listed yet");
    let s = slice("ns", "web-1").service("web").endpoint("192.0.2.1").node("n1").build();
    index.handle_event(&watcher::Event::Init, at(1));
    index.handle_event(&watcher::Event::InitApply(s.clone()), at(1));
    assert_eq!(index.staleness(at(2)), None, "a list under way is not a sync");
    index.handle_event(&watcher::Event::InitDone, at(2));
    assert_eq!(index.last_event_at(), Some(at(2)));
    // Ten quiet minutes: no event, no error, in sync all along.
    assert_eq!(index.staleness(at(602)), Some(Duration::ZERO));
    // The watch fails: stale since the first error, however many follow.
    index.watch_failed(at(700));
    index.watch_failed(at(705));
    index.watch_failed(at(710));
    assert_eq!(index.staleness(at(720)), Some(Duration::from_secs(20)));
    assert_eq!(index.staleness(at(724)), Some(Duration::from_secs(24)));
    // No error for 15 s (retries come every 5 s at most): the watch was re-established.
    assert_eq!(index.staleness(at(725)), Some(Duration::ZERO));
    // A new failure counts from itself, not from the old one.
    index.watch_failed(at(900));
    assert_eq!(index.staleness(at(910)), Some(Duration::from_secs(10)));
    // An event proves the watch works.
    index.delete(&s, at(915));
    index.handle_event(&watcher::Event::Apply(s), at(915));
    assert_eq!(index.staleness(at(916)), Some(Duration::ZERO));
}

// ---------------------------------------------------------------------------------------------
// Scale
// ---------------------------------------------------------------------------------------------

/// Slice `i` of a big Service: 100 endpoints, addresses unique across slices, spread over
/// 60 nodes; every 7th endpoint not ready and every 11th draining.
fn big_slice(i: usize, endpoints: usize) -> EndpointSlice {
    let mut builder = slice("ns", &format!("big-{i:03}")).service("big");
    for j in 0..endpoints {
        let n = i * endpoints + j;
        builder = builder.endpoint(&format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256));
        builder = builder.node(&format!("node-{:02}", n % 60));
        if n.is_multiple_of(7) {
            builder = builder.ready(false);
        } else if n.is_multiple_of(11) {
            builder = builder.draining();
        }
    }
    builder.build()
}

#[test]
fn a_service_with_150_slices_of_100_endpoints() {
    let big = svc("ns", "big");
    let mut slices: Vec<EndpointSlice> = (0..150).map(|i| big_slice(i, 100)).collect();
    let mut index = EndpointIndex::new();
    for s in &slices {
        index.apply(s, t0());
    }
    assert_eq!(index.slice_count(&big), 150);
    assert_eq!(index.usable_nodes(&big, Family::V4).len(), 60);
    let all: Vec<&EndpointSlice> = slices.iter().collect();
    assert_matches_rescan(&index, &all, &big);
    let n0 = index.node_endpoints(&big, Family::V4, "node-00");
    let on_node_00 = (0..15_000).filter(|n| n % 60 == 0);
    let draining = on_node_00.clone().filter(|n| n % 7 != 0 && n % 11 == 0).count();
    let ready = on_node_00.filter(|n| n % 7 != 0 && n % 11 != 0).count();
    assert_eq!(n0, NodeEndpoints { ready, serving_terminating: draining });
    assert_eq!(ready + draining, 250 - 36, "250 endpoints on node-00, 36 of them not ready");

    // Take every endpoint on node-07 out of service, slice by slice: usable until the last one.
    for (i, updated) in slices.iter_mut().enumerate() {
        for endpoint in &mut updated.endpoints {
            if endpoint.node_name.as_deref() == Some("node-07") {
                endpoint.conditions = Some(EndpointConditions { ready: Some(false), ..EndpointConditions::default() });
            }
        }
        let report = index.apply(updated, t0());
        let still_usable = index.has_usable_endpoint(&big, Family::V4, "node-07");
        assert_eq!(still_usable, i < 149, "after slice {i}");
        assert_eq!(report.is_empty(), still_usable);
    }
    let all: Vec<&EndpointSlice> = slices.iter().collect();
    assert_matches_rescan(&index, &all, &big);
    assert_eq!(index.usable_nodes(&big, Family::V4).len(), 59);
}

// ---------------------------------------------------------------------------------------------
// The incremental index against the full rescan, on random histories
// ---------------------------------------------------------------------------------------------

const SERVICES: [&str; 2] = ["web", "api"];
const SLICE_NAMES: usize = 6;

/// One endpoint drawn from a small universe, so that listings collide across slices.
#[derive(Clone, Debug)]
struct EndpointSpec {
    address: usize,
    node: Option<usize>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Clone, Debug)]
struct SliceSpec {
    service: Option<usize>,
    address_type: usize,
    endpoints: Vec<EndpointSpec>,
}

#[derive(Clone, Debug)]
enum Operation {
    Apply(usize, SliceSpec),
    Delete(usize),
    Resync(Vec<Option<SliceSpec>>),
}

fn endpoint_spec() -> impl Strategy<Value = EndpointSpec> {
    let flag = || prop_oneof![Just(None), Just(Some(true)), Just(Some(false))];
    (0..5usize, prop_oneof![1 => Just(None), 4 => (0..4usize).prop_map(Some)], flag(), flag(), flag()).prop_map(
        |(address, node, ready, serving, terminating)| EndpointSpec { address, node, ready, serving, terminating },
    )
}

fn slice_spec() -> impl Strategy<Value = SliceSpec> {
    (
        prop_oneof![1 => Just(None), 6 => (0..SERVICES.len()).prop_map(Some)],
        prop_oneof![4 => Just(0usize), 4 => Just(1usize), 1 => Just(2usize)],
        prop::collection::vec(endpoint_spec(), 0..6),
    )
        .prop_map(|(service, address_type, endpoints)| SliceSpec { service, address_type, endpoints })
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => (0..SLICE_NAMES, slice_spec()).prop_map(|(i, spec)| Operation::Apply(i, spec)),
        2 => (0..SLICE_NAMES).prop_map(Operation::Delete),
        1 => prop::collection::vec(prop::option::of(slice_spec()), SLICE_NAMES).prop_map(Operation::Resync),
    ]
}

fn build_slice(i: usize, spec: &SliceSpec) -> EndpointSlice {
    let mut builder = slice("ns", &format!("slice-{i}"));
    if let Some(service) = spec.service {
        builder = builder.service(SERVICES[service]);
    }
    builder = match spec.address_type {
        0 => builder.ipv4(),
        1 => builder.ipv6(),
        _ => builder.fqdn(),
    };
    for endpoint in &spec.endpoints {
        let address = match spec.address_type {
            0 => format!("192.0.2.{}", endpoint.address),
            1 => format!("2001:db8::{}", endpoint.address),
            _ => format!("host-{}.example.com", endpoint.address),
        };
        builder = builder.endpoint(&address);
        if let Some(node) = endpoint.node {
            builder = builder.node(&format!("n{node}"));
        }
        let conditions = builder.conditions();
        conditions.ready = endpoint.ready;
        conditions.serving = endpoint.serving;
        conditions.terminating = endpoint.terminating;
    }
    builder.build()
}

type Rescan = BTreeMap<(String, Family), BTreeSet<String>>;

fn rescan(world: &BTreeMap<usize, EndpointSlice>) -> Rescan {
    let mut answers = Rescan::new();
    for name in SERVICES {
        for family in [Family::V4, Family::V6] {
            answers.insert((name.into(), family), usable_nodes_by_rescan(world.values(), &svc("ns", name), family));
        }
    }
    answers
}

fn services_that_differ(before: &Rescan, after: &Rescan) -> BTreeSet<ServiceKey> {
    before.iter().filter(|(key, nodes)| after.get(*key) != Some(*nodes)).map(|((name, _), _)| svc("ns", name)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_index_matches_a_full_rescan(operations in prop::collection::vec(operation(), 1..40)) {
        let mut index = EndpointIndex::new();
        let mut world: BTreeMap<usize, EndpointSlice> = BTreeMap::new();
        for operation in &operations {
            let before = rescan(&world);
            let report = match operation {
                Operation::Apply(i, spec) => {
                    let built = build_slice(*i, spec);
                    world.insert(*i, built.clone());
                    index.apply(&built, t0())
                }
                Operation::Delete(i) => {
                    let tombstone = slice("ns", &format!("slice-{i}")).build();
                    world.remove(i);
                    index.delete(&tombstone, t0())
                }
                Operation::Resync(specs) => {
                    world = specs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, spec)| spec.as_ref().map(|spec| (i, build_slice(i, spec))))
                        .collect();
                    index.replace_all(world.values(), t0())
                }
            };
            let after = rescan(&world);
            for ((name, family), expected) in &after {
                let actual: BTreeSet<String> =
                    index.usable_nodes(&svc("ns", name), *family).into_iter().map(str::to_owned).collect();
                prop_assert_eq!(&actual, expected, "{} {} after {:?}", name, family, operation);
            }
            prop_assert_eq!(report, services_that_differ(&before, &after), "report after {:?}", operation);
            for name in SERVICES {
                let labelled = world
                    .values()
                    .filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) == Some(name))
                    .count();
                prop_assert_eq!(index.slice_count(&svc("ns", name)), labelled);
            }
            prop_assert_eq!(index.slice_total(), world.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Memory (issue 20: 500,000 endpoints in one agent)
// ---------------------------------------------------------------------------------------------

/// A slice of `web` listing one ready endpoint on each of `nodes`.
fn slice_on_nodes(nodes: impl Iterator<Item = String>) -> EndpointSlice {
    let mut builder = slice("ns", "web-abc").service("web");
    for (i, node) in nodes.enumerate() {
        builder = builder.endpoint(&format!("192.0.2.{}", i % 250 + 1)).node(&node).ready(true);
    }
    builder.build()
}

#[test]
fn node_names_are_held_once_and_forgotten_when_no_slice_lists_them() {
    let mut index = EndpointIndex::new();
    let web = svc("ns", "web");
    // Every round lists 100 nodes never seen before (nodes replaced, autoscaling).
    for round in 0..50 {
        index.apply(&slice_on_nodes((0..100).map(|n| format!("node-{round}-{n}"))), t0());
        assert_eq!(index.usable_nodes(&web, Family::V4).len(), 100);
    }
    // 5,000 names were seen; only those still listed (and the garbage of the last round or two)
    // are held.
    assert!(index.node_names.names.len() <= 2 * 100 + 64 + 100, "{} names held", index.node_names.names.len());
    // One shared name per node: the listing, the endpoint tally and the node tally hold the same.
    let name = index.node_names.names.get("node-49-7").expect("a listed node's name is held");
    assert_eq!(std::sync::Arc::strong_count(&name.0), 4, "the set, the listing, the endpoint's and the node's tally");
    // A full list forgets the names of the slices it drops.
    index.replace_all(std::iter::empty(), t0());
    assert!(index.node_names.names.is_empty(), "{:?}", index.node_names.names);
    assert!(index.usable_nodes(&web, Family::V4).is_empty());
}

#[test]
fn a_family_without_endpoints_keeps_nothing_for_the_service() {
    let mut index = EndpointIndex::new();
    let web = svc("ns", "web");
    index.apply(&slice("ns", "web-abc").service("web").ipv6().endpoint("2001:db8::1").node("n1").build(), t0());
    let kept = &index.services[&web];
    assert!(kept.ipv4.is_none() && kept.ipv6.is_some());
    // The endpoint goes, the (empty) slice stays: the Service is still counted, without a family.
    index.apply(&slice("ns", "web-abc").service("web").ipv6().build(), t0());
    let kept = &index.services[&web];
    assert!(kept.ipv4.is_none() && kept.ipv6.is_none());
    assert_eq!(index.slice_count(&web), 1);
    // The slices of a Service share the Service's key with the index.
    index.apply(&slice("ns", "web-def").service("web").ipv6().endpoint("2001:db8::2").node("n1").build(), t0());
    let (key, _) = index.services.get_key_value(&web).unwrap();
    assert_eq!(std::sync::Arc::strong_count(key), 3, "the index and both slices hold one key");
}

/// Garbage names are collected once the set has doubled (plus 64) since the last collection, not
/// before: collecting reads every name (mutation testing: the bound could move unnoticed).
#[test]
fn node_names_are_collected_once_they_doubled_and_not_before() {
    let mut names = NodeNames::default();
    let held: Vec<NodeName> = (0..100).map(|i| names.intern(&format!("held-{i}"))).collect();
    names.collect_garbage();
    assert_eq!(names.live, 100);
    for i in 0..164 {
        let _ = names.intern(&format!("gone-{i}"));
    }
    names.collect_garbage_when_grown();
    assert_eq!(names.names.len(), 264, "at the bound: kept");
    let _ = names.intern("one-more");
    names.collect_garbage_when_grown();
    assert_eq!(names.names.len(), 100, "past it: only the held names stay");
    assert_eq!(held.len(), 100);
}
