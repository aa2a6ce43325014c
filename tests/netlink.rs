//! Kernel tests of `core::netlink` (run as root). Every test runs in a fresh network namespace
//! of its own (`purelb::testing::in_new_netns`), so nothing leaks and tests run in parallel.
//! Addresses come only from 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32.

// Test helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use purelb::{
    core::{
        ipam::{AddressRange, Family},
        netlink::{
            AddOutcome, Address, AddressFlags, AddressManager, AddressSpec, AddressWatch, DeleteOutcome, LinkRef,
            MarkSupport, NetlinkError, PURELB_ADDRESS_PROTOCOL, WatchConfig, is_owned,
        },
    },
    testing::{NetnsHandle, in_new_netns},
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Runs `ip <args>` in the namespace, for its effect only.
fn ip_do(ns: &NetnsHandle, args: &[&str]) {
    let _ = ns.ip(args);
}

/// A veth pair, both ends up.
fn veth(ns: &NetnsHandle, a: &str, b: &str) {
    ip_do(ns, &["link", "add", a, "type", "veth", "peer", "name", b]);
    ip_do(ns, &["link", "set", a, "up"]);
    ip_do(ns, &["link", "set", b, "up"]);
}

/// A bridge, up (it has no ports, so no carrier).
fn bridge(ns: &NetnsHandle, name: &str) {
    ip_do(ns, &["link", "add", name, "type", "bridge"]);
    ip_do(ns, &["link", "set", name, "up"]);
}

async fn find(manager: &AddressManager, ifname: &str, address: &str) -> Option<Address> {
    manager.addresses().await.unwrap().into_iter().find(|a| a.ifname == ifname && a.ip == ip(address))
}

#[test]
fn lists_veth_and_bridge_links() {
    in_new_netns(|ns| async move {
        veth(&ns, "pl-v0", "pl-v1");
        ip_do(&ns, &["link", "add", "pl-br0", "type", "bridge"]);
        let manager = AddressManager::new().unwrap();

        let links = manager.links().await.unwrap();
        let v0 = links.iter().find(|l| l.name == "pl-v0").unwrap();
        assert_eq!(v0.kind.as_deref(), Some("veth"));
        assert!(v0.admin_up && v0.lower_up && v0.is_usable());
        let br0 = links.iter().find(|l| l.name == "pl-br0").unwrap();
        assert_eq!(br0.kind.as_deref(), Some("bridge"));
        assert!(!br0.admin_up && !br0.is_usable());
        let lo = links.iter().find(|l| l.name == "lo").unwrap();
        assert!(lo.loopback && !lo.admin_up, "lo is down in a new namespace");

        let by_name = manager.link(&"pl-br0".into()).await.unwrap().unwrap();
        assert_eq!(by_name.index, br0.index);
        let by_index = manager.link(&LinkRef::Index(v0.index)).await.unwrap().unwrap();
        assert_eq!(by_index.name, "pl-v0");
        assert!(manager.link(&"pl-absent0".into()).await.unwrap().is_none());
        assert!(manager.link(&LinkRef::Index(999_999)).await.unwrap().is_none());
    });
}

