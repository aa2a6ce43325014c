//! What a SIGTERM means (issue 16 §2, `docs/agent.md` "Upgrades"): is this agent's pod being
//! replaced on a node that stays (keep the addresses for the successor), or is the node going
//! away (hand them over)? Pure: [`judge`] reads what the API showed at the SIGTERM
//! ([`Evidence`]); [`node_leaving`] is also used while running (a cordoned node hands its
//! addresses over before it is drained).
//!
//! Keep only on positive evidence: this pod deleted by its DaemonSet during a rollout (its
//! `controller-revision-hash` is not the DaemonSet's newest ControllerRevision), no
//! `DisruptionTarget` condition, the DaemonSet still selecting the node, and the Node Ready,
//! schedulable, not being deleted, without the exclude label or a shutdown taint. Anything
//! unknown (a read failed, no pod name) means hand over: a node rebooting without the kubelet's
//! graceful shutdown also just sends SIGTERM.

use std::collections::BTreeMap;

use clap::ValueEnum;
use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, DaemonSet},
        core::v1::{Node, NodeSelectorRequirement, Pod},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

/// `--shutdown-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ShutdownMode {
    /// Keep the addresses when the API shows that this pod is replaced on a node that stays;
    /// hand them over otherwise.
    #[default]
    Auto,
    /// Always hand the addresses over (make before break) before exiting.
    Handover,
    /// Always keep the addresses and the Lease for a successor on this node.
    Keep,
}

/// Label of a DaemonSet's pods naming their ControllerRevision.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Label that excludes a node from external load balancers (Kubernetes well-known label).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Taints that say a node is shut down or about to be removed.
pub const LEAVING_TAINTS: [&str; 4] = [
    "node.kubernetes.io/out-of-service",
    "ToBeDeletedByClusterAutoscaler",
    "karpenter.sh/disrupted",
    "node.cloudprovider.kubernetes.io/shutdown",
];

/// What the API showed at the SIGTERM. `None`: not found, or the read failed (then `problem`
/// says which).
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// This agent's Pod.
    pub pod: Option<Pod>,
    /// The DaemonSet that controls it.
    pub daemonset: Option<DaemonSet>,
    /// The ControllerRevisions in the DaemonSet's namespace.
    pub revisions: Vec<ControllerRevision>,
    /// This node.
    pub node: Option<Node>,
    /// A read that failed or was impossible, in words.
    pub problem: Option<String>,
}

/// What to do at the SIGTERM, and why (logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the addresses and the Lease for the successor on this node.
    Keep(String),
    /// Hand every address over before exiting.
    HandOver(String),
}

/// Why `node` is going away, if it is: being deleted, cordoned, excluded from external load
/// balancers, or tainted as shut down / to be removed.
#[must_use]
pub fn node_leaving(node: &Node) -> Option<String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if node.metadata.deletion_timestamp.is_some() {
        return Some(format!("Node {name} is being deleted"));
    }
    if node.metadata.labels.as_ref().is_some_and(|l| l.contains_key(EXCLUDE_LABEL)) {
        return Some(format!("Node {name} has the label {EXCLUDE_LABEL}"));
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        return Some(format!("Node {name} is cordoned (spec.unschedulable)"));
    }
    if let Some(taint) =
        spec.and_then(|s| s.taints.as_ref()).into_iter().flatten().find(|t| LEAVING_TAINTS.contains(&t.key.as_str()))
    {
        return Some(format!("Node {name} has the taint {}", taint.key));
    }
    None
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The newest ControllerRevision of `ds` (highest `revision`, owned by it), by its hash label.
fn current_revision<'a>(ds: &DaemonSet, revisions: &'a [ControllerRevision]) -> Option<&'a str> {
    let uid = ds.metadata.uid.as_deref()?;
    revisions
        .iter()
        .filter(|r| r.metadata.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true)))
        .max_by_key(|r| r.revision)
        .and_then(|r| r.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str))
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if req.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether the DaemonSet's pod template still places a pod on `node` (its `nodeSelector` and
/// required node affinity; a changed selector that drops the node deletes the pod too).
fn still_scheduled(ds: &DaemonSet, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else { return true };
    let selector_ok = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k).is_some_and(|have| have == v));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms.as_slice());
    let affinity_ok = terms.is_none_or(|terms| {
        terms.iter().any(|term| {
            term.match_expressions
                .iter()
                .flatten()
                .all(|req| requirement_matches(req, labels.get(&req.key).map(String::as_str)))
                && term
                    .match_fields
                    .iter()
                    .flatten()
                    .all(|req| requirement_matches(req, (req.key == "metadata.name").then_some(name)))
        })
    });
    selector_ok && affinity_ok
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
}

