use std::path::{Path, PathBuf};

use super::*;

fn files_in(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn check(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).unwrap();
    validate_files(&[(path.display().to_string(), text)], "purelb-system", contract::DEFAULT_LB_CLASS)
}

#[test]
fn every_sample_passes() {
    let files = files_in("docs/samples");
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let report = check(&file);
        assert_eq!(report.worst(), Level::Pass, "{}:\n{}", file.display(), report.text());
        assert!(report.findings.iter().any(|f| f.level == Level::Pass), "{} checked nothing", file.display());
    }
}

/// Each broken file says, on its first line (`# expect: ...`), a piece of the FAIL message it
/// must get (the field it names).
#[test]
fn every_broken_file_fails_with_a_message_that_names_the_field() {
    let files = files_in("tests/validate/broken");
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: the first line must be '# expect: ...'", file.display()));
        let report = check(&file);
        assert_eq!(report.exit_code(false), 2, "{}:\n{}", file.display(), report.text());
        let fails: Vec<&Finding> = report.findings.iter().filter(|f| f.level == Level::Fail).collect();
        assert!(
            fails.iter().any(|f| f.message.contains(expect)),
            "{}: no FAIL says {expect:?}:\n{}",
            file.display(),
            report.text()
        );
    }
}

#[test]
fn warnings_pass_unless_strict_and_lists_are_unpacked() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: purelb.io/v2
  kind: ServiceGroup
  metadata: {name: a}
  spec:
    local: {v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.10-192.0.2.20}}
    namespaces: [web]
    namespaceDefault: true
    colour: blue
- apiVersion: purelb.io/v2
  kind: ServiceGroup
  metadata: {name: b, namespace: elsewhere}
  spec:
    local: {v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.30-192.0.2.40}}
"#;
    let report = validate_files(&[("list.yaml".into(), text.into())], "purelb-system", contract::DEFAULT_LB_CLASS);
    assert_eq!(report.worst(), Level::Warn, "{}", report.text());
    assert_eq!(report.exit_code(false), 0);
    assert_eq!(report.exit_code(true), 1);
    let warns: Vec<&str> =
        report.findings.iter().filter(|f| f.level == Level::Warn).map(|f| f.message.as_str()).collect();
    assert!(warns.iter().any(|w| w.contains("spec.colour: unknown field")), "{warns:?}");
    assert!(warns.iter().any(|w| w.contains("only from its install namespace purelb-system")), "{warns:?}");
}

#[test]
fn two_defaults_for_one_namespace_are_a_warning() {
    let group = |name: &str, pool: &str| {
        format!(
            "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {{name: {name}}}\nspec:\n  local: {{v4pool: {{subnet: 192.0.2.0/24, pool: {pool}}}}}\n  namespaces: [web]\n  namespaceDefault: true\n"
        )
    };
    let text = format!("{}---\n{}", group("a", "192.0.2.10-192.0.2.20"), group("b", "192.0.2.30-192.0.2.40"));
    let report = validate_files(&[("d.yaml".into(), text)], "purelb-system", contract::DEFAULT_LB_CLASS);
    let warn = report.findings.iter().find(|f| f.level == Level::Warn).expect("a warning");
    assert_eq!(warn.object, "namespace web");
    assert!(warn.message.contains("a, b all set namespaceDefault"), "{}", warn.message);
}

#[test]
fn services_of_other_classes_are_not_checked() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: x, namespace: default, annotations: {purelb.io/addresses: "nonsense"}}
spec: {type: LoadBalancer, loadBalancerClass: example.com/other, ports: [{port: 80}]}
"#;
    let report = validate_files(&[("s.yaml".into(), text.into())], "purelb-system", contract::DEFAULT_LB_CLASS);
    assert!(report.findings.is_empty(), "{}", report.text());
}

