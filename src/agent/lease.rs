//! This node's membership Lease `purelb-node-<node>` (`api.md` §3): built as a JSON body
//! ([`lease_body`], pure) and written with one merge patch per renewal, created when absent
//! ([`renew`]); deleted on a clean exit only if it still names this instance ([`delete_own`]).
//! Every call is bounded by a timeout.

use std::time::Duration;

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::api::contract;

/// Who this Lease is and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Install namespace.
    pub namespace: String,
    /// This node.
    pub node: String,
    /// `purelb.io/instance` (the pod UID).
    pub instance: String,
    /// `leaseDurationSeconds` (rounded up to whole seconds, at least 1).
    pub duration: Duration,
    /// Timeout of every API call.
    pub api_timeout: Duration,
}

/// What the Lease says besides the fixed fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseContent {
    /// `purelb.io/subnets`.
    pub subnets: String,
    /// `purelb.io/announcing`.
    pub announcing: String,
    /// `purelb.io/draining`.
    pub draining: bool,
    /// UID of this node's Node object, for the ownerReference.
    pub node_uid: Option<String>,
    /// `purelb.io/bgp` (BGP on only).
    pub bgp: Option<String>,
}

/// Errors writing the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API refused.
    #[error("cannot {action} Lease {namespace}/{name}: {source}")]
    Api {
        /// What was tried.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        source: Box<kube::Error>,
    },
    /// The call did not answer in time.
    #[error("{action} Lease {namespace}/{name} timed out after {timeout:?}")]
    Timeout {
        /// What was tried.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The bound.
        timeout: Duration,
    },
    /// The body could not be built.
    #[error("cannot build Lease {name}: {source}")]
    Body {
        /// Name.
        name: String,
        /// The error.
        source: serde_json::Error,
    },
}

/// `leaseDurationSeconds` for a duration: whole seconds rounded up, at least 1.
#[must_use]
pub fn duration_seconds(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The Lease as a JSON object (also a valid merge patch): labels, annotations, owner, spec.
#[must_use]
pub fn lease_body(settings: &LeaseSettings, content: &LeaseContent, now: Timestamp) -> Value {
    let name = contract::node_lease_name(&settings.node);
    let owners = content
        .node_uid
        .as_ref()
        .map_or(Value::Null, |uid| json!([{"apiVersion": "v1", "kind": "Node", "name": settings.node, "uid": uid}]));
    let renew = serde_json::to_value(MicroTime(now)).unwrap_or(Value::Null);
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {
                contract::LABEL_APP_NAME.0: contract::LABEL_APP_NAME.1,
                contract::LABEL_COMPONENT_AGENT.0: contract::LABEL_COMPONENT_AGENT.1,
            },
            "annotations": {
                contract::LEASE_ANNOTATION_SUBNETS: content.subnets,
                contract::LEASE_ANNOTATION_INSTANCE: settings.instance,
                contract::LEASE_ANNOTATION_ANNOUNCING: content.announcing,
                contract::LEASE_ANNOTATION_DRAINING: if content.draining { Value::from("true") } else { Value::Null },
                contract::LEASE_ANNOTATION_BGP: content.bgp.as_deref().map_or(Value::Null, Value::from),
            },
            "ownerReferences": owners,
        },
        "spec": {
            "holderIdentity": settings.node,
            "leaseDurationSeconds": duration_seconds(settings.duration),
            "renewTime": renew,
        },
    })
}

/// Removes `null` members of objects (a merge patch deletes with them; a create must not carry them).
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        other => other,
    }
}

/// The Lease object [`lease_body`] describes.
///
/// # Errors
///
/// [`LeaseError::Body`] (not expected: the body is built from typed values).
pub fn lease_object(settings: &LeaseSettings, content: &LeaseContent, now: Timestamp) -> Result<Lease, LeaseError> {
    serde_json::from_value(strip_nulls(lease_body(settings, content, now)))
        .map_err(|source| LeaseError::Body { name: contract::node_lease_name(&settings.node), source })
}

async fn bounded<T>(
    settings: &LeaseSettings,
    action: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    let name = contract::node_lease_name(&settings.node);
    match tokio::time::timeout(settings.api_timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => {
            Err(LeaseError::Api { action, namespace: settings.namespace.clone(), name, source: Box::new(source) })
        }
        Err(_) => Err(LeaseError::Timeout {
            action,
            namespace: settings.namespace.clone(),
            name,
            timeout: settings.api_timeout,
        }),
    }
}

