//! `purelb migrate --from metallb|purelb` (issue 19): converts another load balancer's
//! configuration into PureLB's objects and Service annotations so that **no Service address
//! changes**, and proves it before anything is written.
//!
//! The conversion is pure ([`convert`]): source objects (as JSON, from the cluster or from
//! files), the LoadBalancer Services and the Nodes in, a [`Plan`] out: the PureLB objects, the
//! annotations to set on each Service, and a [`Report`]. The report's verdict per Service is not
//! guessed: the converted groups and annotated Services are fed to the allocator's own table
//! ([`crate::allocator::table::Allocator`]: `adopt` oldest first, as the allocator does when it
//! starts, then `decide`), so "kept" means the allocator keeps that address.
//!
//! Sources: [`metallb`] (`metallb.io/v1beta1` and `v1beta2` resources, the legacy ConfigMap) and
//! [`gopurelb`] (the Go PureLB's `purelb.io/v1`, and its `purelb.io/v2` of v0.15–v0.17).

pub mod cluster;
pub mod gopurelb;
pub mod metallb;
pub mod report;
pub mod subnets;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Service};
use serde_json::Value;

pub use report::{Finding, Report, ServiceVerdict, Verdict};

use crate::api::contract;

/// Field manager of `--apply`.
pub const FIELD_MANAGER: &str = "purelb-migrate";

/// Where the configuration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// MetalLB (CRDs `metallb.io`, or the legacy ConfigMap).
    Metallb,
    /// The Go PureLB (`purelb.io/v1`, or its `purelb.io/v2` of v0.15–v0.17).
    Purelb,
}

impl Source {
    /// The namespace the source is usually installed in.
    #[must_use]
    pub fn default_namespace(self) -> &'static str {
        match self {
            Self::Metallb => "metallb-system",
            Self::Purelb => "purelb",
        }
    }
}

/// What the conversion reads.
#[derive(Clone, Debug, Default)]
pub struct Input {
    /// The source's objects (any kinds; unknown ones are ignored).
    pub objects: Vec<Value>,
    /// LoadBalancer Services.
    pub services: Vec<Service>,
    /// Nodes (their addresses tell which subnets are on the nodes' LAN).
    pub nodes: Vec<Node>,
}

/// Settings of the conversion.
#[derive(Clone, Debug)]
pub struct Options {
    /// PureLB's install namespace (where the objects go).
    pub namespace: String,
    /// `--subnet`: the nodes' LAN subnets, when the Nodes do not tell (they carry addresses,
    /// not prefix lengths).
    pub subnets: Vec<crate::core::ipam::Subnet>,
    /// `--lb-class` of the PureLB allocator that will run.
    pub lb_class: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: contract::DEFAULT_NAMESPACE.to_owned(),
            subnets: Vec::new(),
            lb_class: contract::DEFAULT_LB_CLASS.to_owned(),
        }
    }
}

/// The annotations one Service gets (`None`: removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChange {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Annotations to set.
    pub annotations: BTreeMap<String, String>,
}

/// The outcome of a conversion.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// PureLB objects (ServiceGroups, LBNodeAgents, BGPPeers), as JSON.
    pub objects: Vec<Value>,
    /// Annotation changes, one per Service that changes.
    pub services: Vec<ServiceChange>,
    /// What happens to each Service, and every setting without an equivalent.
    pub report: Report,
}

impl Plan {
    /// The objects and the Service changes as Kubernetes objects (Service changes as partial
    /// Services, for server-side apply: `kubectl apply --server-side -f`).
    #[must_use]
    pub fn documents(&self) -> Vec<Value> {
        let mut out = self.objects.clone();
        for change in &self.services {
            out.push(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": change.name, "namespace": change.namespace, "annotations": change.annotations},
            }));
        }
        out
    }
}

/// Converts `input` from `source`.
#[must_use]
pub fn convert(source: Source, input: &Input, options: &Options) -> Plan {
    let converted = match source {
        Source::Metallb => metallb::convert(input, options),
        Source::Purelb => gopurelb::convert(input, options),
    };
    report::finish(converted, input, options)
}

/// What a source converter produces; [`report::finish`] adds the verdicts.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    /// PureLB objects.
    pub objects: Vec<Value>,
    /// Annotations per Service key (`namespace/name`).
    pub annotations: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// Findings of the conversion (unconvertible settings, guesses, errors).
    pub findings: Vec<Finding>,
}

/// A PureLB object with the usual metadata.
#[must_use]
pub fn object(kind: &str, name: &str, namespace: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "purelb.io/v2",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "spec": spec,
    })
}

/// A string field of a JSON object.
#[must_use]
pub fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// The name of an object.
#[must_use]
pub fn name_of(v: &Value) -> String {
    str_of(v, &["metadata", "name"]).unwrap_or("<no name>").to_owned()
}

#[cfg(test)]
mod tests;
