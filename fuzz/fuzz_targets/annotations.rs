//! The Service annotation parsers (`purelb.io/addresses`, `purelb.io/service-group`,
//! `purelb.io/allow-shared-ip`, …, and `spec.loadBalancerIP`): a Service with arbitrary
//! annotation values never makes the allocator panic, and a pinned address is at most one per
//! family.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use purelb::{
    allocator::request::{ServiceRequest, parse_addresses},
    api::contract,
    core::ipam::Family,
    k8s_openapi::{
        api::core::v1::{Service, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    },
};

/// The annotations the allocator reads, in the order the input's fields fill them.
const KEYS: [&str; 6] = [
    contract::ANNOTATION_ADDRESSES,
    contract::ANNOTATION_SERVICE_GROUP,
    contract::ANNOTATION_ALLOW_SHARED_IP,
    contract::ANNOTATION_ALLOCATED_BY,
    contract::ANNOTATION_ALLOCATED_FROM,
    contract::ANNOTATION_POOL_TYPE,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ips) = parse_addresses("purelb.io/addresses", text) {
        assert!(!ips.is_empty() && ips.len() <= 2);
        if ips.len() == 2 {
            assert_ne!(Family::of(ips[0]), Family::of(ips[1]));
        }
    }
    // Fields separated by NUL: the annotation values, then spec.loadBalancerIP, the class and
    // the family policy.
    let mut fields = text.split('\0');
    let mut annotations = BTreeMap::new();
    for key in KEYS {
        if let Some(value) = fields.next() {
            annotations.insert(key.to_owned(), value.to_owned());
        }
    }
    let lb_ip = fields.next().map(str::to_owned);
    let class = fields.next().map(str::to_owned);
    let policy = fields.next().map(str::to_owned);
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("fuzz".into()),
            namespace: Some("default".into()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_ip: lb_ip,
            load_balancer_class: class,
            ip_family_policy: policy,
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let req = ServiceRequest::from_service(&svc, "purelb.io/purelbv2", true);
    for family in [Family::V4, Family::V6] {
        assert!(req.pinned.iter().filter(|ip| Family::of(**ip) == family).count() <= 1);
    }
    for error in &req.errors {
        // Every error renders a message (bounded, so a hostile value cannot flood Events).
        assert!(error.to_string().len() < 2_000, "unbounded message: {error}");
    }
});
