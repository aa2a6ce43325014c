use std::collections::BTreeMap;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use proptest::prelude::*;

use super::*;

const NOW: i64 = 1_700_000_000;

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A node Lease as a healthy agent writes it: renewed now, 10 s duration, no annotations.
fn lease(node: &str) -> LeaseBuilder {
    LeaseBuilder {
        lease: Lease {
            metadata: ObjectMeta {
                name: Some(format!("purelb-node-{node}")),
                namespace: Some("purelb-system".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.into()),
                lease_duration_seconds: Some(10),
                renew_time: Some(MicroTime(now())),
                ..LeaseSpec::default()
            }),
        },
    }
}

struct LeaseBuilder {
    lease: Lease,
}

impl LeaseBuilder {
    fn annotate(mut self, key: &str, value: &str) -> Self {
        self.lease.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }
    fn subnets(self, value: &str) -> Self {
        self.annotate(LEASE_ANNOTATION_SUBNETS, value)
    }
    fn announcing(self, value: &str) -> Self {
        self.annotate(LEASE_ANNOTATION_ANNOUNCING, value)
    }
    fn draining(self) -> Self {
        self.annotate(LEASE_ANNOTATION_DRAINING, "true")
    }
    fn instance(self, uid: &str) -> Self {
        self.annotate(LEASE_ANNOTATION_INSTANCE, uid)
    }
    fn name(mut self, name: &str) -> Self {
        self.lease.metadata.name = Some(name.into());
        self
    }
    fn spec(mut self, edit: impl FnOnce(&mut LeaseSpec)) -> Self {
        edit(self.lease.spec.get_or_insert_with(LeaseSpec::default));
        self
    }
    /// renewTime `seconds` before [`NOW`] (negative: in the future).
    fn renewed_ago(self, seconds: i64) -> Self {
        self.spec(|s| s.renew_time = Some(MicroTime(Timestamp::from_second(NOW - seconds).unwrap())))
    }
    fn duration(self, seconds: Option<i32>) -> Self {
        self.spec(|s| s.lease_duration_seconds = seconds)
    }
    fn holder(self, holder: Option<&str>) -> Self {
        self.spec(|s| s.holder_identity = holder.map(Into::into))
    }
    fn build(self) -> Lease {
        self.lease
    }
}

fn table(leases: Vec<LeaseBuilder>) -> Members {
    let leases: Vec<Lease> = leases.into_iter().map(LeaseBuilder::build).collect();
    Members::from_leases(&leases, now())
}

const BOTH_SUBNETS: &str = "192.0.2.0/24, 198.51.100.0/24, 2001:db8::/64";

fn three_nodes() -> Members {
    table(vec![
        lease("node-a").subnets(BOTH_SUBNETS),
        lease("node-b").subnets(BOTH_SUBNETS),
        lease("node-c").subnets(BOTH_SUBNETS),
    ])
}

#[test]
fn winners_match_the_independently_computed_vectors() {
    // Computed with Python's hashlib: min(sha256(f"{node}#{addr}")) over node-a, node-b, node-c.
    let members = three_nodes();
    assert_eq!(members.winner(ip("192.0.2.240")), Some("node-b"));
    assert_eq!(members.winner(ip("192.0.2.241")), Some("node-c"));
    assert_eq!(members.winner(ip("2001:db8::f0")), Some("node-a"));
    assert_eq!(members.winner(ip("198.51.100.7")), Some("node-a"));
}

#[test]
fn elect_works_on_bare_names() {
    let nodes = ["node-a", "node-b", "node-c"];
    assert_eq!(elect(nodes, ip("192.0.2.240")), Some("node-b"));
    assert_eq!(elect(nodes.into_iter().rev(), ip("192.0.2.241")), Some("node-c"));
    assert_eq!(elect([], ip("192.0.2.241")), None);
}

#[test]
fn key_is_sha256_of_node_hash_canonical_address() {
    let expected: [u8; 32] = Sha256::digest(b"node-a#2001:db8::f0").into();
    // Any spelling of the address gives the RFC 5952 text.
    assert_eq!(election_key("node-a", ip("2001:0DB8:0000:0000:0000:0000:0000:00F0")), expected);
    let expected: [u8; 32] = Sha256::digest(b"node-b#192.0.2.240").into();
    assert_eq!(election_key("node-b", ip("192.0.2.240")), expected);
    // IPv4-mapped IPv6 is written as IPv4, as Go's net.IP.String() does.
    assert_eq!(election_key("node-b", ip("::ffff:192.0.2.240")), expected);
}

