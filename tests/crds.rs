//! The CRDs generated from the Rust types: committed output is current, the contract's fields,
//! CEL rules, printer columns, short names and subresources are there, the samples in `docs/`
//! round-trip through the types, and the CEL rules accept and reject what they should.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use kube::CustomResourceExt;
use purelb::{
    api::{LBNodeAgent, ServiceGroup, crd_yaml},
    core::ipam::parse_pool_spec,
};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_match_the_types() {
    let committed = std::fs::read_to_string(root().join("manifests/crds/purelb.yaml")).unwrap();
    let generated = crd_yaml().unwrap();
    assert!(
        committed == generated,
        "manifests/crds/purelb.yaml is out of date: run `cargo run -q -- crds > manifests/crds/purelb.yaml` (or `just crds`)"
    );
}

fn schema_of(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

#[test]
fn servicegroup_crd_has_the_contract() {
    let crd = serde_json::to_value(ServiceGroup::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "servicegroups.purelb.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["sg", "sgs"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v2");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Type", "Allocated-V4", "Allocated-V6", "Ready", "Age"]);

    let spec = &schema_of(&crd)["properties"]["spec"];
    for field in ["local", "remote", "netbox", "namespaces", "enforceNamespaces", "namespaceDefault"] {
        assert!(spec["properties"][field].is_object(), "spec.{field}");
    }
    let pool_spec = &spec["properties"]["local"]["properties"];
    for field in ["v4pools", "v6pools", "v4pool", "v6pool", "balancePools", "skipIPv6DAD"] {
        assert!(pool_spec[field].is_object(), "PoolSpec.{field}");
    }
    let address_pool = &pool_spec["v4pools"]["items"];
    assert_eq!(address_pool["required"], json!(["pool", "subnet"]));
    assert!(address_pool["properties"]["aggregation"]["pattern"].is_string());
    let netbox = &spec["properties"]["netbox"]["properties"];
    for field in ["url", "tenant", "aggregation", "tokenSecretRef"] {
        assert!(netbox[field].is_object(), "NetboxSpec.{field}");
    }
    let rules: Vec<&str> =
        spec["x-kubernetes-validations"].as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert!(rules.iter().any(|r| r.contains("has(self.netbox)")), "exactly-one rule: {rules:?}");
    assert!(rules.iter().any(|r| r.contains("self.enforceNamespaces")));
    assert!(rules.iter().any(|r| r.contains("self.namespaceDefault")));
    assert_eq!(spec["properties"]["namespaces"]["maxItems"], 1024);

    let status = &schema_of(&crd)["properties"]["status"]["properties"];
    for field in [
        "conditions",
        "poolType",
        "allocatedIPv4",
        "allocatedIPv6",
        "availableIPv4",
        "availableIPv6",
        "observedGeneration",
    ] {
        assert!(status[field].is_object(), "status.{field}");
    }
    assert_eq!(status["availableIPv6"]["type"], "string", "exact decimal, not a wrapping integer");
}

#[test]
fn lbnodeagent_crd_has_the_contract() {
    let crd = serde_json::to_value(LBNodeAgent::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "lbnodeagents.purelb.io");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["lbna", "lbnas"]));
    let spec = &schema_of(&crd)["properties"]["spec"]["properties"];
    assert!(spec["nodeSelector"].is_object());
    let local = &spec["local"]["properties"];
    assert_eq!(local["localInterface"]["default"], "default");
    assert_eq!(local["dummyInterface"]["default"], "kube-lb0");
    assert!(local["interfaces"].is_object());
    let garp = &local["garp"]["properties"];
    assert_eq!(garp["enabled"]["default"], true);
    assert_eq!((garp["count"]["minimum"].as_f64(), garp["count"]["maximum"].as_f64()), (Some(1.0), Some(10.0)));
    assert_eq!(garp["count"]["default"], 3);
    assert_eq!(garp["interval"]["default"], "500ms");
    assert_eq!(garp["initialDelay"]["default"], "0s");
    assert_eq!(garp["refreshInterval"]["default"], "0s");
    let addr = &local["addressConfig"]["properties"];
    assert_eq!(
        addr["localInterface"]["default"],
        json!({"validLifetime": 300, "preferredLifetime": 300, "noPrefixRoute": true})
    );
    assert_eq!(
        addr["dummyInterface"]["default"],
        json!({"validLifetime": 0, "preferredLifetime": 0, "noPrefixRoute": false})
    );
}

