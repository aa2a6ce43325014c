//! The `purelb` binary as a user meets it: help, version, CRDs, flag errors, and the exits of
//! `purelb reconcile` that need neither root nor a cluster (its kernel and cluster behaviour is
//! in `tests/reconcile.rs` and `e2e/tests/reconcile.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn purelb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_purelb")).args(args).env_remove("RUST_LOG").output().unwrap()
}

#[test]
fn help_lists_the_five_subcommands() {
    let out = purelb(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in ["allocator", "agent", "reconcile", "crds", "version"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(sub)), "{sub} missing from:\n{text}");
    }
}

#[test]
fn every_subcommand_explains_its_flags() {
    for (sub, flags) in [
        (
            "allocator",
            &["--lb-class", "--default-announcer", "--leader-elect", "--lease-duration", "--renew-interval"][..],
        ),
        (
            "agent",
            &[
                "--node-name",
                "--pod-uid",
                "--lease-duration",
                "--renew-interval",
                "--handover-timeout",
                "--orphan-sweep-interval",
                "--pod-name",
                "--shutdown-mode",
                "--successor-timeout",
            ][..],
        ),
        ("reconcile", &["--node-name", "--dry-run", "--all", "--output", "--exit-code"][..]),
    ] {
        let out = purelb(&[sub, "-h"]);
        assert!(out.status.success(), "{sub}");
        let text = String::from_utf8(out.stdout).unwrap();
        for flag in
            flags.iter().chain(&["--kubeconfig", "--namespace", "--log-level", "--log-format", "--metrics-addr"])
        {
            let explanation = explanation_of(&text, flag).unwrap_or_else(|| panic!("{sub} {flag} missing:\n{text}"));
            assert!(explanation.split_whitespace().count() >= 4, "{sub} {flag} not explained: {explanation}");
        }
    }
}

#[test]
fn version_prints_the_version() {
    let out = purelb(&["version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), format!("purelb {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn crds_prints_both_crds() {
    let out = purelb(&["crds"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("name: servicegroups.purelb.io") && text.contains("name: lbnodeagents.purelb.io"));
}

#[test]
fn bad_flag_values_give_one_clear_line() {
    let out = purelb(&["allocator", "--lease-duration", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn reconcile_needs_a_node_name_unless_all() {
    let out = Command::new(env!("CARGO_BIN_EXE_purelb"))
        .args(["reconcile", "--dry-run"])
        .env_remove("NODE_NAME")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--node-name"), "{err}");
}

#[test]
fn reconcile_without_the_api_says_so_suggests_all_and_exits_1() {
    let kubeconfig = std::env::temp_dir().join(format!("purelb-cli-test-{}.kubeconfig", std::process::id()));
    // Port 1 on the loopback address: nothing listens, the connection is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n\
         current-context: x\n",
    )
    .unwrap();
    for output in [&["--output", "text"][..], &["--output", "json", "--exit-code"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_purelb"))
            .args(["reconcile", "--node-name", "n1", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(output)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{output:?}");
        assert!(out.stdout.is_empty(), "no report when nothing could be decided");
        let err = String::from_utf8(out.stderr).unwrap();
        for needle in ["cannot list", "Kubernetes API", "nothing was removed", "use --all"] {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        assert_eq!(err.lines().filter(|l| l.starts_with("purelb: error:")).count(), 1, "{err}");
    }
    let _ = std::fs::remove_file(&kubeconfig);
}

/// The help text of `flag`: the words after it, up to the next option, without `<VALUE>`.
fn explanation_of(help: &str, flag: &str) -> Option<String> {
    let mut lines = help.lines().skip_while(|l| !l.trim_start().starts_with(&format!("{flag} ")) && l.trim() != flag);
    let first = lines.next()?;
    let rest = lines.take_while(|l| !l.trim_start().starts_with('-'));
    let words: Vec<&str> = std::iter::once(first.trim_start().trim_start_matches(flag))
        .chain(rest)
        .flat_map(str::split_whitespace)
        .filter(|w| !w.starts_with('<') && !w.starts_with('['))
        .collect();
    Some(words.join(" "))
}

/// Lease timings that cannot work are refused at start with exit 2 and a message naming both
/// flags and a working example (issue 16 §5): a lease duration that is not whole seconds, or
/// renewals more than half a lease apart (a 2 s lease renewed every 2 s, the agent's default
/// interval, never failed over in the lab).
#[test]
fn lease_timings_that_cannot_work_exit_2_at_start() {
    for (sub, args, needle) in [
        ("agent", &["--node-name", "n1", "--lease-duration", "2s"][..], "--renew-interval 2s must be"),
        ("agent", &["--node-name", "n1", "--renew-interval", "4s"][..], "at most half of --lease-duration 6s"),
        (
            "agent",
            &["--node-name", "n1", "--lease-duration", "2500ms"][..],
            "--lease-duration 2500ms must be a whole number of seconds",
        ),
        (
            "agent",
            &["--node-name", "n1", "--orphan-sweep-interval", "0s"][..],
            "--orphan-sweep-interval must be more than 0",
        ),
        (
            "agent",
            &["--node-name", "n1", "--successor-timeout", "1500ms"][..],
            "--successor-timeout 1500ms must be a whole number of seconds",
        ),
        ("allocator", &["--lease-duration", "8s"][..], "at most half of --lease-duration 8s"),
        ("allocator", &["--renew-interval", "0s"][..], "--renew-interval 0s must be more than 0"),
    ] {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_purelb"))
            .arg(sub)
            .args(args)
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub} {args:?}: {text}");
        assert!(text.contains(needle) && text.contains("e.g. "), "{sub} {args:?}: {text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused at once");
    }
}
