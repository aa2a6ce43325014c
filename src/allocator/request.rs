//! What a Service asks of the allocator, read from its spec and annotations: whether PureLB
//! handles it, pinned addresses, the group, the sharing key, families and ports, and what it
//! holds now. Entry point: [`ServiceRequest::from_service`]. Malformed annotation values become
//! [`RequestError`]s with a message that says what is wrong and how to fix it.

use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    api::contract::{
        ALLOCATED_BY_VALUE, ANNOTATION_ADDRESSES, ANNOTATION_ALLOCATED_BY, ANNOTATION_ALLOCATED_FROM,
        ANNOTATION_ALLOW_SHARED_IP, ANNOTATION_SERVICE_GROUP,
    },
    core::ipam::Family,
    k8s_openapi::{
        api::core::v1::{Service, ServicePort, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    },
};

/// `namespace/name` of a Service (shared with the EndpointSlice index).
pub use crate::core::endpoints::ServiceKey;

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyPolicy {
    /// The first family only.
    SingleStack,
    /// Every listed family the group can serve (at least one).
    PreferDualStack,
    /// Both families or nothing.
    RequireDualStack,
}

/// A malformed user input on the Service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `purelb.io/addresses` (or `spec.loadBalancerIP`) does not parse.
    #[error(
        "{field} {value:?} is not valid: {why}; write one IPv4 and/or one IPv6 address separated by a comma, e.g. \"192.0.2.10\" or \"192.0.2.10,2001:db8::10\""
    )]
    Addresses { field: &'static str, value: String, why: String },
    /// `purelb.io/service-group` is not a valid object name.
    #[error(
        "annotation purelb.io/service-group {value:?} is not a ServiceGroup name (lower-case letters, digits, '-' and '.', at most 253 characters)"
    )]
    GroupName { value: String },
    /// `purelb.io/allow-shared-ip` is too long or has control characters.
    #[error(
        "annotation purelb.io/allow-shared-ip {value:?} is not a usable sharing key: use at most 253 printable characters"
    )]
    SharingKey { value: String },
}

/// A protocol/port pair the Service exposes.
pub type PortKey = (String, i32);

/// What a Service asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    /// The Service.
    pub key: ServiceKey,
    /// PureLB handles it (type LoadBalancer and our class).
    pub handled: bool,
    /// Pinned addresses, at most one per family.
    pub pinned: Vec<IpAddr>,
    /// The pin came from the deprecated `spec.loadBalancerIP`.
    pub deprecated_lb_ip: bool,
    /// `purelb.io/service-group`.
    pub group: Option<String>,
    /// `purelb.io/allow-shared-ip`.
    pub sharing_key: Option<String>,
    /// Families the Service wants, in order.
    pub families: Vec<Family>,
    /// `spec.ipFamilyPolicy`.
    pub policy: FamilyPolicy,
    /// Protocol/port pairs.
    pub ports: BTreeSet<PortKey>,
    /// Addresses in `status.loadBalancer.ingress`.
    pub current: Vec<IpAddr>,
    /// `purelb.io/allocated-by: PureLB` is present.
    pub allocated_by_us: bool,
    /// `purelb.io/allocated-from`.
    pub allocated_from: Option<String>,
    /// Malformed inputs (the request is still usable for release and keeping what is held).
    pub errors: Vec<RequestError>,
    /// `spec.externalTrafficPolicy: Local`.
    pub local_traffic: bool,
}

/// Parses `purelb.io/addresses`: comma-separated, whitespace tolerated, at most one per family.
///
/// # Errors
///
/// A [`RequestError::Addresses`] naming the problem.
pub fn parse_addresses(field: &'static str, value: &str) -> Result<Vec<IpAddr>, RequestError> {
    let err = |why: String| RequestError::Addresses { field, value: value.chars().take(200).collect(), why };
    let mut out: Vec<IpAddr> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| err(format!("{:?} is not an IP address", part.chars().take(64).collect::<String>())))?;
        if out.iter().any(|o| Family::of(*o) == Family::of(ip)) {
            return Err(err(format!("more than one {} address", Family::of(ip))));
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err(err("no address given".to_owned()));
    }
    Ok(out)
}

fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl ServiceRequest {
    /// Reads a Service. `lb_class` is the class PureLB handles; `default_announcer` makes it
    /// handle Services without a class too.
    #[must_use]
    pub fn from_service(svc: &Service, lb_class: &str, default_announcer: bool) -> Self {
        let spec = svc.spec.clone().unwrap_or_default();
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let mut errors = Vec::new();
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
        let class_ok = match spec.load_balancer_class.as_deref() {
            Some(class) => class == lb_class,
            None => default_announcer,
        };
        let mut deprecated_lb_ip = false;
        let pinned =
            match (annotations.get(ANNOTATION_ADDRESSES), spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty())) {
                (Some(value), _) => parse_addresses("annotation purelb.io/addresses", value).unwrap_or_else(|e| {
                    errors.push(e);
                    Vec::new()
                }),
                (None, Some(ip)) => {
                    deprecated_lb_ip = true;
                    parse_addresses("spec.loadBalancerIP", ip).unwrap_or_else(|e| {
                        errors.push(e);
                        Vec::new()
                    })
                }
                (None, None) => Vec::new(),
            };
        let group = annotations.get(ANNOTATION_SERVICE_GROUP).map(|g| g.trim().to_owned()).filter(|g| !g.is_empty());
        if let Some(g) = &group
            && !valid_object_name(g)
        {
            errors.push(RequestError::GroupName { value: g.chars().take(100).collect() });
        }
        let group = group.filter(|g| valid_object_name(g));
        let sharing_key =
            annotations.get(ANNOTATION_ALLOW_SHARED_IP).map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
        let sharing_key = match sharing_key {
            Some(k) if k.len() > 253 || k.chars().any(char::is_control) => {
                errors.push(RequestError::SharingKey { value: k.chars().take(100).collect() });
                None
            }
            other => other,
        };
        let mut families: Vec<Family> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            })
            .collect();
        families.dedup();
        if families.is_empty() {
            families = pinned.iter().map(|ip| Family::of(*ip)).collect();
        }
        if families.is_empty() {
            families.push(Family::V4);
        }
        let policy = match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
            _ => FamilyPolicy::SingleStack,
        };
        match policy {
            FamilyPolicy::SingleStack => families.truncate(1),
            FamilyPolicy::PreferDualStack => {}
            FamilyPolicy::RequireDualStack => {
                for f in [Family::V4, Family::V6] {
                    if !families.contains(&f) {
                        families.push(f);
                    }
                }
            }
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()), p.port))
            .collect();
        let current = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ing| ing.iter().filter_map(|i| i.ip.as_deref()).filter_map(|ip| ip.parse().ok()).collect())
            .unwrap_or_default();
        Self {
            key: ServiceKey::of_service(svc),
            handled: is_lb && class_ok,
            pinned,
            deprecated_lb_ip,
            group,
            sharing_key,
            families,
            policy,
            ports,
            current,
            allocated_by_us: annotations.get(ANNOTATION_ALLOCATED_BY).map(String::as_str) == Some(ALLOCATED_BY_VALUE),
            allocated_from: annotations.get(ANNOTATION_ALLOCATED_FROM).cloned(),
            errors,
            local_traffic: spec.external_traffic_policy.as_deref() == Some("Local"),
        }
    }

    /// The pinned address of `family`.
    #[must_use]
    pub fn pinned_for(&self, family: Family) -> Option<IpAddr> {
        self.pinned.iter().copied().find(|ip| Family::of(*ip) == family)
    }
}

/// What the allocator keeps of a Service in its watch cache, which holds every Service of the
/// cluster: what [`ServiceRequest::from_service`], [`age_key`] and the allocator's writes read
/// (name, namespace, uid, resourceVersion, generation, creation time, the `purelb.io/`
/// annotations, the spec fields of a request, the status). The rest takes memory for nothing:
/// managedFields, other annotations (kubectl's last-applied copy of the whole object), labels,
/// the selector, cluster IPs, port names and node ports.
#[must_use]
pub fn cached(svc: Service) -> Service {
    let Service { metadata, spec, status } = svc;
    let ObjectMeta { name, namespace, uid, resource_version, generation, creation_timestamp, annotations, .. } =
        metadata;
    let annotations = annotations
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| k.starts_with(PURELB_ANNOTATION_PREFIX))
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    let spec = spec.map(|s| ServiceSpec {
        type_: s.type_,
        load_balancer_class: s.load_balancer_class,
        load_balancer_ip: s.load_balancer_ip,
        ip_families: s.ip_families,
        ip_family_policy: s.ip_family_policy,
        external_traffic_policy: s.external_traffic_policy,
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort { port: p.port, protocol: p.protocol, ..ServicePort::default() })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    let metadata = ObjectMeta {
        name,
        namespace,
        uid,
        resource_version,
        generation,
        creation_timestamp,
        annotations,
        ..ObjectMeta::default()
    };
    Service { metadata, spec, status }
}

