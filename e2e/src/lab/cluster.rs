//! The lab's Kubernetes side: a client from a kubeconfig, `kubectl apply`-like server-side
//! apply of YAML documents, and the objects every lab starts with (the `purelb-system`
//! namespace, the CRDs, `manifests/rbac.yaml` and one Node per node host).
//!
//! Entry points: [`connect`], [`apply_yaml`], [`install`].

use std::{path::Path, time::Duration};

use purelb::{
    k8s_openapi::api::core::v1::{Namespace, Node},
    kube::{
        Api, Client, Config,
        api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
        config::{KubeConfigOptions, Kubeconfig},
        discovery::{self, Scope},
    },
};
use serde_json::{Value, json};

use super::{
    LabError,
    topology::{INSTALL_NAMESPACE, Topology},
};

/// Field manager of everything the lab writes.
pub const FIELD_MANAGER: &str = "purelb-lab";

/// The RBAC objects the lab installs and runs its processes under.
pub const RBAC_YAML: &str = include_str!("../../../manifests/rbac.yaml");

fn api_error(action: impl Into<String>) -> impl FnOnce(purelb::kube::Error) -> LabError {
    let action = action.into();
    move |source| LabError::Api { action, source: Box::new(source) }
}

/// A client for the kubeconfig at `path`, with short timeouts (the lab never watches) and
/// without kube-rs's retries of 503 answers.
///
/// # Errors
///
/// The kubeconfig cannot be read or used.
pub async fn connect(path: &Path) -> Result<Client, LabError> {
    let bad = |detail: String| LabError::Kubeconfig { path: path.to_owned(), detail };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    // kube-rs retries 429/503/504 up to 15 times with backoff up to minutes; the lab wants to
    // see a fault at once.
    config.default_retry = false;
    Client::try_from(config).map_err(|e| bad(e.to_string()))
}

/// Applies every document of `yaml` with server-side apply (as `kubectl apply
/// --server-side --force-conflicts` would) and returns `kind/name` of each.
///
/// # Errors
///
/// The YAML does not parse, a kind is unknown to the server, or the server refuses an object.
pub async fn apply_yaml(client: &Client, yaml: &str) -> Result<Vec<String>, LabError> {
    let mut applied = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| LabError::Parse { what: "YAML document".to_owned(), detail: e.to_string() })?;
        if value.is_null() {
            continue;
        }
        applied.push(apply_value(client, value).await?);
    }
    Ok(applied)
}

/// Applies one object given as JSON (`apiVersion`, `kind`, `metadata.name` required).
///
/// # Errors
///
/// The object lacks those fields, its kind is unknown, or the server refuses it.
pub async fn apply_value(client: &Client, value: Value) -> Result<String, LabError> {
    let field = |name: &str| value[name].as_str().map(str::to_owned);
    let (Some(api_version), Some(kind), Some(name)) =
        (field("apiVersion"), field("kind"), value["metadata"]["name"].as_str().map(str::to_owned))
    else {
        return Err(LabError::Parse {
            what: "object".to_owned(),
            detail: format!("needs apiVersion, kind and metadata.name: {value}"),
        });
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, caps) =
        discovery::pinned_kind(client, &gvk).await.map_err(api_error(format!("discover {api_version} {kind}")))?;
    let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
    let object: DynamicObject = serde_json::from_value(value)
        .map_err(|e| LabError::Parse { what: format!("{kind} {name}"), detail: e.to_string() })?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), &namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .map_err(api_error(format!("apply {kind} {name}")))?;
    Ok(format!("{}/{name}", kind.to_lowercase()))
}

/// The Node object of a lab node: Ready, with its addresses and the usual labels.
#[must_use]
pub fn node_object(name: &str, ipv4: &str, ipv6: Option<&str>) -> Value {
    let mut addresses = vec![json!({"type": "InternalIP", "address": ipv4})];
    if let Some(v6) = ipv6 {
        addresses.push(json!({"type": "InternalIP", "address": v6}));
    }
    addresses.push(json!({"type": "Hostname", "address": name}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": std::env::consts::ARCH,
            "purelb.io/lab": "true",
        }},
        "spec": {},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "purelb-lab node", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        },
    })
}

fn now() -> String {
    // RFC 3339 in UTC without a date library: seconds since the epoch, civil-from-days.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Installs what every lab starts with: the install namespace, a Ready Node object per node
/// host and, unless PureLB is installed otherwise ([`helm_install`]), the CRDs (from the Rust
/// types) and `rbac` (normally [`RBAC_YAML`]).
///
/// # Errors
///
/// The server refuses an object.
pub async fn install(client: &Client, topology: &Topology, rbac: Option<&str>) -> Result<(), LabError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": INSTALL_NAMESPACE}});
    namespaces
        .patch(INSTALL_NAMESPACE, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&namespace))
        .await
        .map_err(api_error(format!("create namespace {INSTALL_NAMESPACE}")))?;
    if let Some(rbac) = rbac {
        let crds = purelb::api::crd_yaml().map_err(|e| LabError::Parse {
            what: "the CRDs generated from the Rust types".to_owned(),
            detail: e.to_string(),
        })?;
        apply_yaml(client, &crds).await?;
        apply_yaml(client, rbac).await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for host in &topology.nodes {
        let v6 = host.ipv6.map(|a| a.to_string());
        let object = node_object(&host.name, &host.ipv4.to_string(), v6.as_deref());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        nodes
            .patch(&host.name, &params, &Patch::Apply(&object))
            .await
            .map_err(api_error(format!("create node {}", host.name)))?;
        // Status is a subresource: the kubelet would write it; the lab does.
        nodes
            .patch_status(&host.name, &params, &Patch::Apply(&object))
            .await
            .map_err(api_error(format!("set the status of node {}", host.name)))?;
    }
    Ok(())
}

/// `scripts/helm-emulator.py` of this workspace (Helm's Go SDK through helm-python-sdk).
pub const HELM_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/helm-emulator.py");

/// Installs `charts/purelb` with Helm's own engine into the install namespace, as admin
/// (`kubeconfig`), and checks that the release is `deployed`.
///
/// # Errors
///
/// Python or helm-python-sdk is missing (the message says how to install it), or Helm fails.
pub async fn helm_install(kubeconfig: &std::path::Path) -> Result<(), LabError> {
    let command = format!("python3 {HELM_SCRIPT} install --kubeconfig {}", kubeconfig.display());
    let output = tokio::process::Command::new("python3")
        .arg(HELM_SCRIPT)
        .args(["install", "--namespace", INSTALL_NAMESPACE, "--kubeconfig"])
        .arg(kubeconfig)
        .output()
        .await
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let release: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    if !output.status.success() || release["status"] != "deployed" {
        return Err(LabError::Command {
            command,
            detail: format!(
                "{} {stdout}{} (needs helm-python-sdk: python3 -m pip install helm-python-sdk==0.2.2)",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_objects_are_ready_and_addressed() {
        let node = node_object("n1", "192.0.2.11", Some("2001:db8::11"));
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert_eq!(node["status"]["addresses"][1]["address"], "2001:db8::11");
        assert_eq!(node["status"]["conditions"][0]["status"], "True");
        let stamp = now();
        assert_eq!(stamp.len(), 20, "{stamp}");
        assert!(stamp.starts_with("20") && stamp.ends_with('Z'), "{stamp}");
    }

    #[test]
    fn the_rbac_manifest_names_both_service_accounts() {
        assert!(RBAC_YAML.contains("name: purelb-allocator") && RBAC_YAML.contains("name: purelb-agent"));
    }
}