#[test]
fn ipv4_mapped_addresses_are_elected_as_ipv4() {
    let members = three_nodes();
    assert_eq!(members.winner(ip("::ffff:192.0.2.240")), Some("node-b"));
}

#[test]
fn candidates_need_a_subnet_containing_the_address() {
    let members = table(vec![
        lease("node-a").subnets("192.0.2.0/24"),
        lease("node-b").subnets("198.51.100.0/24,2001:db8::/64"),
        lease("node-c"),
    ]);
    let names = |a: &str| members.candidates(ip(a)).map(|m| m.node.as_str()).collect::<Vec<_>>();
    assert_eq!(names("192.0.2.240"), ["node-a"]);
    assert_eq!(names("198.51.100.7"), ["node-b"]);
    assert_eq!(names("2001:db8::f0"), ["node-b"]);
    assert!(names("203.0.113.1").is_empty());
    assert!(names("2001:db8:1::1").is_empty());
    assert_eq!(members.winner(ip("192.0.2.240")), Some("node-a"), "the only candidate wins");
    assert_eq!(members.winner(ip("203.0.113.1")), None);
    assert_eq!(members.len(), 3, "a node without subnets is still a live member");
    assert!(!members.is_empty());
}

#[test]
fn liveness_is_renew_time_plus_duration_in_the_future() {
    let members = table(vec![
        lease("fresh").subnets(BOTH_SUBNETS),
        lease("almost").renewed_ago(9).subnets(BOTH_SUBNETS),
        lease("exactly").renewed_ago(10).subnets(BOTH_SUBNETS),
        lease("stale").renewed_ago(60).subnets(BOTH_SUBNETS),
        lease("skewed").renewed_ago(-5).subnets(BOTH_SUBNETS),
    ]);
    let live: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(live, ["almost", "fresh", "skewed"]);
    let expired: Vec<&str> = members.skipped().iter().map(|s| s.lease.as_str()).collect();
    assert_eq!(expired, ["purelb-node-exactly", "purelb-node-stale"]);
    assert_eq!(
        members.skipped()[0].reason,
        SkipReason::Expired { at: now() },
        "expiry at exactly now is not in the future"
    );
    assert_eq!(members.get("almost").unwrap().expires, Timestamp::from_second(NOW + 1).unwrap());
    assert_eq!(members.next_expiry(), Some(Timestamp::from_second(NOW + 1).unwrap()));
}

#[test]
fn broken_node_leases_are_skipped_with_a_reason() {
    let members = table(vec![
        lease("released").holder(None),
        lease("empty").holder(Some("")),
        lease("impostor").holder(Some("node-a")),
        lease("no-renew").spec(|s| s.renew_time = None),
        lease("no-duration").duration(None),
        lease("zero-duration").duration(Some(0)),
        lease("negative-duration").duration(Some(-5)),
    ]);
    let mut leases: Vec<Lease> = vec![lease("x").build()];
    leases[0].spec = None;
    let no_spec = Members::from_leases(&leases, now());
    assert_eq!(no_spec.skipped()[0].reason, SkipReason::NoHolder);

    assert!(members.is_empty());
    let reasons: BTreeMap<&str, &SkipReason> =
        members.skipped().iter().map(|s| (s.lease.as_str(), &s.reason)).collect();
    assert_eq!(reasons["purelb-node-released"], &SkipReason::NoHolder);
    assert_eq!(reasons["purelb-node-empty"], &SkipReason::NoHolder);
    assert_eq!(reasons["purelb-node-impostor"], &SkipReason::HolderMismatch { holder: "node-a".into() });
    assert_eq!(reasons["purelb-node-no-renew"], &SkipReason::NoRenewTime);
    assert_eq!(reasons["purelb-node-no-duration"], &SkipReason::NoDuration);
    assert_eq!(reasons["purelb-node-zero-duration"], &SkipReason::NoDuration);
    assert_eq!(reasons["purelb-node-negative-duration"], &SkipReason::NoDuration);
    assert!(reasons.values().all(|r| !r.to_string().is_empty()));
}