/// What a SIGTERM means under `mode`, from what the API shows.
#[must_use]
pub fn judge(mode: ShutdownMode, evidence: &Evidence) -> Verdict {
    match mode {
        ShutdownMode::Handover => return Verdict::HandOver("--shutdown-mode handover".to_owned()),
        ShutdownMode::Keep => return Verdict::Keep("--shutdown-mode keep".to_owned()),
        ShutdownMode::Auto => {}
    }
    let hand_over = |why: String| Verdict::HandOver(why);
    if let Some(problem) = &evidence.problem {
        return hand_over(format!("{problem}; nothing shows a replacement in place"));
    }
    let Some(node) = &evidence.node else { return hand_over("this node's Node object is gone".to_owned()) };
    if let Some(why) = node_leaving(node) {
        return hand_over(why);
    }
    if !node_ready(node) {
        return hand_over("this node is not Ready".to_owned());
    }
    let Some(pod) = &evidence.pod else { return hand_over("this agent's Pod is gone".to_owned()) };
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_none() {
        // A container restart (liveness probe) or a node shutting down without telling the API.
        return hand_over(format!("Pod {pod_name} is not being deleted"));
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    if let Some(c) = conditions.into_iter().flatten().find(|c| c.type_ == "DisruptionTarget" && c.status == "True") {
        let reason = c.reason.as_deref().unwrap_or("no reason");
        return hand_over(format!("Pod {pod_name} has the condition DisruptionTarget ({reason})"));
    }
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let Some(owner) = owner.filter(|o| o.kind == "DaemonSet") else {
        return hand_over(format!("Pod {pod_name} is not controlled by a DaemonSet"));
    };
    let Some(ds) = evidence.daemonset.as_ref().filter(|ds| ds.metadata.uid.as_deref() == Some(owner.uid.as_str()))
    else {
        return hand_over(format!("DaemonSet {} is gone (uninstalled)", owner.name));
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return hand_over(format!("DaemonSet {} is being deleted (uninstalled)", owner.name));
    }
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    if ds.spec.as_ref().is_some_and(|s| !selects(&s.selector, &pod_labels)) {
        return hand_over(format!("DaemonSet {} no longer selects Pod {pod_name}", owner.name));
    }
    if !still_scheduled(ds, node) {
        return hand_over(format!("DaemonSet {} no longer places a pod on this node", owner.name));
    }
    let Some(current) = current_revision(ds, &evidence.revisions) else {
        return hand_over(format!("DaemonSet {} has no ControllerRevision to compare with", owner.name));
    };
    match pod_labels.get(REVISION_LABEL) {
        Some(mine) if mine != current => Verdict::Keep(format!(
            "Pod {pod_name} (revision {mine}) is replaced by DaemonSet {} revision {current} on a node that stays",
            owner.name
        )),
        Some(_) => hand_over(format!(
            "Pod {pod_name} is deleted but already runs the current revision of DaemonSet {} (not a rollout)",
            owner.name
        )),
        None => hand_over(format!("Pod {pod_name} has no {REVISION_LABEL} label")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn node() -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "role": "edge"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn daemonset() -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "purelb-agent", "namespace": "purelb-system", "uid": "ds-uid"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [], "nodeSelector": {"role": "edge"}}}
            }
        }))
        .unwrap()
    }

    fn revision(hash: &str, number: i64, owner: &str) -> ControllerRevision {
        serde_json::from_value(json!({
            "metadata": {"name": format!("purelb-agent-{hash}"), "labels": {REVISION_LABEL: hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "purelb-agent", "uid": owner, "controller": true}]},
            "revision": number
        }))
        .unwrap()
    }

    fn pod(hash: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "purelb-agent-x", "namespace": "purelb-system", "uid": "pod-uid",
                "labels": {"app": "agent", REVISION_LABEL: hash},
                "deletionTimestamp": "2026-12-02T10:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "purelb-agent", "uid": "ds-uid", "controller": true}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    /// A rolling update: this pod is at revision "old", the DaemonSet's newest is "new".
    fn rollout() -> Evidence {
        Evidence {
            pod: Some(pod("old")),
            daemonset: Some(daemonset()),
            revisions: vec![revision("old", 1, "ds-uid"), revision("new", 2, "ds-uid"), revision("zzz", 9, "other")],
            node: Some(node()),
            problem: None,
        }
    }

    fn kept(e: &Evidence) -> bool {
        matches!(judge(ShutdownMode::Auto, e), Verdict::Keep(_))
    }

    #[test]
    fn a_rollout_on_a_node_that_stays_keeps() {
        let verdict = judge(ShutdownMode::Auto, &rollout());
        assert!(matches!(&verdict, Verdict::Keep(why) if why.contains("revision new")), "{verdict:?}");
    }

    #[test]
    fn modes_override_the_evidence() {
        assert!(matches!(judge(ShutdownMode::Handover, &rollout()), Verdict::HandOver(_)));
        assert!(matches!(judge(ShutdownMode::Keep, &Evidence::default()), Verdict::Keep(_)));
    }

    #[test]
    fn anything_unknown_hands_over() {
        assert!(!kept(&Evidence::default()));
        let mut e = rollout();
        e.problem = Some("cannot read Pod x: timeout".into());
        assert!(!kept(&e));
        for strip in 0..3 {
            let mut e = rollout();
            match strip {
                0 => e.pod = None,
                1 => e.daemonset = None,
                _ => e.node = None,
            }
            assert!(!kept(&e), "{strip}");
        }
        let mut e = rollout();
        e.revisions.clear();
        assert!(!kept(&e));
        let mut e = rollout();
        e.pod.as_mut().unwrap().metadata.labels.as_mut().unwrap().remove(REVISION_LABEL);
        assert!(!kept(&e));
    }

    #[test]
    fn a_pod_that_is_not_deleted_or_already_current_hands_over() {
        let mut e = rollout();
        e.pod.as_mut().unwrap().metadata.deletion_timestamp = None;
        assert!(matches!(judge(ShutdownMode::Auto, &e), Verdict::HandOver(why) if why.contains("not being deleted")));
        let mut e = rollout();
        e.pod = Some(pod("new"));
        assert!(!kept(&e), "deleted at the current revision: not a rollout");
        // The newest revision decides, not the order of the list.
        let mut e = rollout();
        e.revisions.reverse();
        assert!(kept(&e));
        // A revision owned by another DaemonSet does not count.
        let mut e = rollout();
        e.revisions = vec![revision("old", 1, "ds-uid"), revision("new", 2, "other")];
        assert!(!kept(&e));
    }

    #[test]
    fn a_disruption_or_a_foreign_owner_hands_over() {
        let mut e = rollout();
        let p = e.pod.as_mut().unwrap();
        p.status.as_mut().unwrap().conditions.as_mut().unwrap().push(
            serde_json::from_value(
                json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}),
            )
            .unwrap(),
        );
        assert!(matches!(judge(ShutdownMode::Auto, &e), Verdict::HandOver(why) if why.contains("DisruptionTarget")));
        let mut e = rollout();
        e.pod.as_mut().unwrap().status.as_mut().unwrap().conditions =
            Some(vec![serde_json::from_value(json!({"type": "DisruptionTarget", "status": "False"})).unwrap()]);
        assert!(kept(&e), "a DisruptionTarget that is False is no disruption");
        let mut e = rollout();
        e.pod.as_mut().unwrap().metadata.owner_references.as_mut().unwrap()[0].kind = "ReplicaSet".into();
        assert!(!kept(&e));
        let mut e = rollout();
        e.daemonset.as_mut().unwrap().metadata.uid = Some("another".into());
        assert!(!kept(&e), "a DaemonSet of the same name created again is another one");
        let mut e = rollout();
        e.daemonset.as_mut().unwrap().metadata.deletion_timestamp =
            e.pod.as_ref().unwrap().metadata.deletion_timestamp.clone();
        assert!(!kept(&e), "helm uninstall");
    }

    #[test]
    fn a_node_going_away_hands_over() {
        let cases: [(&str, serde_json::Value); 6] = [
            ("cordoned", json!({"spec": {"unschedulable": true}})),
            ("label", json!({"metadata": {"labels": {EXCLUDE_LABEL: ""}}})),
            (
                "taint",
                json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}}),
            ),
            (
                "autoscaler",
                json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}}),
            ),
            ("deleted", json!({"metadata": {"deletionTimestamp": "2026-12-02T10:00:00Z"}})),
            ("not ready", json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})),
        ];
        for (what, patch) in cases {
            let mut n = serde_json::to_value(node()).unwrap();
            json_patch_merge(&mut n, &patch);
            let mut e = rollout();
            e.node = Some(serde_json::from_value(n).unwrap());
            assert!(!kept(&e), "{what}");
        }
        let mut plain = node();
        plain.spec.as_mut().unwrap().taints =
            Some(vec![serde_json::from_value(json!({"key": "dedicated", "effect": "NoSchedule"})).unwrap()]);
        assert_eq!(node_leaving(&plain), None, "an unrelated taint");
        let mut e = rollout();
        e.node = Some(plain);
        assert!(kept(&e));
    }

    #[test]
    fn a_daemonset_that_no_longer_places_a_pod_here_hands_over() {
        let mut e = rollout();
        e.node.as_mut().unwrap().metadata.labels.as_mut().unwrap().remove("role");
        assert!(matches!(judge(ShutdownMode::Auto, &e), Verdict::HandOver(why) if why.contains("no longer places")));
        let affinity = |op: &str, values: serde_json::Value| -> DaemonSet {
            let mut ds = serde_json::to_value(daemonset()).unwrap();
            ds["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "role", "operator": op, "values": values}]}]}}});
            serde_json::from_value(ds).unwrap()
        };
        for (op, values, keep) in [
            ("In", json!(["edge", "core"]), true),
            ("In", json!(["core"]), false),
            ("NotIn", json!(["edge"]), false),
            ("NotIn", json!(["core"]), true),
            ("Exists", json!(null), true),
            ("DoesNotExist", json!(null), false),
            ("Gt", json!(["1"]), false),
            ("Bogus", json!(["edge"]), false),
        ] {
            let mut e = rollout();
            e.daemonset = Some(affinity(op, values));
            assert_eq!(kept(&e), keep, "{op}");
        }
        let mut e = rollout();
        let mut ds = serde_json::to_value(daemonset()).unwrap();
        ds["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
                                  {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}});
        e.daemonset = Some(serde_json::from_value(ds).unwrap());
        assert!(kept(&e), "one matching term is enough");
        let mut e = rollout();
        e.pod.as_mut().unwrap().metadata.labels.as_mut().unwrap().insert("app".into(), "other".into());
        assert!(!kept(&e), "the DaemonSet's selector no longer selects the pod");
    }

    #[test]
    fn numeric_requirements() {
        let req = |op: &str, bound: &str| NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: Some(vec![bound.into()]),
        };
        assert!(requirement_matches(&req("Gt", "3"), Some("4")));
        assert!(!requirement_matches(&req("Gt", "4"), Some("4")));
        assert!(requirement_matches(&req("Lt", "5"), Some("4")));
        assert!(!requirement_matches(&req("Lt", "4"), Some("4")));
        assert!(!requirement_matches(&req("Lt", "x"), Some("4")));
        assert!(!requirement_matches(&req("Gt", "1"), None));
    }

    fn json_patch_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                if v.is_object() && t.get(k).is_some_and(serde_json::Value::is_object) {
                    json_patch_merge(t.get_mut(k).unwrap(), v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
    }
}