fn load_sample(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("docs/samples").join(name)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn samples_round_trip_through_the_types() {
    for (name, base) in [
        ("servicegroup-local-dualstack.yaml", Some("spec.local")),
        ("servicegroup-remote-aggregation.yaml", Some("spec.remote")),
        ("servicegroup-netbox.yaml", None),
    ] {
        let original = load_sample(name);
        let typed: ServiceGroup = serde_json::from_value(original.clone()).unwrap();
        let back = serde_json::to_value(&typed).unwrap();
        assert_eq!(back, original, "{name} does not round-trip");
        let again: ServiceGroup = serde_json::from_value(back).unwrap();
        assert_eq!(again, typed);
        if let Some(base) = base {
            let pools = typed.spec.local.as_ref().or(typed.spec.remote.as_ref()).unwrap();
            parse_pool_spec(base, pools).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let original = load_sample("lbnodeagent-default.yaml");
    let typed: LBNodeAgent = serde_json::from_value(original.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), original);
    let empty: LBNodeAgent = serde_json::from_value(
        json!({"apiVersion": "purelb.io/v2", "kind": "LBNodeAgent", "metadata": {"name": "x"}, "spec": {}}),
    )
    .unwrap();
    assert_eq!(empty.spec, typed.spec, "an empty spec means the defaults written out in the sample");
}

fn cel_errors(crd: &Value, object: &Value) -> Vec<String> {
    match kube_cel::validate(schema_of(crd), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn cel_rules_accept_samples_and_reject_bad_groups() {
    let crd = serde_json::to_value(ServiceGroup::crd()).unwrap();
    for name in
        ["servicegroup-local-dualstack.yaml", "servicegroup-remote-aggregation.yaml", "servicegroup-netbox.yaml"]
    {
        assert_eq!(cel_errors(&crd, &load_sample(name)), Vec::<String>::new(), "{name}");
    }
    let pool = json!({"v4pool": {"pool": "192.0.2.1/32", "subnet": "192.0.2.0/24"}});
    let cases = [
        (json!({}), "exactly one of spec.local, spec.remote or spec.netbox"),
        (json!({"local": pool, "remote": pool}), "exactly one of spec.local, spec.remote or spec.netbox"),
        (
            json!({"local": pool, "enforceNamespaces": true}),
            "spec.enforceNamespaces requires a non-empty spec.namespaces",
        ),
        (json!({"local": pool, "enforceNamespaces": true, "namespaces": []}), "spec.enforceNamespaces requires"),
        (
            json!({"local": pool, "namespaceDefault": true}),
            "spec.namespaceDefault requires a non-empty spec.namespaces",
        ),
        (
            json!({"remote": {"v4pool": {"pool": "192.0.2.1/32", "subnet": "192.0.2.0/24"}, "skipIPv6DAD": true}}),
            "skipIPv6DAD",
        ),
    ];
    for (spec, want) in cases {
        let obj =
            json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup", "metadata": {"name": "bad"}, "spec": spec});
        let errors = cel_errors(&crd, &obj);
        assert!(errors.iter().any(|e| e.contains(want)), "{spec}: want {want:?}, got {errors:?}");
    }
    let ok = json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup", "metadata": {"name": "ok"},
        "spec": {"local": pool, "enforceNamespaces": true, "namespaceDefault": true, "namespaces": ["web"]}});
    assert_eq!(cel_errors(&crd, &ok), Vec::<String>::new());
}

#[test]
fn schema_patterns_reject_hostile_strings() {
    let crd = serde_json::to_value(ServiceGroup::crd()).unwrap();
    let props = &schema_of(&crd)["properties"]["spec"]["properties"]["local"]["properties"]["v4pool"]["properties"];
    let matches = |field: &str, value: &str| {
        let pattern = props[field]["pattern"].as_str().unwrap();
        regex_lite_match(pattern, value)
    };
    assert!(matches("pool", "192.0.2.240/28"));
    assert!(matches("pool", " 192.0.2.10 - 192.0.2.20 "));
    assert!(matches("pool", "2001:db8::1-2001:db8::ff"));
    assert!(!matches("pool", "192.0.2.0/24; rm -rf /"));
    assert!(!matches("pool", "$(reboot)"));
    assert!(matches("aggregation", "default") && matches("aggregation", "/32") && matches("aggregation", "/128"));
    assert!(!matches("aggregation", "32") && !matches("aggregation", "/129") && !matches("aggregation", "/"));
}

/// The schema patterns are plain ECMA/RE2-compatible expressions; kube-cel's regex support
/// evaluates them the same way the API server does.
fn regex_lite_match(pattern: &str, value: &str) -> bool {
    let schema = json!({"type": "object", "properties": {"v": {"type": "string"}},
        "x-kubernetes-validations": [{"rule": format!("self.v.matches({})", serde_json::to_string(pattern).unwrap())}]});
    kube_cel::validate(&schema, &json!({"v": value}), None).is_ok()
}

/// A placeholder value of a schema's type (required fields of the objects the default walk
/// builds).
fn placeholder(schema: &Value) -> Value {
    if let Some(d) = schema.get("default") {
        return d.clone();
    }
    match schema["type"].as_str() {
        Some("string") => json!("x"),
        Some("integer" | "number") => json!(1),
        Some("boolean") => json!(false),
        Some("array") => json!([]),
        _ => json!({}),
    }
}

/// Every object schema below `schema` with defaulted properties: (path of the object, the
/// object's schema).
fn defaulted_objects<'a>(schema: &'a Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a Value)>) {
    let Some(props) = schema["properties"].as_object() else { return };
    if props.values().any(|p| p.get("default").is_some()) {
        out.push((path.clone(), schema));
    }
    for (name, prop) in props {
        path.push(name.clone());
        defaulted_objects(prop, path, out);
        path.pop();
    }
}

