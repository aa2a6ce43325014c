//! Latency of the address manager against the real kernel, in a private network namespace
//! (run as root): `cargo bench -p purelb --bench netlink`.
//!
//! On a bridge: add, replace (our own address again: `EEXIST`, ownership check, replace) and
//! delete, each over every address of a batch, as p50/p99 per operation; and the time to
//! list a snapshot (links + addresses) holding the batch. Addresses come only from the
//! documentation ranges, which hold 768 IPv4 addresses: the IPv4 batch is those 768 /32s,
//! the IPv6 batch 1,000 /128s from 2001:db8::/32.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use purelb::{
    core::netlink::{AddressManager, AddressSpec, DeleteOutcome},
    testing::in_new_netns,
};

const LINK: &str = "pl-bench0";
const LIST_RUNS: usize = 20;

fn ipv4_batch() -> Vec<IpAddr> {
    [[192, 0, 2], [198, 51, 100], [203, 0, 113]]
        .iter()
        .flat_map(|[a, b, c]| (0..=255).map(move |d| IpAddr::V4(Ipv4Addr::new(*a, *b, *c, d))))
        .collect()
}

fn ipv6_batch(n: u16) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xb, i))).collect()
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |percent: usize| samples[(samples.len() * percent / 100).min(samples.len() - 1)];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "  {what:<44} n={:<5} p50 {:>8.1} µs   p99 {:>8.1} µs   max {:>8.1} µs",
        samples.len(),
        micros(at(50)),
        micros(at(99)),
        micros(samples[samples.len() - 1]),
    );
}

async fn timed<F, Fut>(specs: &[AddressSpec], mut op: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(AddressSpec) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut samples = Vec::with_capacity(specs.len());
    for spec in specs {
        let start = Instant::now();
        op(spec.clone()).await?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

async fn bench_batch(manager: &AddressManager, label: &str, ips: &[IpAddr]) -> anyhow::Result<()> {
    let index = manager.link(&LINK.into()).await?.context("the bench bridge is missing")?.index;
    let specs: Vec<AddressSpec> = ips
        .iter()
        .map(|ip| {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            AddressSpec::new(index, *ip, bits).nodad().noprefixroute()
        })
        .collect();
    println!("{label}: {} addresses on a bridge", specs.len());

    let add = timed(&specs, |spec| async move {
        manager.add_or_replace(&spec).await?;
        Ok(())
    })
    .await?;
    report("add (new address, one request)", add);

    let mut lists = Vec::with_capacity(LIST_RUNS);
    for _ in 0..LIST_RUNS {
        let start = Instant::now();
        let snapshot = manager.snapshot().await?;
        lists.push(start.elapsed());
        ensure!(snapshot.addresses.len() >= specs.len(), "addresses are missing from the snapshot");
    }
    report(&format!("list snapshot ({} addresses + links)", specs.len()), lists);

    let replace = timed(&specs, |spec| async move {
        manager.add_or_replace(&spec).await?;
        Ok(())
    })
    .await?;
    report("replace (ours: EEXIST, dump link, replace)", replace);

    let delete = timed(&specs, |spec| async move {
        ensure!(manager.delete(spec.link, spec.ip).await? == DeleteOutcome::Removed, "nothing deleted");
        Ok(())
    })
    .await?;
    report("delete by interface + address (lookup, dump)", delete);

    for spec in &specs {
        manager.add_or_replace(spec).await?;
    }
    let snapshot = manager.snapshot().await?;
    let listed: Vec<_> = snapshot.addresses.iter().filter(|a| a.index == index && ips.contains(&a.ip)).collect();
    let mut delete_listed = Vec::with_capacity(listed.len());
    for address in listed {
        let start = Instant::now();
        ensure!(manager.delete_listed(address, &snapshot).await? == DeleteOutcome::Removed, "nothing deleted");
        delete_listed.push(start.elapsed());
    }
    report("delete listed in a snapshot (one request)", delete_listed);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run quickly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    in_new_netns(move |ns| async move {
        let _ = ns.ip(&["link", "add", LINK, "type", "bridge"]);
        let _ = ns.ip(&["link", "set", LINK, "up"]);
        let manager = AddressManager::new()?;
        println!("core::netlink against the kernel (private network namespace)");
        if quick {
            return bench_batch(&manager, "IPv4 /32 (quick)", &ipv4_batch()[..16]).await;
        }
        bench_batch(&manager, "IPv4 /32", &ipv4_batch()).await?;
        bench_batch(&manager, "IPv6 /128", &ipv6_batch(1000)).await
    })
}