#[test]
fn leases_that_are_not_node_leases_are_ignored() {
    let members = table(vec![
        lease("node-a").subnets(BOTH_SUBNETS),
        lease("x").name("purelb-allocator").holder(Some("purelb-allocator-7d9f")),
        lease("y").name("kube-scheduler"),
    ]);
    assert_eq!(members.len(), 1);
    assert!(members.skipped().is_empty());
    let mut nameless = lease("z").build();
    nameless.metadata.name = None;
    assert!(Members::from_leases([&nameless], now()).is_empty());
}

#[test]
fn a_node_with_two_leases_counts_once_with_the_later_expiry() {
    // Only possible when Leases of several namespaces are mixed; keep the freshest.
    let members = table(vec![
        lease("node-a").renewed_ago(5).subnets("192.0.2.0/24"),
        lease("node-a").subnets("198.51.100.0/24"),
        lease("node-a").renewed_ago(8).subnets("203.0.113.0/24"),
    ]);
    assert_eq!(members.len(), 1);
    assert_eq!(members.get("node-a").unwrap().subnets, [Subnet::parse("198.51.100.0/24").unwrap()]);
    assert_eq!(members.skipped().len(), 2);
    assert!(members.skipped().iter().all(|s| s.reason == SkipReason::Duplicate));
}

#[test]
fn draining_nodes_are_not_candidates_but_still_hold_their_addresses() {
    let members = table(vec![
        lease("node-a").subnets(BOTH_SUBNETS),
        lease("node-b").subnets(BOTH_SUBNETS).draining().announcing("192.0.2.240%eth0"),
        lease("node-c").subnets(BOTH_SUBNETS),
    ]);
    // node-b would win 192.0.2.240 (see the vectors); while it drains, peers elect without it.
    let winner = members.winner(ip("192.0.2.240")).unwrap();
    assert_ne!(winner, "node-b");
    assert_eq!(winner, elect(["node-a", "node-c"], ip("192.0.2.240")).unwrap());
    assert_eq!(members.len(), 3, "a draining node is still live");
    assert!(members.get("node-b").unwrap().draining);
    assert_eq!(
        members.holders_of(ip("192.0.2.240")),
        [Holder { node: "node-b".into(), interface: Some("eth0".into()), draining: true }]
    );
}

#[test]
fn only_true_means_draining() {
    for (value, draining) in
        [("true", true), (" TRUE ", true), ("True", true), ("false", false), ("", false), ("yes", false), ("1", false)]
    {
        let members = table(vec![lease("node-a").subnets(BOTH_SUBNETS).annotate(LEASE_ANNOTATION_DRAINING, value)]);
        assert_eq!(members.get("node-a").unwrap().draining, draining, "{value:?}");
    }
}

#[test]
fn preferred_nodes_win_and_fallback_is_reported() {
    let members = three_nodes();
    let address = ip("192.0.2.240"); // node-b wins among all three
    assert_eq!(members.winner_preferring(address, |_| true), Winner::Preferred("node-b".into()));
    let only_a_and_c = |n: &str| n == "node-a" || n == "node-c";
    let expected = elect(["node-a", "node-c"], address).unwrap();
    assert_eq!(members.winner_preferring(address, only_a_and_c), Winner::Preferred(expected.into()));
    assert_eq!(members.winner_preferring(address, |n| n == "node-c"), Winner::Preferred("node-c".into()));

    // A preferred node that is not a candidate (no subnet, draining or dead) does not count.
    let fallback = members.winner_preferring(address, |n| n == "node-x");
    assert_eq!(fallback, Winner::Fallback("node-b".into()));
    assert!(fallback.is_fallback());
    assert_eq!(fallback.node(), Some("node-b"));

    let none = members.winner_preferring(ip("203.0.113.9"), |_| true);
    assert_eq!(none, Winner::None);
    assert_eq!(none.node(), None);
    assert!(!none.is_fallback());

    let with_draining =
        table(vec![lease("node-a").subnets(BOTH_SUBNETS), lease("node-b").subnets(BOTH_SUBNETS).draining()]);
    assert_eq!(with_draining.winner_preferring(address, |n| n == "node-b"), Winner::Fallback("node-a".into()));
}

