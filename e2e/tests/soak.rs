//! A short chaos soak (issue 9) with a fixed seed: the real allocator (two replicas) and agents
//! in a 3-node dual-stack lab, Service churn and every kind of fault, the invariant checker
//! watching every 25 ms and a client sending requests throughout. Zero violations and zero
//! failed requests outside the allowed windows. Longer soaks: `just soak`, `scripts/soak.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::PathBuf, time::Duration};

use purelb_e2e::lab::{
    self,
    invariants::Invariant,
    soak::{self, SoakOptions},
};

/// Fixed seed of this test (the schedules depend only on it).
const SEED: u64 = 20_261_125;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_keeps_every_invariant() {
    let mut options = SoakOptions::new(&lab::test_prefix("plsk", ""), Duration::from_secs(75), SEED);
    options.nodes = 3;
    // Every fault, hanging cut-offs included (`avoid_open_bugs` stays off).
    options.purelb_bin = Some(
        lab::built_binary("purelb", &["debug", "release"])
            .expect("build the purelb binary first: cargo build -p purelb --bin purelb"),
    );
    options.lab_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_purelb-lab")));
    let mut progress = std::io::stderr();
    let report = soak::run(options, &mut progress).await.unwrap();
    let mut text = Vec::new();
    report.print(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text);
    eprintln!("{text}");

    for invariant in Invariant::ALL {
        let found: Vec<_> = report.violations.iter().filter(|v| v.invariant == invariant).collect();
        assert!(found.is_empty(), "invariant ({}) violated: {found:?}\n{text}", invariant.number());
    }
    assert_eq!(report.requests.outside, 0, "failed requests outside the allowed windows\n{text}");
    assert!(report.errors.is_empty(), "{:?}\n{text}", report.errors);
    assert!(report.passed, "{text}");
    // The soak did something: Services came and went, faults happened, requests were answered.
    let count = |name: &str| report.actions.get(name).copied().unwrap_or_default();
    assert!(count("create-service") >= 5 && count("delete-service") >= 1, "{:?}", report.actions);
    let faults = ["kill-agent", "kill-allocator", "sigterm-agent", "cut-agent", "api-outage", "delete-address"];
    let kinds = faults.iter().filter(|f| count(f) > 0).count();
    assert!(kinds >= 3, "too few kinds of faults: {:?}", report.actions);
    assert!(report.requests.ok > 100, "{:?}", report.requests);
    assert!(report.samples > 1000, "the checker observed only {} times", report.samples);
}
