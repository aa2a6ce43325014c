//! The conversion corpus: `tests/migrate/<source>/<case>/input.yaml` (source objects, Services,
//! Nodes) converts to `expected.yaml` (the objects and Service annotations) with the report
//! `expected-report.txt`. `UPDATE_GOLDEN=1 cargo nextest run migrate` rewrites the golden files
//! (review the diff).

use std::path::{Path, PathBuf};

use super::*;
use crate::ops::validate::{Level as VLevel, parse_documents, validate_files};

fn cases(source: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/migrate").join(source);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn input(case: &Path) -> Input {
    let text = std::fs::read_to_string(case.join("input.yaml")).unwrap();
    let mut input = Input::default();
    for doc in parse_documents("input.yaml", &text).unwrap() {
        match doc.object.get("kind").and_then(Value::as_str) {
            Some("Service") => input.services.push(serde_json::from_value(doc.object).unwrap()),
            Some("Node") => input.nodes.push(serde_json::from_value(doc.object).unwrap()),
            _ => input.objects.push(doc.object),
        }
    }
    input
}

fn render(plan: &Plan) -> String {
    plan.documents().iter().map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap())).collect()
}

fn golden(path: &Path, got: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1 and review it)", path.display()));
    assert_eq!(got, want, "{} differs (UPDATE_GOLDEN=1 rewrites it; review the diff)", path.display());
}

fn run(source: Source, name: &str, min: usize) {
    let cases = cases(name);
    assert!(cases.len() >= min, "{name}: {} cases", cases.len());
    for case in cases {
        let plan = convert(source, &input(&case), &Options::default());
        golden(&case.join("expected.yaml"), &render(&plan));
        golden(&case.join("expected-report.txt"), &plan.report.text());
        let bad = case.file_name().unwrap().to_string_lossy().contains("bad");
        if !bad {
            // Every converted object is valid PureLB configuration.
            let check =
                validate_files(&[("converted".into(), render(&plan))], "purelb-system", contract::DEFAULT_LB_CLASS);
            assert!(check.findings.iter().all(|f| f.level != VLevel::Fail), "{}:\n{}", case.display(), check.text());
            assert_eq!(plan.report.errors(), 0, "{}:\n{}", case.display(), plan.report.text());
        }
    }
}

#[test]
fn metallb_corpus_converts_as_recorded() {
    run(Source::Metallb, "metallb", 15);
}

#[test]
fn go_purelb_corpus_converts_as_recorded() {
    run(Source::Purelb, "purelb", 3);
}

#[test]
fn bad_metallb_input_is_reported_line_by_line_and_keeps_nothing_hidden() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/migrate/metallb/17-bad-input");
    let plan = convert(Source::Metallb, &input(&case), &Options::default());
    let text = plan.report.text();
    for needle in [
        "IPAddressPool broken: spec.addresses[0]: \"192.0.2.300-192.0.2.310\" is not a CIDR or a from-to range",
        "overlaps",
        "names pool \"nonexistent\", which does not exist",
        "spec.loadBalancerClass is metallb.universe.tf/metallb (immutable)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    assert!(plan.report.errors() >= 3, "{text}");
    assert!(plan.report.at_risk() >= 1, "{text}");
}

#[test]
fn every_unconvertible_metallb_setting_is_named() {
    let all: String = cases("metallb")
        .iter()
        .map(|c| convert(Source::Metallb, &input(c), &Options::default()).report.text())
        .collect();
    for setting in [
        "avoidBuggyIPs",
        "spec.serviceAllocation.namespaceSelectors",
        "spec.serviceAllocation.serviceSelectors",
        "nodeSelectors",
        "BFDProfile fast: echoMode",
        "routerID",
        "vrf",
        "password",
        "peers / nodeSelectors have no equivalent",
    ] {
        assert!(all.contains(setting), "{setting:?} is not named in any report:\n{all}");
    }
}

#[test]
fn a_second_conversion_of_the_result_changes_nothing() {
    // Converting the Services as they are after the first migration asks for no change.
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/migrate/metallb/16-shared-ips");
    let mut input = input(&case);
    let first = convert(Source::Metallb, &input, &Options::default());
    assert!(!first.services.is_empty());
    for change in &first.services {
        let svc = input.services.iter_mut().find(|s| s.metadata.name.as_deref() == Some(change.name.as_str())).unwrap();
        svc.metadata.annotations.get_or_insert_with(Default::default).extend(change.annotations.clone());
    }
    let second = convert(Source::Metallb, &input, &Options::default());
    assert!(second.services.is_empty(), "{:?}", second.services);
    assert_eq!(first.objects, second.objects);
}