/// Every annotation PureLB reads or writes on a Service starts with this.
const PURELB_ANNOTATION_PREFIX: &str = "purelb.io/";

/// The order in which Services claim addresses when a table is rebuilt (allocator start, a new
/// leader, `purelb status`, `purelb migrate`): oldest first, then by namespace/name, so that the
/// older of two Services claiming one address keeps it.
#[must_use]
pub fn age_key(svc: &Service) -> (Option<k8s_openapi::jiff::Timestamp>, ServiceKey) {
    (svc.metadata.creation_timestamp.as_ref().map(|t| t.0), ServiceKey::of_service(svc))
}

#[cfg(test)]
mod tests {
    use super::{ServiceRequest, age_key, cached};
    use crate::k8s_openapi::api::core::v1::Service;

    fn service(extra: serde_json::Value) -> Service {
        let mut svc = serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "6c1f0c57-0000-4000-8000-000000000001",
                "resourceVersion": "42", "generation": 3, "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"app": "web"},
                "annotations": {
                    "purelb.io/service-group": "edge", "purelb.io/allow-shared-ip": "web",
                    "purelb.io/allocated-by": "PureLB", "purelb.io/allocated-from": "edge",
                    "purelb.io/announcing-IPv4": "n1,eth0",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Service\"}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "purelb.io/purelbv2",
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]
            },
            "status": {
                "loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}, {"ip": "2001:db8::10"}]},
                "conditions": [{"type": "purelb.io/Allocated", "status": "True", "reason": "Allocated", "message": "from edge",
                                "lastTransitionTime": "2026-12-01T10:00:01Z", "observedGeneration": 3}]
            }
        });
        merge(&mut svc, extra);
        serde_json::from_value(svc).unwrap_or_default()
    }

    /// A JSON merge patch (RFC 7386): `null` removes, objects merge, anything else replaces.
    fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p,
        }
    }

    /// The cached copy reads as the whole Service does (the request, the age order, what the
    /// writes compare) and has lost what nothing reads.
    #[test]
    fn the_cached_service_reads_as_the_whole_one() {
        for extra in [
            serde_json::json!({}),
            serde_json::json!({"metadata": {"annotations": {"purelb.io/addresses": "192.0.2.7"}}}),
            serde_json::json!({"metadata": {"annotations": {"purelb.io/addresses": "no-such-address"}}}),
            serde_json::json!({"metadata": {"annotations": null}}),
            serde_json::json!({"spec": {"loadBalancerIP": "192.0.2.8", "loadBalancerClass": null, "ipFamilyPolicy": "RequireDualStack"}}),
            serde_json::json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": "Cluster", "ports": null}}),
        ] {
            let whole = service(extra.clone());
            assert!(whole.metadata.name.is_some(), "the test Service parses: {extra}");
            let kept = cached(whole.clone());
            for (class, default) in [("purelb.io/purelbv2", true), ("other", false)] {
                assert_eq!(
                    ServiceRequest::from_service(&kept, class, default),
                    ServiceRequest::from_service(&whole, class, default),
                    "{extra}"
                );
            }
            assert_eq!(age_key(&kept), age_key(&whole));
            assert_eq!(kept.status, whole.status);
            let meta = |s: &Service| {
                (
                    s.metadata.name.clone(),
                    s.metadata.namespace.clone(),
                    s.metadata.uid.clone(),
                    s.metadata.resource_version.clone(),
                    s.metadata.generation,
                )
            };
            assert_eq!(meta(&kept), meta(&whole));
            let purelb: Vec<_> =
                whole.metadata.annotations.iter().flatten().filter(|(k, _)| k.starts_with("purelb.io/")).collect();
            assert_eq!(kept.metadata.annotations.iter().flatten().collect::<Vec<_>>(), purelb, "{extra}");
        }
        let kept = cached(service(serde_json::json!({})));
        assert!(kept.metadata.managed_fields.is_none() && kept.metadata.labels.is_none());
        let spec = kept.spec.unwrap_or_default();
        assert!(spec.selector.is_none() && spec.cluster_ip.is_none() && spec.cluster_ips.is_none());
        assert!(
            spec.ports.iter().flatten().all(|p| p.name.is_none() && p.node_port.is_none() && p.target_port.is_none())
        );
    }
}