#[test]
fn adds_replaces_and_deletes_addresses() {
    in_new_netns(|ns| async move {
        bridge(&ns, "pl-br0");
        let manager = AddressManager::new().unwrap();
        let v4 = AddressSpec::new("pl-br0", ip("192.0.2.10"), 24);
        let v6 = AddressSpec::new("pl-br0", ip("2001:db8::10"), 64).nodad();

        assert_eq!(manager.add_or_replace(&v4).await.unwrap(), AddOutcome::Added);
        assert_eq!(manager.add_or_replace(&v4).await.unwrap(), AddOutcome::Replaced);
        assert_eq!(manager.add_or_replace(&v6).await.unwrap(), AddOutcome::Added);
        assert_eq!(manager.add_or_replace(&v6).await.unwrap(), AddOutcome::Replaced);
        let shown = ns.ip(&["address", "show", "dev", "pl-br0"]);
        assert!(shown.contains("192.0.2.10/24") && shown.contains("2001:db8::10/64"), "{shown}");
        let a4 = find(&manager, "pl-br0", "192.0.2.10").await.unwrap();
        assert_eq!(a4.prefix_len, 24);
        assert!(a4.has_purelb_mark(), "a replace keeps the mark: {a4:?}");
        assert!(find(&manager, "pl-br0", "2001:db8::10").await.unwrap().has_purelb_mark());

        // The interface can be given by index too.
        let index = manager.link(&"pl-br0".into()).await.unwrap().unwrap().index;
        let by_index = AddressSpec::new(index, ip("198.51.100.10"), 32);
        assert_eq!(manager.add_or_replace(&by_index).await.unwrap(), AddOutcome::Added);
        assert_eq!(manager.delete(index, ip("198.51.100.10")).await.unwrap(), DeleteOutcome::Removed);

        assert_eq!(manager.delete("pl-br0", v4.ip).await.unwrap(), DeleteOutcome::Removed);
        assert_eq!(manager.delete("pl-br0", v4.ip).await.unwrap(), DeleteOutcome::Absent, "idempotent");
        assert_eq!(manager.delete("pl-br0", v6.ip).await.unwrap(), DeleteOutcome::Removed);
        assert_eq!(manager.delete("pl-absent0", v6.ip).await.unwrap(), DeleteOutcome::Absent);
        let shown = ns.ip(&["address", "show", "dev", "pl-br0"]);
        assert!(!shown.contains("192.0.2.10") && !shown.contains("2001:db8::10"), "{shown}");

        let error = manager.add_or_replace(&AddressSpec::new("pl-absent0", ip("192.0.2.11"), 32)).await.unwrap_err();
        assert!(matches!(error, NetlinkError::LinkNotFound { .. }), "{error}");
        assert!(error.to_string().contains("pl-absent0"), "{error}");
        let error = manager.add_or_replace(&AddressSpec::new(999_999, ip("192.0.2.11"), 32)).await.unwrap_err();
        assert!(matches!(error, NetlinkError::LinkNotFound { .. }), "{error}");
    });
}