#[test]
fn holders_lists_who_says_it_holds_what() {
    let members = table(vec![
        lease("node-a").subnets(BOTH_SUBNETS).announcing("192.0.2.240%eth0, 2001:db8::f0%eth0"),
        lease("node-b").subnets(BOTH_SUBNETS).draining().announcing("192.0.2.240%ens3,198.51.100.7"),
        lease("node-c").subnets(BOTH_SUBNETS),
        lease("node-d").renewed_ago(60).announcing("192.0.2.241%eth0"),
    ]);
    let holders = members.holders();
    assert_eq!(
        holders.keys().copied().collect::<Vec<_>>(),
        [ip("192.0.2.240"), ip("198.51.100.7"), ip("2001:db8::f0")]
    );
    assert_eq!(
        holders[&ip("192.0.2.240")],
        [
            Holder { node: "node-a".into(), interface: Some("eth0".into()), draining: false },
            Holder { node: "node-b".into(), interface: Some("ens3".into()), draining: true },
        ]
    );
    assert_eq!(holders[&ip("198.51.100.7")], [Holder { node: "node-b".into(), interface: None, draining: true }]);
    assert!(members.holders_of(ip("192.0.2.241")).is_empty(), "an expired node holds nothing");
    assert_eq!(members.holders_of(ip("2001:db8:0::f0")).len(), 1);
}

#[test]
fn instance_is_read() {
    let members = table(vec![lease("node-a").instance("0b9a-uid"), lease("node-b").instance("")]);
    assert_eq!(members.get("node-a").unwrap().instance.as_deref(), Some("0b9a-uid"));
    assert_eq!(members.get("node-b").unwrap().instance, None);
}

#[test]
fn subnets_are_parsed_leniently() {
    let parsed =
        parse_subnets(" 192.0.2.7/24 ,, nonsense, 2001:db8::1/64,192.0.2.0/24, 10.0.0.0/33, 198.51.100.0/24 ,");
    let expected: Vec<Subnet> =
        ["192.0.2.0/24", "2001:db8::/64", "198.51.100.0/24"].iter().map(|s| Subnet::parse(s).unwrap()).collect();
    assert_eq!(parsed, expected, "host bits dropped, duplicates and bad entries skipped");
    assert!(parse_subnets("").is_empty());
    assert!(parse_subnets("192.0.2.1").is_empty(), "a bare address is not a subnet");
}

#[test]
fn at_most_256_subnets_are_read() {
    let text: String = (0..300).map(|i| format!("2001:db8:{i:x}::/48")).collect::<Vec<_>>().join(",");
    let parsed = parse_subnets(&text);
    assert_eq!(parsed.len(), MAX_SUBNETS);
    assert_eq!(parsed[255], Subnet::parse("2001:db8:ff::/48").unwrap());
    let members = table(vec![lease("node-a").subnets(&text)]);
    assert!(members.winner(ip("2001:db8:ff::1")).is_some());
    assert!(members.winner(ip("2001:db8:100::1")).is_none(), "entries past the limit are ignored");
}

#[test]
fn format_subnets_sorts_and_dedups() {
    let subnets = parse_subnets("2001:db8::/64,198.51.100.0/24,192.0.2.0/24");
    let mut doubled = subnets.clone();
    doubled.extend(subnets);
    assert_eq!(format_subnets(&doubled), "192.0.2.0/24,198.51.100.0/24,2001:db8::/64");
    assert_eq!(format_subnets(&[]), "");
}

#[test]
fn announcing_round_trips_and_is_lenient() {
    let parsed = parse_announcing(
        " 2001:DB8::F0 % eth0 , garbage, 192.0.2.240%eth0,192.0.2.240%eth1, 198.51.100.7, , 203.0.113.5% ",
    );
    assert_eq!(
        parsed,
        [
            HeldAddress { address: ip("2001:db8::f0"), interface: Some("eth0".into()) },
            HeldAddress { address: ip("192.0.2.240"), interface: Some("eth0".into()) },
            HeldAddress { address: ip("198.51.100.7"), interface: None },
            HeldAddress { address: ip("203.0.113.5"), interface: None },
        ]
    );
    let text = format_announcing(&parsed);
    assert_eq!(text, "192.0.2.240%eth0,198.51.100.7,203.0.113.5,2001:db8::f0%eth0");
    let mut reparsed = parse_announcing(&text);
    reparsed.sort();
    let mut sorted = parsed;
    sorted.sort();
    assert_eq!(reparsed, sorted);
    let odd = [HeldAddress { address: ip("192.0.2.1"), interface: Some("we,ird".into()) }];
    assert_eq!(format_announcing(&odd), "192.0.2.1");
    assert_eq!(format_announcing(&[]), "");
}

