//! `purelb reconcile --all` against the kernel (run as root): the real binary runs inside a
//! fresh network namespace of the test's own (`purelb::testing::in_new_netns`, entered with
//! `nsenter`), with `KUBECONFIG` pointing nowhere, so it proves that `--all` needs no API access.
//! The node mode, which needs the API, is tested in the lab (`e2e/tests/reconcile.rs`).
//!
//! The test kernel has no `dummy` link type, so `kube-lb0` is a bridge; the "created by PureLB"
//! case marks it with `AddressManager::mark_created_link`, the very call `ensure_link` makes on a
//! link it has just created. Addresses come only from 192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24 and 2001:db8::/32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, net::IpAddr, process::Command};

use purelb::{
    core::netlink::{AddressManager, AddressSpec, DeleteOutcome, NetlinkError, PURELB_LINK_ALIAS},
    testing::{NetnsHandle, in_new_netns},
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ip_do(ns: &NetnsHandle, args: &[&str]) {
    let _ = ns.ip(args);
}

/// Runs `purelb reconcile <args>` inside the namespace; (exit status, stdout, stderr).
fn reconcile(ns: &NetnsHandle, args: &[&str]) -> (i32, String, String) {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(env!("CARGO_BIN_EXE_purelb"))
        .arg("reconcile")
        .args(args)
        .env("KUBECONFIG", "/nonexistent/purelb-test/kubeconfig")
        .env_remove("NODE_NAME")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// (interface, address/prefix) of every address with PureLB's mark.
async fn marked(mgr: &AddressManager) -> BTreeSet<(String, String)> {
    mgr.addresses()
        .await
        .unwrap()
        .into_iter()
        .filter(purelb::core::netlink::Address::has_purelb_mark)
        .map(|a| (a.ifname, format!("{}/{}", a.ip, a.prefix_len)))
        .collect()
}

async fn has(mgr: &AddressManager, ifname: &str, address: &str) -> bool {
    mgr.addresses().await.unwrap().iter().any(|a| a.ifname == ifname && a.ip == ip(address))
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter().map(|(i, a)| ((*i).to_owned(), (*a).to_owned())).collect()
}

#[test]
fn reconcile_all_removes_owned_addresses_and_the_dummy_purelb_created() {
    in_new_netns(|ns| async move {
        ip_do(&ns, &["link", "add", "pl-v0", "type", "veth", "peer", "name", "pl-v1"]);
        ip_do(&ns, &["link", "set", "pl-v0", "up"]);
        ip_do(&ns, &["link", "set", "pl-v1", "up"]);
        ip_do(&ns, &["addr", "add", "192.0.2.10/24", "dev", "pl-v0"]);
        // An administrator's address inside a pool range, without the mark.
        ip_do(&ns, &["addr", "add", "192.0.2.241/24", "dev", "pl-v0"]);
        ip_do(&ns, &["link", "add", "kube-lb0", "type", "bridge"]);
        ip_do(&ns, &["link", "add", "pl-br1", "type", "bridge"]);
        ip_do(&ns, &["addr", "add", "203.0.113.6/32", "dev", "pl-br1"]);
        let mgr = AddressManager::new().unwrap();
        let dummy = mgr.ensure_link("kube-lb0").await.unwrap();
        assert!(!dummy.created, "the bridge was there before");
        // What ensure_link does to a link it creates (this kernel cannot create dummy links).
        let link = mgr.link(&"kube-lb0".into()).await.unwrap().unwrap();
        mgr.mark_created_link(&link).await.unwrap();
        for spec in [
            AddressSpec::new("pl-v0", ip("192.0.2.240"), 24).noprefixroute().lifetimes(300, 300),
            AddressSpec::new("pl-v0", ip("2001:db8::240"), 64).nodad().noprefixroute(),
            AddressSpec::new("kube-lb0", ip("198.51.100.16"), 28),
            AddressSpec::new("kube-lb0", ip("198.51.100.17"), 32),
            AddressSpec::new("pl-br1", ip("203.0.113.5"), 32),
        ] {
            mgr.add_or_replace(&spec).await.unwrap();
        }
        let owned = pairs(&[
            ("pl-v0", "192.0.2.240/24"),
            ("pl-v0", "2001:db8::240/64"),
            ("kube-lb0", "198.51.100.16/28"),
            ("kube-lb0", "198.51.100.17/32"),
            ("pl-br1", "203.0.113.5/32"),
        ]);
        assert_eq!(marked(&mgr).await, owned);

        // Dry run: reports everything, changes nothing; --exit-code says orphans were found.
        let (code, out, err) = reconcile(&ns, &["--all", "--dry-run", "--output", "json", "--exit-code"]);
        assert_eq!(code, 3, "{out}\n{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((report["mode"].as_str(), report["dryRun"].as_bool()), (Some("all"), Some(true)));
        let listed: BTreeSet<(String, String)> = report["orphans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                assert_eq!(o["reason"], "--all", "{o}");
                assert_eq!(o["removed"], false, "{o}");
                (o["interface"].as_str().unwrap().to_owned(), o["address"].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(listed, owned);
        let links = report["links"].as_array().unwrap();
        assert_eq!(links.len(), 1, "only the link PureLB created: {links:?}");
        assert_eq!((links[0]["interface"].as_str(), links[0]["remove"].as_bool()), (Some("kube-lb0"), Some(true)));
        assert_eq!(links[0]["removed"], false);
        assert_eq!(marked(&mgr).await, owned, "a dry run removes nothing");
        assert!(mgr.link(&"kube-lb0".into()).await.unwrap().is_some());

        // The real run.
        let (code, out, err) = reconcile(&ns, &["--all", "--exit-code"]);
        assert_eq!(code, 3, "{out}\n{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("removed ") && l.contains(" from ") && l.contains(": --all ("))
                .count(),
            5,
            "{out}"
        );
        assert!(lines.contains(&"removed interface kube-lb0: --all (created by PureLB)"), "{out}");
        assert!(
            lines.last().unwrap().starts_with("--all: 5 orphaned addresses found, 5 removed; 1 of 1 interface"),
            "{out}"
        );
        assert!(marked(&mgr).await.is_empty(), "every PureLB-owned address is gone");
        assert!(mgr.link(&"kube-lb0".into()).await.unwrap().is_none(), "the link PureLB created is gone");
        assert!(mgr.link(&"pl-br1".into()).await.unwrap().is_some(), "a link PureLB did not create stays");
        for (ifname, address) in [("pl-v0", "192.0.2.10"), ("pl-v0", "192.0.2.241"), ("pl-br1", "203.0.113.6")] {
            assert!(has(&mgr, ifname, address).await, "{address} on {ifname} is not PureLB's and must stay");
        }

        // Nothing left: status 0.
        let (code, out, err) = reconcile(&ns, &["--all", "--exit-code"]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_eq!(out.trim(), "--all: no orphaned addresses; no interface created by PureLB to remove");
    });
}

#[test]
fn reconcile_all_keeps_links_purelb_did_not_create_or_that_carry_foreign_addresses() {
    in_new_netns(|ns| async move {
        // An administrator's kube-lb0 (for routing software), with one of our addresses on it.
        ip_do(&ns, &["link", "add", "kube-lb0", "type", "bridge"]);
        ip_do(&ns, &["link", "set", "kube-lb0", "up"]);
        // A link PureLB created, on which an administrator added an address of their own.
        ip_do(&ns, &["link", "add", "pl-lb1", "type", "bridge"]);
        ip_do(&ns, &["link", "set", "pl-lb1", "up"]);
        ip_do(&ns, &["addr", "add", "198.51.100.40/32", "dev", "pl-lb1"]);
        let mgr = AddressManager::new().unwrap();
        let created = mgr.link(&"pl-lb1".into()).await.unwrap().unwrap();
        mgr.mark_created_link(&created).await.unwrap();
        mgr.add_or_replace(&AddressSpec::new("kube-lb0", ip("198.51.100.16"), 28)).await.unwrap();
        mgr.add_or_replace(&AddressSpec::new("pl-lb1", ip("198.51.100.41"), 32)).await.unwrap();

        let (code, out, err) = reconcile(&ns, &["--all", "--output", "json", "--exit-code"]);
        assert_eq!(code, 3, "{out}\n{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["orphans"].as_array().unwrap().len(), 2, "{report}");
        assert!(report["orphans"].as_array().unwrap().iter().all(|o| o["removed"] == true), "{report}");
        let links = report["links"].as_array().unwrap();
        assert_eq!(links.len(), 1, "{report}");
        assert_eq!((links[0]["interface"].as_str(), links[0]["remove"].as_bool()), (Some("pl-lb1"), Some(false)));
        assert!(links[0]["detail"].as_str().unwrap().contains("198.51.100.40/32"), "{report}");

        assert!(marked(&mgr).await.is_empty());
        assert!(mgr.link(&"kube-lb0".into()).await.unwrap().is_some(), "kube-lb0 was not created by PureLB");
        assert!(mgr.link(&"pl-lb1".into()).await.unwrap().is_some(), "it carries an administrator's address");
        assert!(has(&mgr, "pl-lb1", "198.51.100.40").await);
    });
}

#[test]
fn reconcile_link_marker_is_set_only_on_links_purelb_creates_and_guards_deletion() {
    in_new_netns(|ns| async move {
        ip_do(&ns, &["link", "add", "pl-br0", "type", "bridge"]);
        ip_do(&ns, &["link", "add", "kube-lb0", "type", "bridge"]);
        let mgr = AddressManager::new().unwrap();
        // An existing link is used as it is: never marked.
        mgr.ensure_link("kube-lb0").await.unwrap();
        let existing = mgr.link(&"kube-lb0".into()).await.unwrap().unwrap();
        assert_eq!(existing.alias, None);
        assert!(!existing.is_created_by_purelb());
        // An absent one is created as a dummy and marked (on kernels with the dummy type).
        match mgr.ensure_link("pl-lb9").await {
            Ok(ensured) => {
                assert!(ensured.created);
                let link = mgr.link(&"pl-lb9".into()).await.unwrap().unwrap();
                assert_eq!(link.alias.as_deref(), Some(PURELB_LINK_ALIAS));
            }
            Err(error) => assert_eq!(error.errno(), Some(libc_eopnotsupp()), "{error}"),
        }
        // Deleting is refused without the mark, done with it.
        let error = mgr.delete_created_link(&existing).await.unwrap_err();
        assert!(matches!(error, NetlinkError::LinkNotCreated { .. }), "{error}");
        assert!(error.to_string().contains("kube-lb0 was not created by PureLB"), "{error}");
        assert!(mgr.link(&"kube-lb0".into()).await.unwrap().is_some());
        let bridge = mgr.link(&"pl-br0".into()).await.unwrap().unwrap();
        mgr.mark_created_link(&bridge).await.unwrap();
        let bridge = mgr.link(&"pl-br0".into()).await.unwrap().unwrap();
        assert!(bridge.is_created_by_purelb());
        assert!(ns.ip(&["link", "show", "pl-br0"]).contains(&format!("alias {PURELB_LINK_ALIAS}")));
        assert_eq!(mgr.delete_created_link(&bridge).await.unwrap(), DeleteOutcome::Removed);
        assert!(mgr.link(&"pl-br0".into()).await.unwrap().is_none());
        assert_eq!(mgr.delete_created_link(&bridge).await.unwrap(), DeleteOutcome::Absent);
    });
}

/// `EOPNOTSUPP` on Linux.
const fn libc_eopnotsupp() -> i32 {
    95
}