#[test]
fn flags_lifetimes_and_mark_read_back() {
    in_new_netns(|ns| async move {
        veth(&ns, "pl-v0", "pl-v1");
        let manager = AddressManager::new().unwrap();
        let v4 = AddressSpec::new("pl-v0", ip("192.0.2.20"), 24).noprefixroute().lifetimes(300, 200);
        let v6 = AddressSpec::new("pl-v0", ip("2001:db8:1::20"), 64).nodad().noprefixroute();
        let plain = AddressSpec::new("pl-v0", ip("198.51.100.20"), 32);
        for spec in [&v4, &v6, &plain] {
            manager.add_or_replace(spec).await.unwrap();
        }

        let a4 = find(&manager, "pl-v0", "192.0.2.20").await.unwrap();
        assert_eq!(a4.flags, AddressFlags { nodad: false, noprefixroute: true });
        assert!(!a4.state.permanent);
        let valid = a4.valid_lifetime.unwrap();
        let preferred = a4.preferred_lifetime.unwrap();
        assert!((250..=300).contains(&valid) && (150..=200).contains(&preferred), "{valid} {preferred}");
        assert_eq!(a4.protocol, Some(PURELB_ADDRESS_PROTOCOL));

        let a6 = find(&manager, "pl-v0", "2001:db8:1::20").await.unwrap();
        assert_eq!(a6.flags, AddressFlags { nodad: true, noprefixroute: true });
        assert!(a6.state.permanent && !a6.state.tentative);
        assert_eq!((a6.valid_lifetime, a6.preferred_lifetime), (None, None));
        assert_eq!(a6.protocol, Some(PURELB_ADDRESS_PROTOCOL));

        let plain_read = find(&manager, "pl-v0", "198.51.100.20").await.unwrap();
        assert_eq!(plain_read.flags, AddressFlags::default());
        assert!(plain_read.state.permanent && plain_read.has_purelb_mark());

        // noprefixroute: the kernel added no route for the subnets.
        let routes = ns.ip(&["-4", "route", "show", "dev", "pl-v0"]);
        assert!(!routes.contains("192.0.2.0/24"), "{routes}");
        let routes = ns.ip(&["-6", "route", "show", "dev", "pl-v0"]);
        assert!(!routes.contains("2001:db8:1::/64"), "{routes}");

        // A replace rewrites lifetimes (now permanent) and keeps the mark. IPv4 keeps its flags
        // on a replace (a kernel rule); IPv6 takes the new ones.
        manager.add_or_replace(&AddressSpec::new("pl-v0", ip("192.0.2.20"), 24)).await.unwrap();
        let a4 = find(&manager, "pl-v0", "192.0.2.20").await.unwrap();
        assert!(a4.state.permanent, "{a4:?}");
        assert_eq!((a4.valid_lifetime, a4.preferred_lifetime), (None, None));
        assert!(a4.has_purelb_mark());
        assert!(a4.flags.noprefixroute, "{a4:?}");
        let v6_short = AddressSpec::new("pl-v0", ip("2001:db8:1::20"), 64).nodad().lifetimes(120, 60);
        assert_eq!(manager.add_or_replace(&v6_short).await.unwrap(), AddOutcome::Replaced);
        let a6 = find(&manager, "pl-v0", "2001:db8:1::20").await.unwrap();
        assert!(a6.valid_lifetime.is_some_and(|v| v <= 120), "{a6:?}");
        assert!(!a6.flags.noprefixroute && a6.has_purelb_mark(), "{a6:?}");
    });
}

#[test]
fn default_interface_prefers_lowest_metric_and_ignores_down_links() {
    in_new_netns(|ns| async move {
        let manager = AddressManager::new().unwrap();
        assert!(manager.default_interface(Family::V4).await.unwrap().is_none());

        veth(&ns, "pl-a0", "pl-a1");
        veth(&ns, "pl-b0", "pl-b1");
        ip_do(&ns, &["address", "add", "192.0.2.1/24", "dev", "pl-a0"]);
        ip_do(&ns, &["address", "add", "198.51.100.1/24", "dev", "pl-b0"]);
        ip_do(&ns, &["-6", "address", "add", "2001:db8:a::1/64", "dev", "pl-a0", "nodad"]);
        ip_do(&ns, &["-6", "address", "add", "2001:db8:b::1/64", "dev", "pl-b0", "nodad"]);
        ip_do(&ns, &["route", "add", "default", "via", "192.0.2.254", "dev", "pl-a0", "metric", "100"]);
        ip_do(&ns, &["route", "add", "default", "via", "198.51.100.254", "dev", "pl-b0", "metric", "50"]);
        ip_do(&ns, &["-6", "route", "add", "default", "via", "2001:db8:a::fe", "dev", "pl-a0", "metric", "100"]);
        ip_do(&ns, &["-6", "route", "add", "default", "via", "2001:db8:b::fe", "dev", "pl-b0", "metric", "50"]);

        for family in [Family::V4, Family::V6] {
            let chosen = manager.default_interface(family).await.unwrap().unwrap();
            assert_eq!(chosen.name, "pl-b0", "{family}: lowest metric");
        }

        // The peer goes down: pl-b0 loses its carrier, its default routes stay but are unusable.
        ip_do(&ns, &["link", "set", "pl-b1", "down"]);
        for family in [Family::V4, Family::V6] {
            let chosen = manager.default_interface(family).await.unwrap().unwrap();
            assert_eq!(chosen.name, "pl-a0", "{family}: a link without carrier is ignored");
        }
        ip_do(&ns, &["link", "set", "pl-b0", "down"]);
        let chosen = manager.default_interface(Family::V4).await.unwrap().unwrap();
        assert_eq!(chosen.name, "pl-a0", "an administratively down link is ignored");
    });
}