proptest! {
    #[test]
    fn winner_does_not_depend_on_order(nodes in proptest::collection::btree_set("[a-z0-9-]{1,12}", 1..8), last in 0u8..=255, rotate in 0usize..8) {
        let address = IpAddr::from([192, 0, 2, last]);
        let mut names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let first = elect(names.iter().copied(), address).unwrap();
        let by_key = names.iter().copied().min_by_key(|n| election_key(n, address)).unwrap();
        prop_assert_eq!(first, by_key);
        let r = rotate % names.len();
        names.rotate_left(r);
        prop_assert_eq!(elect(names.iter().copied(), address), Some(first));
    }

    #[test]
    fn annotation_parsers_never_panic(text in "\\PC{0,200}") {
        let _ = parse_subnets(&text);
        let held = parse_announcing(&text);
        let _ = parse_announcing(&format_announcing(&held));
    }
}

#[test]
fn renewals_change_nothing_but_membership_changes_do() {
    let base = || vec![lease("node-a").subnets(BOTH_SUBNETS), lease("node-b").subnets(BOTH_SUBNETS).instance("u1")];
    let before = table(base());
    // Both renewed a second later: only the expiry times moved.
    let renewed = table(base().into_iter().map(|l| l.renewed_ago(-1)).collect());
    assert_ne!(before, renewed);
    assert!(before.same_but_expiry(&renewed));
    let changed = |edit: fn(LeaseBuilder) -> LeaseBuilder| {
        let mut leases = base();
        let b = leases.pop().unwrap();
        leases.push(edit(b));
        table(leases)
    };
    for (what, other) in [
        ("draining", changed(LeaseBuilder::draining)),
        ("subnets", changed(|l| l.subnets("192.0.2.0/24"))),
        ("announcing", changed(|l| l.announcing("192.0.2.240"))),
        ("instance", changed(|l| l.instance("u2"))),
        ("expired", changed(|l| l.renewed_ago(11))),
        ("gone", table(vec![lease("node-a").subnets(BOTH_SUBNETS)])),
        ("new", table(base().into_iter().chain([lease("node-c")]).collect())),
    ] {
        assert!(!before.same_but_expiry(&other), "{what}");
        assert!(!other.same_but_expiry(&before), "{what}");
        // Only the announced addresses leave the election as it was.
        let same_election = what == "announcing";
        assert_eq!(before.same_election(&other), same_election, "{what}");
        assert_eq!(other.same_election(&before), same_election, "{what}");
        assert_eq!(
            before.same_holding(&other),
            what != "announcing" && what != "gone" && what != "new" && what != "expired",
            "{what}"
        );
    }
    assert!(before.same_election(&renewed) && before.same_holding(&renewed));
}

