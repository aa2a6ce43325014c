//! `purelb migrate`'s IO: reading the source's objects, the Services and the Nodes from the
//! cluster, and `--apply` (server-side apply, field manager `purelb-migrate`), skipping every
//! object that already holds what would be written, so that a second run writes nothing.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::{FIELD_MANAGER, Plan, Source};

/// Why reading or writing failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was done.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// PureLB's CRDs are missing.
    #[error(
        "the API server does not know {what}: install PureLB's CRDs first (helm install, or kubectl apply -f manifests/crds/purelb.yaml)"
    )]
    NoCrd {
        /// The resource.
        what: String,
    },
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

const METALLB: [(&str, &str, &[&str]); 6] = [
    ("IPAddressPool", "ipaddresspools", &["v1beta1"]),
    ("L2Advertisement", "l2advertisements", &["v1beta1"]),
    ("BGPAdvertisement", "bgpadvertisements", &["v1beta1"]),
    ("BGPPeer", "bgppeers", &["v1beta2", "v1beta1"]),
    ("BFDProfile", "bfdprofiles", &["v1beta1"]),
    ("Community", "communities", &["v1beta1"]),
];

const GO_PURELB: [(&str, &str, &[&str]); 2] =
    [("ServiceGroup", "servicegroups", &["v1", "v2"]), ("LBNodeAgent", "lbnodeagents", &["v1", "v2"])];

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Lists `group/version` `plural` in `namespace` as JSON objects with apiVersion and kind;
/// a resource the server does not serve is an empty list.
async fn list_dynamic(
    client: &Client,
    namespace: &str,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Result<Vec<Value>, MigrateError> {
    let ar = resource(group, version, kind, plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .map(|mut v| {
                v["apiVersion"] = json!(format!("{group}/{version}"));
                v["kind"] = json!(kind);
                v
            })
            .collect()),
        Err(e) if not_found(&e) => Ok(Vec::new()),
        Err(source) => {
            Err(MigrateError::Api { action: format!("list {plural}.{group}/{version} in {namespace}"), source })
        }
    }
}

/// Reads the source's objects from `namespace`.
///
/// # Errors
///
/// A list call failed (other than "not served").
pub async fn read_source(client: &Client, source: Source, namespace: &str) -> Result<Vec<Value>, MigrateError> {
    let mut out = Vec::new();
    match source {
        Source::Metallb => {
            for (kind, plural, versions) in METALLB {
                for version in versions {
                    let found = list_dynamic(client, namespace, "metallb.io", version, kind, plural).await?;
                    if !found.is_empty() {
                        out.extend(found);
                        break;
                    }
                }
            }
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            match cms.get_opt("config").await {
                Ok(Some(cm)) => {
                    let mut v = serde_json::to_value(cm).unwrap_or(Value::Null);
                    v["apiVersion"] = json!("v1");
                    v["kind"] = json!("ConfigMap");
                    out.push(v);
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(MigrateError::Api { action: format!("get ConfigMap {namespace}/config"), source });
                }
            }
        }
        Source::Purelb => {
            for (kind, plural, versions) in GO_PURELB {
                for version in versions {
                    out.extend(list_dynamic(client, namespace, "purelb.io", version, kind, plural).await?);
                }
            }
        }
    }
    Ok(out)
}

/// The LoadBalancer Services and the Nodes.
///
/// # Errors
///
/// A list call failed.
pub async fn read_cluster(client: &Client) -> Result<(Vec<Service>, Vec<Node>), MigrateError> {
    let services: Api<Service> = Api::all(client.clone());
    let services = services
        .list(&ListParams::default())
        .await
        .map_err(|source| MigrateError::Api { action: "list Services".to_owned(), source })?
        .items
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(|source| MigrateError::Api { action: "list Nodes".to_owned(), source })?
        .items;
    Ok((services, nodes))
}

/// Whether `have` already holds everything in `want` (objects: recursively; anything else:
/// equal).
#[must_use]
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        _ => have == want,
    }
}

/// One write `--apply` did or skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// `Kind namespace/name`.
    pub object: String,
    /// Written (false: it already held everything).
    pub changed: bool,
}

/// Applies `plan` (PureLB objects into their namespace, created when missing; annotations on
/// Services), skipping objects that already hold what would be written.
///
/// # Errors
///
/// A write failed; what was written before stays written (re-running continues).
pub async fn apply(client: &Client, plan: &Plan, namespace: &str) -> Result<Vec<Applied>, MigrateError> {
    let mut done = Vec::new();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap_or_default();
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .map_err(|source| MigrateError::Api { action: format!("create namespace {namespace}"), source })?;
            done.push(Applied { object: format!("Namespace {namespace}"), changed: true });
        }
        Err(source) => return Err(MigrateError::Api { action: format!("get namespace {namespace}"), source }),
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for object in &plan.objects {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        let plural = match kind {
            "ServiceGroup" => "servicegroups",
            "LBNodeAgent" => "lbnodeagents",
            _ => "bgppeers",
        };
        let name = super::name_of(object);
        let label = format!("{kind} {namespace}/{name}");
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &resource("purelb.io", "v2", kind, plural));
        let existing = match api.get_opt(&name).await {
            Ok(e) => e,
            Err(e) if not_found(&e) => return Err(MigrateError::NoCrd { what: format!("{plural}.purelb.io/v2") }),
            Err(source) => return Err(MigrateError::Api { action: format!("get {label}"), source }),
        };
        let want = json!({"spec": object["spec"], "metadata": {"labels": object["metadata"]["labels"]}});
        if existing.as_ref().and_then(|e| serde_json::to_value(e).ok()).is_some_and(|have| contains(&have, &want)) {
            done.push(Applied { object: label, changed: false });
            continue;
        }
        api.patch(&name, &pp, &Patch::Apply(object))
            .await
            .map_err(|source| MigrateError::Api { action: format!("apply {label}"), source })?;
        done.push(Applied { object: label, changed: true });
    }
    for change in &plan.services {
        let label = format!("Service {}/{}", change.namespace, change.name);
        let api: Api<Service> = Api::namespaced(client.clone(), &change.namespace);
        let existing = api
            .get_opt(&change.name)
            .await
            .map_err(|source| MigrateError::Api { action: format!("get {label}"), source })?;
        let Some(existing) = existing else {
            done.push(Applied { object: format!("{label} (gone: skipped)"), changed: false });
            continue;
        };
        let have = existing.metadata.annotations.unwrap_or_default();
        if change.annotations.iter().all(|(k, v)| have.get(k) == Some(v)) {
            done.push(Applied { object: label, changed: false });
            continue;
        }
        let body = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": change.name, "namespace": change.namespace, "annotations": change.annotations},
        });
        api.patch(&change.name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|source| MigrateError::Api { action: format!("apply the annotations of {label}"), source })?;
        done.push(Applied { object: label, changed: true });
    }
    Ok(done)
}