fn is_status(error: &LeaseError, code: u16) -> bool {
    matches!(error, LeaseError::Api { source, .. } if matches!(source.as_ref(), kube::Error::Api(status) if status.code == code))
}

/// Renews (or creates) the Lease with `content`, `renewTime` = now.
///
/// # Errors
///
/// [`LeaseError`] when the API refuses or does not answer in time.
pub async fn renew(client: &Client, settings: &LeaseSettings, content: &LeaseContent) -> Result<(), LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let name = contract::node_lease_name(&settings.node);
    let body = lease_body(settings, content, Timestamp::now());
    let pp = PatchParams { field_manager: Some(contract::MANAGER_AGENT.to_owned()), ..PatchParams::default() };
    match bounded(settings, "renew", api.patch(&name, &pp, &Patch::Merge(&body))).await {
        Ok(_) => Ok(()),
        Err(error) if is_status(&error, 404) => {
            let lease = lease_object(settings, content, Timestamp::now())?;
            let post = PostParams { field_manager: Some(contract::MANAGER_AGENT.to_owned()), ..PostParams::default() };
            bounded(settings, "create", api.create(&post, &lease)).await.map(|_| ())
        }
        Err(error) => Err(error),
    }
}

/// Deletes the Lease if its `purelb.io/instance` is ours; returns whether it was deleted.
///
/// # Errors
///
/// [`LeaseError`] when the API refuses or does not answer in time.
pub async fn delete_own(client: &Client, settings: &LeaseSettings) -> Result<bool, LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let name = contract::node_lease_name(&settings.node);
    // A renewal that was in flight when the Lease task stopped can land between the read and
    // the delete (409 Conflict on the resourceVersion precondition): read again and retry.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(lease) = bounded(settings, "read", api.get_opt(&name)).await? else { return Ok(false) };
        let instance = lease.metadata.annotations.as_ref().and_then(|a| a.get(contract::LEASE_ANNOTATION_INSTANCE));
        if instance != Some(&settings.instance) {
            return Ok(false);
        }
        let dp = DeleteParams {
            preconditions: lease.metadata.uid.clone().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: lease.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match bounded(settings, "delete", api.delete(&name, &dp)).await {
            Ok(_) => return Ok(true),
            Err(LeaseError::Api { source, .. }) if attempt < 3 && is_conflict(&source) => {}
            Err(error) => return Err(error),
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::election::Members;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "purelb-system".into(),
            node: "n1".into(),
            instance: "uid-1".into(),
            duration: Duration::from_millis(2500),
            api_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_body_is_a_member_lease() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let content = LeaseContent {
            subnets: "192.0.2.0/24".into(),
            announcing: "192.0.2.240%eth0".into(),
            draining: false,
            node_uid: Some("node-uid".into()),
            bgp: Some("tor-a=Established".into()),
        };
        let body = lease_body(&settings(), &content, now);
        assert_eq!(body["spec"]["leaseDurationSeconds"], 3);
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "node-uid");
        assert_eq!(body["metadata"]["annotations"][contract::LEASE_ANNOTATION_BGP], "tor-a=Established");
        assert_eq!(body["metadata"]["annotations"][contract::LEASE_ANNOTATION_DRAINING], Value::Null);
        let lease = lease_object(&settings(), &content, now).unwrap();
        let members = Members::from_leases([&lease], now);
        let member = members.get("n1").unwrap();
        assert_eq!(member.subnets.len(), 1);
        assert_eq!(member.holding.len(), 1);
        assert!(!member.draining);
        assert_eq!(members.winner("192.0.2.240".parse().unwrap()), Some("n1"));

        let draining = LeaseContent { draining: true, node_uid: None, ..content };
        let lease = lease_object(&settings(), &draining, now).unwrap();
        let members = Members::from_leases([&lease], now);
        assert!(members.get("n1").unwrap().draining);
        assert_eq!(members.winner("192.0.2.240".parse().unwrap()), None);
    }

    #[test]
    fn durations_round_up() {
        assert_eq!(duration_seconds(Duration::from_millis(1)), 1);
        assert_eq!(duration_seconds(Duration::from_secs(6)), 6);
        assert_eq!(duration_seconds(Duration::ZERO), 1);
    }
}