#[test]
fn election_changes_name_the_subnets_of_the_nodes_whose_candidacy_changed() {
    let base = || {
        vec![
            lease("node-a").subnets("192.0.2.0/24"),
            lease("node-b").subnets("198.51.100.0/24").instance("u1"),
            lease("node-c").subnets("203.0.113.0/24"),
        ]
    };
    let before = table(base());
    let with_b = |edit: fn(LeaseBuilder) -> LeaseBuilder| {
        table(
            base()
                .into_iter()
                .map(|l| {
                    if l.lease.spec.as_ref().unwrap().holder_identity.as_deref() == Some("node-b") {
                        edit(l)
                    } else {
                        l
                    }
                })
                .collect(),
        )
    };
    let in_b = ip("198.51.100.7");
    let elsewhere = [ip("192.0.2.7"), ip("203.0.113.7"), ip("2001:db8::7")];
    // Nothing an election reads changed: renewals, what it announces, a new instance.
    for other in [with_b(|l| l.renewed_ago(-1)), with_b(|l| l.announcing("198.51.100.7")), with_b(|l| l.instance("u2"))]
    {
        assert!(before.election_changes(&other).is_empty());
    }
    // node-b drains, goes, expires, or comes: its subnet, nothing else.
    for other in [
        with_b(LeaseBuilder::draining),
        with_b(|l| l.renewed_ago(11)),
        table(
            base()
                .into_iter()
                .filter(|l| l.lease.spec.as_ref().unwrap().holder_identity.as_deref() != Some("node-b"))
                .collect(),
        ),
    ] {
        for (old, new) in [(&before, &other), (&other, &before)] {
            let changes = old.election_changes(new);
            assert!(changes.touches(in_b), "{changes:?}");
            assert!(changes.touches(ip("::ffff:198.51.100.7")), "IPv4-mapped as IPv4");
            assert!(elsewhere.iter().all(|a| !changes.touches(*a)), "{changes:?}");
        }
    }
    // A subnet change: the old and the new subnet.
    let moved = before.election_changes(&with_b(|l| l.subnets("2001:db8::/64")));
    assert!(moved.touches(in_b) && moved.touches(ip("2001:db8::7")));
    assert!(!moved.touches(ip("192.0.2.7")) && !moved.touches(ip("203.0.113.7")));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// Every address the changes do not touch has the same candidates and winner in both tables.
    #[test]
    fn untouched_addresses_keep_their_candidates_and_winner(
        old in proptest::collection::vec((0u8..4, 0u8..4, any::<bool>(), any::<bool>()), 0..5),
        new in proptest::collection::vec((0u8..4, 0u8..4, any::<bool>(), any::<bool>()), 0..5),
        last in 0u8..=255,
        network in 0u8..4,
    ) {
        const SUBNETS: [&str; 4] = ["192.0.2.0/24", "198.51.100.0/24", "192.0.2.128/25", "192.0.2.0/24,198.51.100.0/24"];
        let build = |spec: &[(u8, u8, bool, bool)]| {
            table(spec.iter().map(|(node, subnets, draining, expired)| {
                let l = lease(&format!("n{node}")).subnets(SUBNETS[usize::from(*subnets)]);
                let l = if *draining { l.draining() } else { l };
                if *expired { l.renewed_ago(11) } else { l }
            }).collect())
        };
        let (old, new) = (build(&old), build(&new));
        let changes = old.election_changes(&new);
        let address = IpAddr::from([[192, 0, 2], [198, 51, 100], [203, 0, 113], [192, 0, 2]][usize::from(network)].iter().copied().chain([last]).collect::<Vec<u8>>().try_into().map(|a: [u8; 4]| a).unwrap());
        if !changes.touches(address) {
            let names = |m: &Members| m.candidates(address).map(|c| c.node.clone()).collect::<Vec<_>>();
            prop_assert_eq!(names(&old), names(&new));
            prop_assert_eq!(old.winner(address), new.winner(address));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// The subnet index elects exactly as a scan of every member does: overlapping subnets (a
    /// node on two of them is one candidate), draining and expired members, both families and
    /// IPv4-mapped addresses, with and without a preference.
    #[test]
    fn the_subnet_index_elects_as_a_scan_of_every_member(
        spec in proptest::collection::vec((0u8..6, 0u8..6, any::<bool>(), any::<bool>()), 0..8),
        last in 0u8..=255,
        network in 0u8..5,
        mapped in any::<bool>(),
        preferred in proptest::collection::vec(any::<bool>(), 6),
    ) {
        const SUBNETS: [&str; 6] = [
            "192.0.2.0/24",
            "198.51.100.0/24",
            "192.0.2.128/25",
            "192.0.2.0/24,198.51.100.0/24,192.0.0.0/16",
            "2001:db8::/64,192.0.2.0/23",
            "2001:db8::/32, 2001:db8::/64",
        ];
        let members = table(spec.iter().map(|(node, subnets, draining, expired)| {
            let l = lease(&format!("n{node}")).subnets(SUBNETS[usize::from(*subnets)]);
            let l = if *draining { l.draining() } else { l };
            if *expired { l.renewed_ago(11) } else { l }
        }).collect());
        let v4 = |a: [u8; 3]| IpAddr::from([a[0], a[1], a[2], last]);
        let address = match network {
            0 => v4([192, 0, 2]),
            1 => v4([198, 51, 100]),
            2 => v4([192, 0, 3]),
            3 => v4([203, 0, 113]),
            _ => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last)]),
        };
        let address = match address {
            IpAddr::V4(v4) if mapped => IpAddr::V6(v4.to_ipv6_mapped()),
            other => other,
        };
        let scanned: Vec<&str> = members.candidates(address).map(|m| m.node.as_str()).collect();
        prop_assert_eq!(members.winner(address), elect(scanned.iter().copied(), address));
        let prefer = |node: &str| preferred[usize::from(node.as_bytes()[1] - b'0')];
        let expected = match elect(scanned.iter().copied().filter(|n| prefer(n)), address) {
            Some(node) => Winner::Preferred(node.to_owned()),
            None => elect(scanned.iter().copied(), address).map_or(Winner::None, |n| Winner::Fallback(n.to_owned())),
        };
        prop_assert_eq!(members.winner_preferring(address, prefer), expected);
    }
}
