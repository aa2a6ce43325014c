//! What the agent keeps of a Service in its watch cache: [`CachedService`], the facts the
//! decision reads ([`ServiceFacts`]) and the metadata its Events name the Service by.
//!
//! A `k8s_openapi` `Service` is 824 bytes before any of its fields is set (the spec alone is 416),
//! and its annotations take a 544-byte tree node however few they are. At 50,000 Services a
//! cache of trimmed `Service` objects was about 2.2 KB per Service, more than the EndpointSlice
//! index; this summary is a fraction of it (issue 20, docs/scale.md).

use std::{borrow::Cow, net::IpAddr};

use k8s_openapi::{NamespaceResourceScope, api::core::v1::Service, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use super::decide::{self, Kind, ServiceFacts};
use crate::core::endpoints::ServiceKey;

/// A Service as the agent caches it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedService {
    /// Name, namespace and uid only (what an Event's reference carries).
    pub metadata: ObjectMeta,
    /// `purelb.io/pool-type`, parsed (`None`: not PureLB's).
    pub pool_kind: Option<Kind>,
    /// `purelb.io/allocated-from`.
    pub allocated_from: Option<Box<str>>,
    /// `spec.externalTrafficPolicy: Local`.
    pub local_traffic_policy: bool,
    /// The parsable addresses of `status.loadBalancer.ingress`, in order.
    pub ingress: Box<[IpAddr]>,
}

impl From<Service> for CachedService {
    fn from(svc: Service) -> Self {
        let pool_kind = decide::pool_kind(&svc);
        let allocated_from = svc.allocated_from().map(Box::from);
        let local_traffic_policy = svc.local_traffic_policy();
        let ingress = decide::ingress_addresses(&svc).into_boxed_slice();
        let ObjectMeta { name, namespace, uid, .. } = svc.metadata;
        Self {
            metadata: ObjectMeta { name, namespace, uid, ..ObjectMeta::default() },
            pool_kind,
            allocated_from,
            local_traffic_policy,
            ingress,
        }
    }
}

impl ServiceFacts for CachedService {
    fn key(&self) -> ServiceKey {
        ServiceKey::new(
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    fn pool_kind(&self) -> Option<Kind> {
        self.pool_kind
    }

    fn ingress_addresses(&self) -> Vec<IpAddr> {
        self.ingress.to_vec()
    }

    fn local_traffic_policy(&self) -> bool {
        self.local_traffic_policy
    }

    fn allocated_from(&self) -> Option<&str> {
        self.allocated_from.as_deref()
    }
}

/// The same resource as `Service` (its Events and store keys name a Service).
impl kube::Resource for CachedService {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kube::Resource;

    use super::*;

    fn full_service() -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
                "creationTimestamp": "2026-12-04T10:00:00Z",
                "labels": {"app": "web"},
                "annotations": {"purelb.io/pool-type": "local", "purelb.io/allocated-from": "default",
                    "meta.helm.sh/release-name": "shop",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a very\": \"long copy\"}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}],
                "selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}, {"hostname": "no-ip.example"},
                    {"ip": "2001:db8::10"}]},
                "conditions": [{"type": "purelb.io/Allocated", "status": "True", "reason": "Allocated",
                    "message": "192.0.2.10 from ServiceGroup default", "lastTransitionTime": "2026-12-04T10:00:01Z"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_service_says_what_the_service_says_to_the_decision() {
        let full = full_service();
        let cached = CachedService::from(full.clone());
        assert_eq!(cached.key(), full.key());
        assert_eq!(ServiceFacts::pool_kind(&cached), Some(Kind::Local));
        assert_eq!(ServiceFacts::pool_kind(&cached), ServiceFacts::pool_kind(&full));
        assert_eq!(cached.ingress_addresses(), full.ingress_addresses());
        assert_eq!(cached.ingress_addresses().len(), 2, "the entry without an address is left out");
        assert!(cached.local_traffic_policy() && full.local_traffic_policy());
        assert_eq!(cached.allocated_from(), Some("default"));
        assert_eq!(cached.allocated_from(), full.allocated_from());
        // Not PureLB's, cluster policy, no status: nothing.
        let bare = CachedService::from(Service::default());
        assert_eq!((ServiceFacts::pool_kind(&bare), bare.local_traffic_policy()), (None, false));
        assert!(bare.ingress_addresses().is_empty() && bare.allocated_from().is_none());
    }

    #[test]
    fn a_cached_service_is_named_as_the_service_in_events_and_keeps_nothing_else() {
        let full = full_service();
        let cached = CachedService::from(full.clone());
        // An Event's reference names the Service as the object would.
        assert_eq!(cached.object_ref(&()), full.object_ref(&()));
        assert_eq!(cached.object_ref(&()).uid.as_deref(), Some("u-1"));
        assert_eq!(cached.object_ref(&()).kind.as_deref(), Some("Service"));
        // Nothing else of the metadata.
        let kept = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(cached.metadata, kept);
    }
}
