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
    k8s_openapi::api::core::v1::Service,
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

/// The order in which Services claim addresses when a table is rebuilt (allocator start, a new
/// leader, `purelb status`, `purelb migrate`): oldest first, then by namespace/name, so that the
/// older of two Services claiming one address keeps it.
#[must_use]
pub fn age_key(svc: &Service) -> (Option<k8s_openapi::jiff::Timestamp>, ServiceKey) {
    (svc.metadata.creation_timestamp.as_ref().map(|t| t.0), ServiceKey::of_service(svc))
}