/// Defaults apply per field, not per object (issue 16 §4): for every object of the CRDs that
/// has defaulted fields, an object that is present but sets none of them (only its required
/// fields) gets every default, through the Rust types as the agent and allocator read them.
/// (Before, a `localInterface` that set only its lifetimes got `noPrefixRoute: false`.)
#[test]
fn every_defaulted_field_gets_its_default_when_its_object_sets_other_fields() {
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(crd: &Value, kind: &str) -> usize {
        let schema = schema_of(crd);
        let mut objects = Vec::new();
        defaulted_objects(&schema["properties"]["spec"], &mut vec!["spec".to_owned()], &mut objects);
        for (path, object) in &objects {
            // The document: every object on the path present with its required fields only.
            let mut doc =
                json!({"apiVersion": "purelb.io/v2", "kind": kind, "metadata": {"name": "d", "namespace": "n"}});
            let mut at = &mut doc;
            let mut node_schema = schema;
            for key in path {
                node_schema = &node_schema["properties"][key];
                let mut value = json!({});
                for required in node_schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap();
                    value[name] = placeholder(&node_schema["properties"][name]);
                }
                at[key] = value;
                at = &mut at[key];
            }
            // Exactly one of local/remote/netbox for a ServiceGroup spec.
            if kind == "ServiceGroup" && path.len() == 1 {
                doc["spec"]["remote"] = json!({"v4pool": {"pool": "198.51.100.0/28", "subnet": "198.51.100.0/24"}});
            }
            let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{path:?}: {e}\n{doc}"));
            let back = serde_json::to_value(&typed).unwrap();
            let mut got = &back;
            for key in path {
                got = &got[key];
            }
            for (name, prop) in object["properties"].as_object().unwrap() {
                if let Some(default) = prop.get("default") {
                    assert_eq!(&got[name], default, "{kind} {}.{name}: {doc}", path.join("."));
                }
            }
        }
        objects.len()
    }
    let n = check::<LBNodeAgent>(&serde_json::to_value(LBNodeAgent::crd()).unwrap(), "LBNodeAgent")
        + check::<ServiceGroup>(&serde_json::to_value(ServiceGroup::crd()).unwrap(), "ServiceGroup");
    assert!(n >= 5, "only {n} objects with defaults walked");
    // The case that was wrong: only the lifetimes of localInterface.
    let agent: LBNodeAgent = serde_json::from_value(json!({
        "apiVersion": "purelb.io/v2", "kind": "LBNodeAgent", "metadata": {"name": "d"},
        "spec": {"local": {"addressConfig": {"localInterface": {"validLifetime": 60, "preferredLifetime": 60}}}}
    }))
    .unwrap();
    let local = agent.spec.local.address_config.local_interface;
    assert!(local.no_prefix_route && local.valid_lifetime == 60);
}