#[test]
fn interface_for_skips_tentative_deprecated_and_link_local() {
    in_new_netns(|ns| async move {
        // pl-t0 has no carrier (its peer is down), so DAD cannot run: its address stays tentative.
        ip_do(&ns, &["link", "add", "pl-t0", "type", "veth", "peer", "name", "pl-t1"]);
        ip_do(&ns, &["link", "set", "pl-t0", "up"]);
        ip_do(&ns, &["-6", "address", "add", "2001:db8:5::1/64", "dev", "pl-t0"]);
        // pl-d0 holds a deprecated address (preferred lifetime 0) and a link-local one.
        veth(&ns, "pl-d0", "pl-d1");
        ns.run("sysctl", &["-q", "-w", "net.ipv6.conf.pl-d0.accept_dad=0"]);
        ip_do(
            &ns,
            &["-6", "address", "add", "2001:db8:5:0:1::3/80", "dev", "pl-d0", "valid_lft", "600", "preferred_lft", "0"],
        );
        ip_do(&ns, &["-6", "address", "add", "fe80::1234/64", "dev", "pl-d0", "nodad"]);
        bridge(&ns, "pl-br0");
        ip_do(&ns, &["-6", "address", "add", "2001:db8:5::2/48", "dev", "pl-br0", "nodad"]);
        ip_do(&ns, &["address", "add", "192.0.2.1/24", "dev", "pl-br0"]);

        let manager = AddressManager::new().unwrap();
        let tentative = find(&manager, "pl-t0", "2001:db8:5::1").await.unwrap();
        assert!(tentative.state.tentative, "{tentative:?}");
        let deprecated = find(&manager, "pl-d0", "2001:db8:5:0:1::3").await.unwrap();
        assert!(deprecated.state.deprecated, "{deprecated:?}");
        assert!(find(&manager, "pl-d0", "fe80::1234").await.unwrap().is_link_local());

        let found = manager.interface_for(ip("2001:db8:5:0:1::99")).await.unwrap().unwrap();
        assert_eq!((found.ifname.as_str(), found.prefix_len), ("pl-br0", 48), "the /64 and /80 are skipped");
        let found = manager.interface_for(ip("192.0.2.77")).await.unwrap().unwrap();
        assert_eq!((found.ifname.as_str(), found.prefix_len), ("pl-br0", 24));
        assert!(manager.interface_for(ip("fe80::99")).await.unwrap().is_none(), "link-local is skipped");
        assert!(manager.interface_for(ip("203.0.113.1")).await.unwrap().is_none());

        // The same /64 without DAD is never tentative, so it counts (longest prefix wins).
        ip_do(&ns, &["-6", "address", "del", "2001:db8:5::1/64", "dev", "pl-t0"]);
        ip_do(&ns, &["-6", "address", "add", "2001:db8:5::1/64", "dev", "pl-t0", "nodad"]);
        let found = manager.interface_for(ip("2001:db8:5::99")).await.unwrap().unwrap();
        assert_eq!((found.ifname.as_str(), found.prefix_len), ("pl-t0", 64));
    });
}

