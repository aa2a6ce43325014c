use std::collections::BTreeMap;

use k8s_pb::{
    api::{coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{DeleteOptions, MicroTime, ObjectMeta, Preconditions, Time},
        util::intstr::IntOrString,
    },
};
use prost::Message;
use serde_json::json;

use super::*;

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    // Go's encoder writes every non-pointer field, so the empty ones are on the wire too.
    ObjectMeta {
        name: Some(name.into()),
        generate_name: Some(String::new()),
        namespace: Some(namespace.into()),
        uid: Some(String::new()),
        resource_version: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(Time::default()),
        labels: BTreeMap::from([("app".into(), "web".into()), ("empty".into(), String::new())]),
        ..ObjectMeta::default()
    }
}

#[test]
fn a_service_from_kubectl_create_service_loadbalancer_decodes_to_its_json() {
    let svc = core::Service {
        metadata: Some(meta("web", "default")),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: Some("80-8080".into()),
                protocol: Some("TCP".into()),
                port: Some(80),
                target_port: Some(IntOrString { r#type: Some(0), int_val: Some(8080), str_val: Some(String::new()) }),
                node_port: Some(0),
                ..Default::default()
            }],
            selector: BTreeMap::from([("app".into(), "web".into())]),
            r#type: Some("LoadBalancer".into()),
            cluster_ip: Some(String::new()),
            load_balancer_ip: Some(String::new()),
            allocate_load_balancer_node_ports: Some(false),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus::default()),
    };
    let body = envelope("v1", "Service", &svc.encode_to_vec());
    let decoded = decode(&body).expect("decodes");
    assert_eq!(
        decoded,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "generation": 0,
                         "labels": {"app": "web", "empty": ""}},
            "spec": {
                "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 0}],
                "selector": {"app": "web"},
                "type": "LoadBalancer",
                "allocateLoadBalancerNodePorts": false,
            },
            "status": {},
        })
    );
}

