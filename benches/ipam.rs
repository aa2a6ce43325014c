//! Allocation structure vs the Go PureLB's linear scan, measured in the same run:
//! allocate 65,536 addresses from a /16 to exhaustion, 100,000 from a /64, "pool full" on an
//! exhausted /16, and the per-allocation cost at 50,000 addresses in use.
//!
//! Run: `cargo bench -p purelb --bench ipam`
//!
//! Pure arithmetic: no address here is ever put on a network.
#![allow(clippy::panic, clippy::cast_precision_loss)]

use std::{collections::HashSet, hint::black_box, net::IpAddr, time::Instant};

use purelb::core::ipam::{AddressRange, RangeUsage, lowest_free_by_scan};

fn per_op(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    let slash16 = AddressRange::parse("198.51.0.0/16").unwrap_or_else(|e| panic!("{e:?}"));
    let slash64 = AddressRange::parse("2001:db8::/64").unwrap_or_else(|e| panic!("{e:?}"));

    // 1. /16 to exhaustion.
    let mut usage = RangeUsage::new(slash16);
    let start = Instant::now();
    let mut n = 0_u32;
    while usage.take_lowest().is_some() {
        n += 1;
    }
    let tree_16 = start.elapsed();
    assert_eq!(n, 65_536);
    println!(
        "ipam: /16 to exhaustion (65,536 allocations): {:.1} ms ({} per allocation)",
        tree_16.as_secs_f64() * 1e3,
        per_op(tree_16.as_nanos() as f64 / 65_536.0)
    );

    // 2. "pool full" on the exhausted /16.
    let reps = 1_000_000;
    let start = Instant::now();
    for _ in 0..reps {
        black_box(black_box(&usage).is_full());
        black_box(black_box(&usage).lowest_free());
    }
    let full = start.elapsed().as_nanos() as f64 / f64::from(reps);
    println!("ipam: pool-full check on an exhausted /16: {} (target < 10 µs)", per_op(full));

    // 3. 100,000 from a /64.
    let mut usage64 = RangeUsage::new(slash64);
    let start = Instant::now();
    for _ in 0..100_000 {
        black_box(usage64.take_lowest());
    }
    let tree_64 = start.elapsed();
    println!(
        "ipam: 100,000 allocations from a /64: {:.1} ms, available after: {}",
        tree_64.as_secs_f64() * 1e3,
        usage64.available()
    );

    // 4. Cost of one allocation with 50,000 in use: tree vs linear scan, same run.
    let mut tree = RangeUsage::new(slash16);
    let mut used: HashSet<IpAddr> = HashSet::new();
    for _ in 0..50_000 {
        let ip = tree.take_lowest().unwrap_or_else(|| panic!("full"));
        used.insert(ip);
    }
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        let ip = tree.take_lowest().unwrap_or_else(|| panic!("full"));
        tree.release(black_box(ip));
    }
    let tree_op = start.elapsed().as_nanos() as f64 / f64::from(rounds);
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(lowest_free_by_scan(&slash16, black_box(&used)));
    }
    let scan_op = start.elapsed().as_nanos() as f64 / f64::from(rounds);
    println!(
        "ipam: one allocation at 50,000 in use: tree {} vs linear scan {} = {:.0}x faster (target >= 100x)",
        per_op(tree_op),
        per_op(scan_op),
        scan_op / tree_op
    );

    // 5. Whole /16 to exhaustion with the linear scan, for scale (quadratic).
    let mut used: HashSet<IpAddr> = HashSet::new();
    let start = Instant::now();
    while let Some(ip) = lowest_free_by_scan(&slash16, &used) {
        used.insert(ip);
        if used.len() == 16_384 {
            break;
        }
    }
    let scan_quarter = start.elapsed();
    let mut usage = RangeUsage::new(slash16);
    let start = Instant::now();
    for _ in 0..16_384 {
        black_box(usage.take_lowest());
    }
    let tree_quarter = start.elapsed();
    println!(
        "ipam: first 16,384 allocations of a /16: tree {:.2} ms vs linear scan {:.0} ms = {:.0}x",
        tree_quarter.as_secs_f64() * 1e3,
        scan_quarter.as_secs_f64() * 1e3,
        scan_quarter.as_secs_f64() / tree_quarter.as_secs_f64()
    );
    let ok = scan_op / tree_op >= 100.0 && full < 10_000.0;
    if !ok {
        eprintln!("ipam: TARGET MISSED");
        std::process::exit(1);
    }
}