#[test]
fn administrators_addresses_are_never_touched() {
    in_new_netns(|ns| async move {
        bridge(&ns, "kube-lb0");
        ip_do(&ns, &["address", "add", "192.0.2.50/32", "dev", "kube-lb0"]);
        ip_do(&ns, &["-6", "address", "add", "2001:db8::50/128", "dev", "kube-lb0", "nodad"]);
        let manager = AddressManager::new().unwrap();
        assert_eq!(manager.mark_support(), MarkSupport::Stored, "this kernel stores IFA_PROTO");
        manager.add_or_replace(&AddressSpec::new("kube-lb0", ip("192.0.2.51"), 32)).await.unwrap();

        let pools = [AddressRange::parse("192.0.2.0/24").unwrap(), AddressRange::parse("2001:db8::/64").unwrap()];
        let marks = manager.mark_support();
        let owned: Vec<IpAddr> = manager
            .snapshot()
            .await
            .unwrap()
            .addresses
            .iter()
            .filter(|a| is_owned(a, &["kube-lb0"], &pools, marks))
            .map(|a| a.ip)
            .collect();
        assert_eq!(owned, vec![ip("192.0.2.51")], "only the marked address is ours");

        for admin in ["192.0.2.50", "2001:db8::50"] {
            let error = manager.delete("kube-lb0", ip(admin)).await.unwrap_err();
            assert!(matches!(error, NetlinkError::NotOwned { .. }), "{error}");
            assert!(error.to_string().contains(admin), "{error}");
        }
        let replace = AddressSpec::new("kube-lb0", ip("192.0.2.50"), 32).lifetimes(300, 300);
        let error = manager.add_or_replace(&replace).await.unwrap_err();
        assert!(matches!(error, NetlinkError::NotOwned { .. }), "{error}");
        let replace = AddressSpec::new("kube-lb0", ip("2001:db8::50"), 64).nodad();
        let error = manager.add_or_replace(&replace).await.unwrap_err();
        assert!(matches!(error, NetlinkError::NotOwned { .. }), "{error}");

        // The snapshot-based delete follows the same rule.
        let snapshot = manager.snapshot().await.unwrap();
        let listed = |text: &str| snapshot.addresses.iter().find(|a| a.ip == ip(text)).unwrap().clone();
        let error = manager.delete_listed(&listed("192.0.2.50"), &snapshot).await.unwrap_err();
        assert!(matches!(error, NetlinkError::NotOwned { .. }), "{error}");
        assert_eq!(manager.delete_listed(&listed("192.0.2.51"), &snapshot).await.unwrap(), DeleteOutcome::Removed);
        assert_eq!(manager.delete_listed(&listed("192.0.2.51"), &snapshot).await.unwrap(), DeleteOutcome::Absent);

        for admin in ["192.0.2.50", "2001:db8::50"] {
            let untouched = find(&manager, "kube-lb0", admin).await.unwrap();
            assert!(untouched.state.permanent && untouched.protocol.is_none(), "{untouched:?}");
            assert_eq!(untouched.prefix_len, Family::of(untouched.ip).bits());
        }
    });
}

#[test]
fn deleting_our_primary_keeps_secondaries() {
    in_new_netns(|ns| async move {
        bridge(&ns, "pl-br0");
        let manager = AddressManager::new().unwrap();
        // Ours comes first, so it is the subnet's primary; the administrator's is a secondary.
        manager.add_or_replace(&AddressSpec::new("pl-br0", ip("192.0.2.10"), 24)).await.unwrap();
        ip_do(&ns, &["address", "add", "192.0.2.20/24", "dev", "pl-br0"]);
        assert!(find(&manager, "pl-br0", "192.0.2.20").await.unwrap().state.secondary);

        assert_eq!(manager.delete("pl-br0", ip("192.0.2.10")).await.unwrap(), DeleteOutcome::Removed);
        let survivor = find(&manager, "pl-br0", "192.0.2.20").await.expect("the secondary survived");
        assert!(!survivor.state.secondary, "promoted to primary");
        let link = manager.link(&"pl-br0".into()).await.unwrap().unwrap();
        assert_eq!(link.promote_secondaries, Some(true));
    });
}