#[test]
fn a_secret_has_base64_data_and_a_named_target_port_stays_a_string() {
    let secret = core::Secret {
        metadata: Some(meta("s", "ns")),
        data: BTreeMap::from([("k".into(), b"\x00\xffbin".to_vec())]),
        string_data: BTreeMap::new(),
        r#type: Some("Opaque".into()),
        immutable: None,
    };
    let decoded = decode(&envelope("v1", "Secret", &secret.encode_to_vec())).expect("decodes");
    assert_eq!(decoded["data"], json!({"k": "AP9iaW4="}));
    assert_eq!(decoded["type"], "Opaque");
    assert!(decoded.get("immutable").is_none());

    let port = IntOrString { r#type: Some(1), int_val: Some(0), str_val: Some("http".into()) };
    assert_eq!(int_or_string(&port.encode_to_vec()).expect("decodes"), json!("http"));
}

#[test]
fn times_and_quantities_are_json_strings_and_the_zero_time_is_left_out() {
    let lease = coordination::Lease {
        metadata: Some(ObjectMeta {
            creation_timestamp: Some(Time { seconds: Some(1_780_000_000), nanos: Some(0) }),
            ..meta("purelb-node-n1", "purelb-system")
        }),
        spec: Some(coordination::LeaseSpec {
            holder_identity: Some("n1".into()),
            lease_duration_seconds: Some(6),
            renew_time: Some(MicroTime { seconds: Some(1_780_000_000), nanos: Some(123_456_789) }),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    let decoded = decode(&envelope("coordination.k8s.io/v1", "Lease", &lease.encode_to_vec())).expect("decodes");
    assert_eq!(decoded["metadata"]["creationTimestamp"], "2026-05-28T20:26:40Z");
    assert_eq!(decoded["spec"]["renewTime"], "2026-05-28T20:26:40.123456Z");
    assert_eq!(decoded["spec"]["leaseTransitions"], 0);
    assert!(decoded["spec"].get("acquireTime").is_none());

    let node = core::Node {
        metadata: Some(meta("n1", "")),
        status: Some(core::NodeStatus {
            capacity: BTreeMap::from([("cpu".into(), Quantity { string: Some("2".into()) })]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let decoded = decode(&envelope("v1", "Node", &node.encode_to_vec())).expect("decodes");
    assert_eq!(decoded["status"]["capacity"], json!({"cpu": "2"}));
    assert!(decoded["metadata"].get("namespace").is_none());
}

#[test]
fn endpoint_conditions_keep_an_explicit_false() {
    let slice = discovery::EndpointSlice {
        metadata: Some(meta("web-abc", "default")),
        address_type: Some("IPv4".into()),
        endpoints: vec![discovery::Endpoint {
            addresses: vec!["192.0.2.10".into()],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true),
            }),
            node_name: Some("n1".into()),
            ..Default::default()
        }],
        ports: vec![],
    };
    let decoded = decode(&envelope("discovery.k8s.io/v1", "EndpointSlice", &slice.encode_to_vec())).expect("decodes");
    assert_eq!(
        decoded["endpoints"],
        json!([{"addresses": ["192.0.2.10"], "conditions": {"ready": false, "serving": true, "terminating": true},
                "nodeName": "n1"}])
    );
}

#[test]
fn a_pod_volume_is_inlined_as_in_json() {
    let pod = core::Pod {
        metadata: Some(meta("p", "default")),
        spec: Some(core::PodSpec {
            volumes: vec![core::Volume {
                name: Some("cfg".into()),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference { name: Some("cm".into()) }),
                        default_mode: Some(420),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
            containers: vec![core::Container {
                name: Some("c".into()),
                image: Some("img".into()),
                args: vec!["-v".into(), String::new()],
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    let decoded = decode(&envelope("v1", "Pod", &pod.encode_to_vec())).expect("decodes");
    assert_eq!(decoded["spec"]["volumes"], json!([{"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}}]));
    assert_eq!(decoded["spec"]["containers"], json!([{"name": "c", "image": "img", "args": ["-v", ""]}]));
    assert_eq!(decoded["spec"]["terminationGracePeriodSeconds"], 0);
}

#[test]
fn delete_options_sent_under_any_group_version_are_meta_v1() {
    let options = DeleteOptions {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some("u-1".into()), resource_version: None }),
        propagation_policy: Some("Foreground".into()),
        ..Default::default()
    };
    let decoded = decode(&envelope("v1", "DeleteOptions", &options.encode_to_vec())).expect("decodes");
    assert_eq!(decoded["gracePeriodSeconds"], 0);
    assert_eq!(decoded["preconditions"], json!({"uid": "u-1"}));
    assert_eq!(decoded["propagationPolicy"], "Foreground");
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert!(matches!(decode(b"{}"), Err(DecodeError::Malformed(_))));
    assert!(matches!(decode(&envelope("v1", "NoSuchKind", &[])), Err(DecodeError::Unsupported(_))));
    assert!(matches!(decode(&envelope("purelb.io/v2", "ServiceGroup", &[])), Err(DecodeError::Unsupported(_))));
    // A length that runs past the end, an overlong varint, wire type 7, field number 0.
    for raw in [
        &[0x0a, 0x05, 0x01][..],
        &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        &[0x0f],
        &[0x00],
    ] {
        assert!(matches!(decode(&envelope("v1", "Namespace", raw)), Err(DecodeError::Malformed(_))), "{raw:?}");
    }
}

#[test]
fn go_durations_print_as_go_does() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500_000), "1.5ms");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(-2_000_000_000), "-2s");
}

#[test]
fn every_reference_in_the_schema_resolves() {
    let all = messages();
    assert!(all.len() > 300, "{} messages", all.len());
    for (name, fields) in all {
        for field in fields.values() {
            if let (Kind::Message | Kind::Map, Some(reference)) = (field.kind, &field.reference) {
                assert!(
                    matches!(reference.as_str(), "string" | "bytes")
                        || all.contains_key(reference)
                        || is_special(reference),
                    "{name}.{}: {reference}",
                    field.json
                );
            }
        }
    }
}

fn is_special(name: &str) -> bool {
    [TIME, MICRO_TIME, DURATION, QUANTITY, INT_OR_STRING, RAW_EXTENSION, FIELDS_V1].contains(&name)
}
