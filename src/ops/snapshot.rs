//! What the operator commands read from the cluster, in one snapshot: read once (list calls
//! only, so read-only credentials suffice: `manifests/rbac-viewer.yaml`), then examined by pure
//! functions ([`super::status`], [`super::explain`], [`super::validate`]).

use std::path::PathBuf;

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::api::{BGPPeer, LBNodeAgent, ServiceGroup};

/// How to reach the cluster: kubectl's flags.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--kubeconfig` (else `$KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// `--context` (else the kubeconfig's current context).
    pub context: Option<String>,
}

/// Why the cluster could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No usable kubeconfig.
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),
    /// A list call was refused.
    #[error(
        "the API server refused to list {what} ({code} {reason}): the credentials need read access to PureLB's objects; apply manifests/rbac-viewer.yaml and bind it (docs/operations.md)"
    )]
    Forbidden {
        /// What was listed.
        what: String,
        /// HTTP status.
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// A PureLB resource type is unknown to the server.
    #[error(
        "the API server does not know {what}: PureLB's CRDs are not installed (helm install, or kubectl apply -f manifests/crds/purelb.yaml)"
    )]
    NoCrd {
        /// The resource.
        what: String,
    },
    /// Anything else.
    #[error("cannot list {what}: {source}")]
    Api {
        /// What was listed.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
}

/// A client for `target`, as kubectl would connect.
///
/// # Errors
///
/// No usable configuration.
pub async fn client(target: &Target) -> Result<Client, ReadError> {
    let options = KubeConfigOptions { context: target.context.clone(), ..KubeConfigOptions::default() };
    let config = match &target.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| ReadError::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| ReadError::Config(e.to_string()))?
        }
        None if target.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| ReadError::Config(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| ReadError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ReadError::Config(e.to_string()))
}

/// The objects the operator commands look at.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// PureLB's install namespace.
    pub namespace: String,
    /// When it was read (liveness of Leases is judged at this instant).
    pub now: Option<Timestamp>,
    /// LoadBalancer Services of every namespace.
    pub services: Vec<Service>,
    /// Leases of the install namespace (node Leases and the allocator's).
    pub leases: Vec<Lease>,
    /// ServiceGroups of the install namespace.
    pub groups: Vec<ServiceGroup>,
    /// LBNodeAgents of the install namespace.
    pub agents: Vec<LBNodeAgent>,
    /// BGPPeers of the install namespace.
    pub peers: Vec<BGPPeer>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// EndpointSlices (only those [`Snapshot::read`] was asked for).
    pub slices: Vec<EndpointSlice>,
}

fn classify(what: &str, error: kube::Error) -> ReadError {
    match &error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            ReadError::Forbidden { what: what.to_owned(), code: status.code, reason: status.reason.clone() }
        }
        kube::Error::Api(status) if status.code == 404 && what.contains("purelb.io") => {
            ReadError::NoCrd { what: what.to_owned() }
        }
        _ => ReadError::Api { what: what.to_owned(), source: error },
    }
}

async fn list<K>(api: Api<K>, what: &str) -> Result<Vec<K>, ReadError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default()).await.map(|l| l.items).map_err(|e| classify(what, e))
}

impl Snapshot {
    /// Reads the cluster (no EndpointSlices: [`Snapshot::read_slices`] reads those of one
    /// Service).
    ///
    /// # Errors
    ///
    /// A list call failed; the error says which and what to do.
    pub async fn read(client: &Client, namespace: &str) -> Result<Self, ReadError> {
        let services: Vec<Service> = list(Api::all(client.clone()), "services").await?;
        let services = services
            .into_iter()
            .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
            .collect();
        let leases = list(Api::namespaced(client.clone(), namespace), "leases.coordination.k8s.io").await?;
        let groups = list(Api::namespaced(client.clone(), namespace), "servicegroups.purelb.io").await?;
        let agents = list(Api::namespaced(client.clone(), namespace), "lbnodeagents.purelb.io").await?;
        let peers = list(Api::namespaced(client.clone(), namespace), "bgppeers.purelb.io").await?;
        let nodes = list(Api::all(client.clone()), "nodes").await?;
        Ok(Self {
            namespace: namespace.to_owned(),
            now: Some(Timestamp::now()),
            services,
            leases,
            groups,
            agents,
            peers,
            nodes,
            slices: Vec::new(),
        })
    }

    /// The EndpointSlices of one Service.
    ///
    /// # Errors
    ///
    /// The list call failed.
    pub async fn read_slices(
        client: &Client,
        key: &crate::core::endpoints::ServiceKey,
    ) -> Result<Vec<EndpointSlice>, ReadError> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.namespace);
        api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={}", key.name)))
            .await
            .map(|l| l.items)
            .map_err(|e| classify("endpointslices.discovery.k8s.io", e))
    }

    /// The instant of the snapshot.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now.unwrap_or_else(Timestamp::now)
    }
}