#[test]
fn ensure_link_accepts_an_existing_link_of_any_kind() {
    in_new_netns(|ns| async move {
        ip_do(&ns, &["link", "add", "kube-lb0", "type", "bridge"]);
        ip_do(&ns, &["link", "add", "pl-v0", "type", "veth", "peer", "name", "pl-v1"]);
        let manager = AddressManager::new().unwrap();
        let index = manager.link(&"kube-lb0".into()).await.unwrap().unwrap().index;

        let ensured = manager.ensure_link("kube-lb0").await.unwrap();
        assert_eq!((ensured.index, ensured.created, ensured.kind.as_deref()), (index, false, Some("bridge")));
        assert!(manager.link(&"kube-lb0".into()).await.unwrap().unwrap().admin_up, "set up");
        assert_eq!(manager.ensure_link("kube-lb0").await.unwrap(), ensured, "idempotent");

        let veth = manager.ensure_link("pl-v0").await.unwrap();
        assert_eq!((veth.created, veth.kind.as_deref()), (false, Some("veth")));
    });
}

#[test]
fn ensure_link_explains_what_to_do_without_dummy_support() {
    in_new_netns(|_ns| async move {
        let manager = AddressManager::new().unwrap();
        match manager.ensure_link("kube-lb0").await {
            // A kernel with the dummy link type creates it.
            Ok(ensured) => {
                assert!(ensured.created);
                assert_eq!(ensured.kind.as_deref(), Some("dummy"));
            }
            Err(error) => {
                assert_eq!(error.errno(), Some(95), "{error}");
                let text = error.to_string();
                for needle in ["kube-lb0", "dummy", "EOPNOTSUPP", "ip link add kube-lb0 type bridge"] {
                    assert!(text.contains(needle), "{needle:?} missing from: {text}");
                }
                assert!(manager.link(&"kube-lb0".into()).await.unwrap().is_none());
            }
        }
        let error = manager.ensure_link("a-name-too-long-for-linux").await.unwrap_err();
        assert!(matches!(error, NetlinkError::InvalidLinkName { .. }), "{error}");
    });
}

#[test]
fn drift_is_detected_within_one_second() {
    in_new_netns(|ns| async move {
        bridge(&ns, "kube-lb0");
        let manager = AddressManager::new().unwrap();
        let held = [
            AddressSpec::new("kube-lb0", ip("192.0.2.60"), 32),
            AddressSpec::new("kube-lb0", ip("2001:db8::60"), 128).nodad(),
        ];
        for spec in &held {
            manager.add_or_replace(spec).await.unwrap();
        }
        let mut watch = manager.watch().unwrap();
        let missing = |snapshot: &purelb::core::netlink::AddressSnapshot| -> Vec<IpAddr> {
            held.iter()
                .filter(|spec| !snapshot.addresses.iter().any(|a| a.ip == spec.ip && a.ifname == "kube-lb0"))
                .map(|spec| spec.ip)
                .collect()
        };
        assert!(missing(&manager.snapshot().await.unwrap()).is_empty());

        ip_do(&ns, &["address", "del", "192.0.2.60/32", "dev", "kube-lb0"]);
        let deleted = Instant::now();
        let gone = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                watch.changed().await.unwrap();
                let gone = missing(&manager.snapshot().await.unwrap());
                if !gone.is_empty() {
                    return gone;
                }
            }
        })
        .await
        .expect("drift not detected within 1 s");
        assert_eq!(gone, vec![ip("192.0.2.60")]);
        eprintln!("drift detected {:?} after the external delete", deleted.elapsed());
    });
}