mod cluster {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::{
            coordination::v1::{Lease, LeaseSpec},
            core::v1::Node,
        },
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
        jiff::Timestamp,
    };

    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn lease(node: &str, annotations: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(format!("purelb-node-{node}")),
                annotations: Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.into()),
                lease_duration_seconds: Some(10),
                renew_time: Some(MicroTime(now())),
                ..LeaseSpec::default()
            }),
        }
    }

    fn object<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn what_only_the_cluster_shows_is_warned_about() {
        let snapshot = Snapshot {
            namespace: "purelb-system".into(),
            now: Some(now()),
            leases: vec![lease(
                "n1",
                &[
                    ("purelb.io/subnets", "192.0.2.0/24"),
                    ("purelb.io/announcing", "192.0.2.10%eth0"),
                    ("purelb.io/bgp", "router=Established"),
                ],
            )],
            groups: vec![
                object(
                    "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {name: here, namespace: purelb-system}\nspec: {local: {v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.10-192.0.2.20}}}",
                ),
                object(
                    "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {name: elsewhere, namespace: purelb-system}\nspec: {local: {v4pool: {subnet: 203.0.113.0/24, pool: 203.0.113.10-203.0.113.20}}}",
                ),
                object(
                    "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {name: routed, namespace: purelb-system}\nspec: {remote: {v4pool: {subnet: 198.51.100.0/24, pool: 198.51.100.10-198.51.100.20}}}",
                ),
            ],
            agents: vec![object(
                "apiVersion: purelb.io/v2\nkind: LBNodeAgent\nmetadata: {name: default, namespace: purelb-system}\nspec: {nodeSelector: {matchLabels: {role: lb}}, local: {localInterface: 'enp.*'}}",
            )],
            nodes: vec![Node {
                metadata: ObjectMeta {
                    name: Some("n1".into()),
                    labels: Some(BTreeMap::from([("role".to_owned(), "worker".to_owned())])),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            }],
            ..Snapshot::default()
        };
        let report = validate_cluster(&snapshot, contract::DEFAULT_LB_CLASS);
        let warns: Vec<(String, String)> = report
            .findings
            .iter()
            .filter(|f| f.level == Level::Warn)
            .map(|f| (f.object.clone(), f.message.clone()))
            .collect();
        let has = |object: &str, text: &str| warns.iter().any(|(o, m)| o == object && m.contains(text));
        assert!(
            has("ServiceGroup purelb-system/elsewhere", "is on no live agent's subnet (192.0.2.0/24)"),
            "{warns:#?}"
        );
        assert!(!warns.iter().any(|(o, _)| o == "ServiceGroup purelb-system/here"), "{warns:#?}");
        assert!(
            has(
                "LBNodeAgent purelb-system/default",
                "matches none of the interfaces the agents hold addresses on (eth0)"
            ),
            "{warns:#?}"
        );
        assert!(has("LBNodeAgent purelb-system/default", "spec.nodeSelector matches no Node"), "{warns:#?}");
        assert!(has("ServiceGroup purelb-system/routed", "there is no BGPPeer"), "{warns:#?}");
        assert_eq!(report.exit_code(false), 0);
        assert_eq!(report.exit_code(true), 1);

        // A BGPPeer that selects no node.
        let mut with_peer = snapshot.clone();
        with_peer.peers = vec![object(
            "apiVersion: purelb.io/v2\nkind: BGPPeer\nmetadata: {name: router, namespace: purelb-system}\nspec: {peerAddress: 192.0.2.1, peerASN: 65000, localASN: 65001, nodeSelector: {matchLabels: {role: lb}}}",
        )];
        let report = validate_cluster(&with_peer, contract::DEFAULT_LB_CLASS);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.object == "BGPPeer purelb-system/router" && f.message.contains("matches no Node")),
            "{}",
            report.text()
        );
        assert!(!report.findings.iter().any(|f| f.message.contains("there is no BGPPeer")), "{}", report.text());
    }
}
