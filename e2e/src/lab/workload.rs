//! The agent's DaemonSet as the API shows it (the emulator runs no controllers): the lab plays
//! the DaemonSet controller and the kubelet so that `--shutdown-mode auto` sees what a real
//! cluster shows in a rolling update or a node maintenance (issue 16 §2).
//!
//! - [`install`]: DaemonSet `purelb-agent`, its ControllerRevision 1 and one Pod per node
//!   (named [`pod_name`], the name the lab passes as `--pod-name`), each with a finalizer that
//!   stands for the kubelet: a deleted Pod keeps its `deletionTimestamp` until [`replace_pod`];
//! - [`new_revision`]: a changed pod template (`helm upgrade`): ControllerRevision N+1;
//! - [`delete_pod`]: the DaemonSet controller deleting a pod of the old revision;
//! - [`replace_pod`]: the old pod gone, the new one created at the current revision;
//! - [`cordon`]: `kubectl cordon` / `uncordon`.

use purelb::k8s_openapi::api::{
    apps::v1::{ControllerRevision, DaemonSet},
    core::v1::{Node, Pod},
};
use purelb::kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{LabError, topology::INSTALL_NAMESPACE};

/// The DaemonSet's name.
pub const DAEMONSET: &str = "purelb-agent";
/// The finalizer that stands for the kubelet.
pub const KUBELET_FINALIZER: &str = "lab.purelb.io/kubelet";
const SELECTOR: (&str, &str) = ("app.kubernetes.io/component", "agent");

/// The Pod name of the agent of `node` (`--pod-name`).
#[must_use]
pub fn pod_name(node: &str) -> String {
    format!("purelb-agent-{node}")
}

fn api_error(action: String) -> impl FnOnce(purelb::kube::Error) -> LabError {
    move |source| LabError::Api { action, source: Box::new(source) }
}

fn hash(revision: i64) -> String {
    format!("rev{revision}")
}

/// The DaemonSet and its current revision.
async fn daemonset(client: &Client) -> Result<(DaemonSet, i64), LabError> {
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    let ds = sets.get(DAEMONSET).await.map_err(api_error(format!("read DaemonSet {DAEMONSET}")))?;
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    let list = revisions
        .list(&purelb::kube::api::ListParams::default().labels(&format!("{}={}", SELECTOR.0, SELECTOR.1)))
        .await
        .map_err(api_error("list ControllerRevisions".to_owned()))?;
    let current = list.items.iter().map(|r| r.revision).max().unwrap_or(0);
    Ok((ds, current))
}

async fn create_revision(client: &Client, ds: &DaemonSet, revision: i64) -> Result<(), LabError> {
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let object: ControllerRevision = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": format!("{DAEMONSET}-{}", hash(revision)), "namespace": INSTALL_NAMESPACE,
            "labels": {SELECTOR.0: SELECTOR.1, "controller-revision-hash": hash(revision)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": DAEMONSET, "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]},
        "revision": revision
    }))
    .map_err(|e| LabError::Parse { what: "a ControllerRevision".to_owned(), detail: e.to_string() })?;
    revisions
        .create(&PostParams::default(), &object)
        .await
        .map_err(api_error(format!("create ControllerRevision {revision}")))?;
    Ok(())
}

async fn create_pod(client: &Client, ds: &DaemonSet, node: &str, revision: i64) -> Result<(), LabError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let object: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(node), "namespace": INSTALL_NAMESPACE,
            "labels": {SELECTOR.0: SELECTOR.1, "controller-revision-hash": hash(revision)},
            "finalizers": [KUBELET_FINALIZER],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": DAEMONSET, "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "agent", "image": "purelb"}]}
    }))
    .map_err(|e| LabError::Parse { what: "a Pod".to_owned(), detail: e.to_string() })?;
    pods.create(&PostParams::default(), &object).await.map_err(api_error(format!("create Pod {}", pod_name(node))))?;
    Ok(())
}

/// Creates the DaemonSet, revision 1 and a Pod per node.
///
/// # Errors
///
/// The API refuses an object.
pub async fn install(client: &Client, nodes: &[String]) -> Result<(), LabError> {
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    let object: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": DAEMONSET, "namespace": INSTALL_NAMESPACE},
        "spec": {"selector": {"matchLabels": {SELECTOR.0: SELECTOR.1}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {SELECTOR.0: SELECTOR.1}},
                "spec": {"hostNetwork": true, "containers": [{"name": "agent", "image": "purelb"}]}}}
    }))
    .map_err(|e| LabError::Parse { what: "the DaemonSet".to_owned(), detail: e.to_string() })?;
    let ds =
        sets.create(&PostParams::default(), &object).await.map_err(api_error("create the DaemonSet".to_owned()))?;
    create_revision(client, &ds, 1).await?;
    for node in nodes {
        create_pod(client, &ds, node, 1).await?;
    }
    Ok(())
}

/// A new pod template: ControllerRevision N+1 becomes the current one.
///
/// # Errors
///
/// The API refuses.
pub async fn new_revision(client: &Client) -> Result<i64, LabError> {
    let (ds, current) = daemonset(client).await?;
    create_revision(client, &ds, current + 1).await?;
    Ok(current + 1)
}

/// Deletes the Pod of `node` (it stays, with a `deletionTimestamp`, until [`replace_pod`]).
///
/// # Errors
///
/// The API refuses.
pub async fn delete_pod(client: &Client, node: &str) -> Result<(), LabError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    pods.delete(&pod_name(node), &DeleteParams::default())
        .await
        .map_err(api_error(format!("delete Pod {}", pod_name(node))))?;
    Ok(())
}

/// The Pod of `node` gone (the kubelet's finalizer removed) and a new one at the current
/// revision created in its place.
///
/// # Errors
///
/// The API refuses.
pub async fn replace_pod(client: &Client, node: &str) -> Result<(), LabError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), INSTALL_NAMESPACE);
    let name = pod_name(node);
    pods.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .map_err(api_error(format!("remove the finalizer of Pod {name}")))?;
    let (ds, current) = daemonset(client).await?;
    create_pod(client, &ds, node, current).await
}

/// `kubectl cordon` (`on`) or `uncordon` of `node`.
///
/// # Errors
///
/// The API refuses.
pub async fn cordon(client: &Client, node: &str, on: bool) -> Result<(), LabError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": on}})))
        .await
        .map_err(api_error(format!("cordon Node {node}")))?;
    Ok(())
}