#[test]
fn overrun_triggers_a_full_resync() {
    in_new_netns(|ns| async move {
        bridge(&ns, "pl-br0");
        // The smallest receive buffer the kernel allows: a burst overflows it.
        let mut watch = AddressWatch::subscribe(WatchConfig { receive_buffer: 1, ..WatchConfig::default() }).unwrap();
        let batch: String = (1..=250).map(|i| format!("address add 203.0.113.{i}/32 dev pl-br0\n")).collect();
        let path = std::env::temp_dir().join(format!("purelb-netlink-overrun-{}.batch", std::process::id()));
        std::fs::write(&path, batch).unwrap();
        // `ip` runs while this thread (and so the watch's connection task) is blocked.
        ip_do(&ns, &["-batch", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();

        let trigger = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await.unwrap().unwrap();
        assert!(trigger.overrun, "{trigger:?}");
        // The answer to an overrun is a full re-read, which sees every address.
        let manager = AddressManager::new().unwrap();
        let on_bridge =
            manager.addresses().await.unwrap().into_iter().filter(|a| a.ifname == "pl-br0" && a.ip.is_ipv4()).count();
        assert_eq!(on_bridge, 250);
    });
}

#[test]
fn blackhole_routes_come_and_go() {
    in_new_netns(|ns| async move {
        bridge(&ns, "pl-br0");
        ip_do(&ns, &["addr", "add", "192.0.2.1/24", "dev", "pl-br0"]);
        ip_do(&ns, &["addr", "add", "2001:db8::1/64", "dev", "pl-br0", "nodad"]);
        let manager = AddressManager::new().unwrap();
        let routes = |family: &str| ns.ip(&[family, "route", "show", "type", "blackhole"]);
        for (family, address) in [("-4", "192.0.2.240"), ("-6", "2001:db8::f0")] {
            manager.set_blackhole(ip(address), true).await.unwrap();
            manager.set_blackhole(ip(address), true).await.unwrap(); // twice is fine
            let shown = routes(family);
            assert!(shown.contains(address), "{shown}");
            manager.set_blackhole(ip(address), false).await.unwrap();
            let shown = routes(family);
            assert!(!shown.contains(address), "still there: {shown}");
            manager.set_blackhole(ip(address), false).await.unwrap(); // absent is fine
        }
    });
}

/// A second network namespace, held by an `unshare -n sleep` child (killed on drop).
struct PeerNamespace {
    child: std::process::Child,
}

impl PeerNamespace {
    fn start() -> Self {
        let child = std::process::Command::new("unshare").args(["-n", "sleep", "120"]).spawn().unwrap();
        // Let unshare switch namespaces before the namespace is used.
        std::thread::sleep(Duration::from_millis(200));
        Self { child }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn ip(&self, args: &[&str]) {
        let status = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?} in the peer namespace failed");
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the agent relies on when a takeover finds the address still on its previous holder:
/// IPv6 duplicate address detection fails and the snapshot says so; added again without DAD,
/// the address is usable at once.
#[test]
fn dad_failure_is_visible_and_an_address_added_again_without_dad_is_usable() {
    in_new_netns(|ns| async move {
        let peer = PeerNamespace::start();
        ip_do(&ns, &["link", "add", "pl-d0", "type", "veth", "peer", "name", "pl-d1"]);
        ip_do(&ns, &["link", "set", "pl-d1", "netns", &peer.pid()]);
        ns.run("sysctl", &["-qw", "net.ipv6.conf.pl-d0.accept_dad=1"]);
        peer.ip(&["link", "set", "pl-d1", "up"]);
        peer.ip(&["addr", "add", "2001:db8::f0/64", "dev", "pl-d1", "nodad"]);
        ip_do(&ns, &["link", "set", "pl-d0", "up"]);
        let manager = AddressManager::new().unwrap();
        manager.add_or_replace(&AddressSpec::new("pl-d0", ip("2001:db8::f0"), 64).noprefixroute()).await.unwrap();
        let started = Instant::now();
        let mut failed = None;
        while started.elapsed() < Duration::from_secs(10) {
            failed = find(&manager, "pl-d0", "2001:db8::f0").await.filter(|a| a.state.dad_failed);
            if failed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let failed = failed.expect("DAD never failed although the peer holds the address");
        let snapshot = manager.snapshot().await.unwrap();
        manager.delete_listed(&failed, &snapshot).await.unwrap();
        manager
            .add_or_replace(&AddressSpec::new("pl-d0", ip("2001:db8::f0"), 64).noprefixroute().nodad())
            .await
            .unwrap();
        let again = find(&manager, "pl-d0", "2001:db8::f0").await.unwrap();
        assert!(!again.state.dad_failed && !again.state.tentative, "{again:?}");
        assert!(again.flags.nodad);
    });
}
