//! Benchmark of `core::endpoints`: one Service with 10,000 endpoints in 100 slices of 100,
//! spread over 50 nodes. Compares
//! (a) one slice update plus "which nodes are usable" through the incremental index, with
//! (b) the same answer recomputed by a full rescan of all 100 slices.
//!
//! Run with `cargo bench -p purelb --bench endpoints`. Exits with status 1 when the two paths
//! disagree or the incremental path is less than 20 times faster.

use std::{
    collections::{BTreeMap, BTreeSet},
    hint::black_box,
    process::ExitCode,
    time::{Duration, Instant},
};

use purelb::{
    core::{
        endpoints::{EndpointIndex, SERVICE_NAME_LABEL, ServiceKey, usable_nodes_by_rescan},
        ipam::Family,
    },
    k8s_openapi::{
        api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    },
};

const SLICES: usize = 100;
const ENDPOINTS_PER_SLICE: usize = 100;
const NODES: usize = 50;
const REQUIRED_SPEEDUP: f64 = 20.0;
/// Rounds of each measurement; the median round is reported (the machine is shared).
const ROUNDS: usize = 7;
const INCREMENTAL_OPS_PER_ROUND: usize = 2_000;
const RESCAN_OPS_PER_ROUND: usize = 40;

/// Slice `i` of the Service. In `variant` 1, every third endpoint of the slice is not ready,
/// so that alternating the variants changes real state on every update.
fn build_slice(i: usize, variant: usize) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS_PER_SLICE)
        .map(|j| {
            let n = i * ENDPOINTS_PER_SLICE + j;
            let ready = !(variant == 1 && j % 3 == 0);
            Endpoint {
                addresses: vec![format!("10.0.{}.{}", n / 256, n % 256)],
                node_name: Some(format!("node-{:02}", n % NODES)),
                conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(ready), terminating: None }),
                ..Endpoint::default()
            }
        })
        .collect();
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        metadata: ObjectMeta {
            namespace: Some("bench".into()),
            name: Some(format!("web-{i:03}")),
            labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), "web".to_owned())])),
            ..ObjectMeta::default()
        },
        ports: None,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn per_op(elapsed: Duration, ops: usize) -> Duration {
    elapsed / u32::try_from(ops).unwrap_or(u32::MAX)
}

/// Flips one slice (a different one each time) to its other variant; returns its number.
fn change_one_slice(current: &mut [usize], updates: &mut usize) -> usize {
    let i = (*updates * 37) % current.len();
    *updates += 1;
    current[i] = 1 - current[i];
    i
}

fn main() -> ExitCode {
    let service = ServiceKey::new("bench", "web");
    // variants[v][i]: slice i in variant v, built up front (the watch hands the index ready objects).
    let variants: [Vec<EndpointSlice>; 2] =
        [(0..SLICES).map(|i| build_slice(i, 0)).collect(), (0..SLICES).map(|i| build_slice(i, 1)).collect()];
    // current[i]: which variant of slice i is in the cluster now.
    let mut current = vec![0usize; SLICES];

    let start = Instant::now();
    let mut index = EndpointIndex::new();
    index.replace_all(variants[0].iter(), start);
    let fill = start.elapsed();

    println!(
        "endpoints: 1 Service, {SLICES} slices x {ENDPOINTS_PER_SLICE} endpoints = {} endpoints, {NODES} nodes",
        SLICES * ENDPOINTS_PER_SLICE
    );
    println!("initial fill (replace_all of {SLICES} slices): {fill:.2?}");

    // The cluster as the index sees it, and a second copy that the rescan path changes.
    let mut rescan_current = current.clone();
    let mut incremental_rounds = Vec::new();
    let mut rescan_rounds = Vec::new();
    let mut updates = 0usize;
    for _ in 0..ROUNDS {
        // (a) incremental: one slice changes, then the usable nodes are asked for.
        let round_start = Instant::now();
        for _ in 0..INCREMENTAL_OPS_PER_ROUND {
            let i = change_one_slice(&mut current, &mut updates);
            black_box(index.apply(&variants[current[i]][i], round_start));
            black_box(index.usable_nodes(&service, Family::V4).len());
        }
        incremental_rounds.push(per_op(round_start.elapsed(), INCREMENTAL_OPS_PER_ROUND));

        // (b) full rescan: one slice changes, then every slice is read again.
        let round_start = Instant::now();
        for _ in 0..RESCAN_OPS_PER_ROUND {
            change_one_slice(&mut rescan_current, &mut updates);
            let slices = rescan_current.iter().enumerate().map(|(i, variant)| &variants[*variant][i]);
            black_box(usable_nodes_by_rescan(black_box(slices), &service, Family::V4).len());
        }
        rescan_rounds.push(per_op(round_start.elapsed(), RESCAN_OPS_PER_ROUND));
    }

    // Both paths must give the same answer on the final state.
    let incremental: BTreeSet<String> =
        index.usable_nodes(&service, Family::V4).into_iter().map(str::to_owned).collect();
    let slices = current.iter().enumerate().map(|(i, variant)| &variants[*variant][i]);
    let rescan = usable_nodes_by_rescan(slices, &service, Family::V4);
    if incremental != rescan {
        eprintln!("MISMATCH: incremental {incremental:?} != rescan {rescan:?}");
        return ExitCode::FAILURE;
    }

    let incremental = median(incremental_rounds);
    let rescan = median(rescan_rounds);
    let ratio = rescan.as_secs_f64() / incremental.as_secs_f64().max(1e-12);
    println!(
        "incremental: apply 1 slice + usable nodes  {:>10.2?}/op  (median of {ROUNDS} rounds x {INCREMENTAL_OPS_PER_ROUND} ops)",
        incremental
    );
    println!(
        "full rescan: all {SLICES} slices               {:>10.2?}/op  (median of {ROUNDS} rounds x {RESCAN_OPS_PER_ROUND} ops)",
        rescan
    );
    println!("speed-up: {ratio:.1}x (required >= {REQUIRED_SPEEDUP}x)");
    if ratio < REQUIRED_SPEEDUP {
        eprintln!("FAIL: the incremental path is only {ratio:.1}x faster than the full rescan");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
