//! EndpointSlices for lab Services. The lab has no kube-proxy and no EndpointSlice
//! controller, so it writes the slices itself: one endpoint per chosen node, addressed with
//! the node's own address (like a host-network pod), with `nodeName` and the
//! ready/serving/terminating conditions a test can flip.
//!
//! Entry points: [`ServiceBackends`] (pure: [`ServiceBackends::slices`]) and [`apply`].

use std::collections::BTreeMap;

use purelb::{
    k8s_openapi::{
        api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    },
    kube::{
        Api, Client,
        api::{DeleteParams, Patch, PatchParams},
    },
};

use super::{LabError, cluster::FIELD_MANAGER, topology::Topology};

/// Label every EndpointSlice carries: the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "purelb-lab";

/// One backend: a server on a node, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Node name (`n1` ..).
    pub node: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Backend {
    /// A ready, serving backend.
    #[must_use]
    pub fn ready(node: &str) -> Self {
        Self { node: node.to_owned(), ready: true, serving: true, terminating: false }
    }

    /// A backend that is neither ready nor serving (e.g. failing its readiness probe).
    #[must_use]
    pub fn not_ready(node: &str) -> Self {
        Self { node: node.to_owned(), ready: false, serving: false, terminating: false }
    }

    /// A backend that is shutting down but still serving.
    #[must_use]
    pub fn terminating(node: &str) -> Self {
        Self { node: node.to_owned(), ready: false, serving: true, terminating: true }
    }
}

/// The backends of one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBackends {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub service: String,
    /// Port the servers listen on.
    pub port: u16,
    /// Name of the Service port, when the Service names its ports.
    pub port_name: Option<String>,
    /// The backends.
    pub backends: Vec<Backend>,
}

impl ServiceBackends {
    /// No backends yet for `namespace/service`, port 80.
    #[must_use]
    pub fn new(namespace: &str, service: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            port: 80,
            port_name: None,
            backends: Vec::new(),
        }
    }

    /// Sets the port.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the port name.
    #[must_use]
    pub fn port_name(mut self, name: &str) -> Self {
        self.port_name = Some(name.to_owned());
        self
    }

    /// Adds a backend.
    #[must_use]
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends.push(backend);
        self
    }

    /// Name of the slice for one address family (`<service>-lab-ipv4`).
    #[must_use]
    pub fn slice_name(&self, family: &str) -> String {
        format!("{}-lab-{}", self.service, family.to_lowercase())
    }

    /// The EndpointSlices: IPv4, and IPv6 in a dual-stack lab.
    ///
    /// # Errors
    ///
    /// A backend names a node the lab does not have.
    pub fn slices(&self, topology: &Topology) -> Result<Vec<EndpointSlice>, LabError> {
        let mut families = vec![("IPv4", true)];
        if topology.dual_stack {
            families.push(("IPv6", false));
        }
        let mut slices = Vec::new();
        for (family, v4) in families {
            let mut endpoints = Vec::new();
            for backend in &self.backends {
                let host = topology.node(&backend.node).ok_or_else(|| LabError::NoSuchHost(backend.node.clone()))?;
                let address = if v4 { Some(host.ipv4.to_string()) } else { host.ipv6.map(|a| a.to_string()) };
                let Some(address) = address else { continue };
                endpoints.push(Endpoint {
                    addresses: vec![address],
                    conditions: Some(EndpointConditions {
                        ready: Some(backend.ready),
                        serving: Some(backend.serving),
                        terminating: Some(backend.terminating),
                    }),
                    node_name: Some(host.name.clone()),
                    ..Endpoint::default()
                });
            }
            let labels = BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), self.service.clone()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ]);
            slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(self.slice_name(family)),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                address_type: family.to_owned(),
                endpoints,
                ports: Some(vec![EndpointPort {
                    name: self.port_name.clone(),
                    port: Some(i32::from(self.port)),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: None,
                }]),
            });
        }
        Ok(slices)
    }
}

/// Writes the slices of `backends` (server-side apply, field manager `purelb-lab`).
///
/// # Errors
///
/// A backend names an unknown node, or the server refuses a slice.
pub async fn apply(client: &Client, topology: &Topology, backends: &ServiceBackends) -> Result<(), LabError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &backends.namespace);
    for slice in backends.slices(topology)? {
        let name = slice.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&slice)).await.map_err(
            |source| LabError::Api {
                action: format!("apply EndpointSlice {}/{name}", backends.namespace),
                source: Box::new(source),
            },
        )?;
    }
    Ok(())
}

/// Deletes the slices the lab wrote for `namespace/service` (missing ones are fine).
///
/// # Errors
///
/// The server refuses the deletion.
pub async fn delete(client: &Client, namespace: &str, service: &str) -> Result<(), LabError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let names = ServiceBackends::new(namespace, service);
    for family in ["IPv4", "IPv6"] {
        let name = names.slice_name(family);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(purelb::kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(LabError::Api {
                    action: format!("delete EndpointSlice {namespace}/{name}"),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_carry_node_names_and_conditions() {
        let topology = Topology::new("t", 3, true).unwrap();
        let backends = ServiceBackends::new("default", "web")
            .port_name("http")
            .backend(Backend::ready("n1"))
            .backend(Backend::terminating("n2"))
            .backend(Backend::not_ready("n3"));
        let slices = backends.slices(&topology).unwrap();
        assert_eq!(slices.len(), 2);
        let v4 = &slices[0];
        assert_eq!(v4.metadata.name.as_deref(), Some("web-lab-ipv4"));
        assert_eq!(v4.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL], "web");
        assert_eq!(v4.address_type, "IPv4");
        assert_eq!(v4.endpoints[0].addresses, ["192.0.2.11"]);
        assert_eq!(v4.endpoints[1].node_name.as_deref(), Some("n2"));
        let c = v4.endpoints[1].conditions.as_ref().unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(true), Some(true)));
        let c = v4.endpoints[2].conditions.as_ref().unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(false), Some(false)));
        assert_eq!(slices[1].endpoints[0].addresses, ["2001:db8::11"]);
        assert_eq!(v4.ports.as_ref().unwrap()[0].port, Some(80));
    }

    #[test]
    fn single_stack_labs_write_one_slice_and_unknown_nodes_fail() {
        let topology = Topology::new("t", 1, false).unwrap();
        let ok = ServiceBackends::new("default", "web").backend(Backend::ready("n1"));
        assert_eq!(ok.slices(&topology).unwrap().len(), 1);
        let bad = ServiceBackends::new("default", "web").backend(Backend::ready("n9"));
        assert!(matches!(bad.slices(&topology), Err(LabError::NoSuchHost(n)) if n == "n9"));
    }
}
