//! The cluster as PureLB's own pure functions see it, built from a [`Snapshot`]: the validated
//! ServiceGroups ([`GroupSet::build`]), the allocation table rebuilt from the Services exactly as
//! the allocator rebuilds it after a restart ([`Allocator::adopt`], oldest Service first), and
//! the election's members ([`Members::from_leases`]). `status` and `explain` read only this, so
//! their answers cannot drift from what the allocator and agents decide.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

use super::snapshot::Snapshot;
use crate::{
    allocator::{
        groups::GroupSet,
        request::{ServiceKey, ServiceRequest},
        table::Allocator,
    },
    api::contract,
    core::election::Members,
};

/// The class and default-announcer settings of the allocator being inspected.
#[derive(Clone, Debug)]
pub struct Handling {
    /// `--lb-class` of the allocator.
    pub lb_class: String,
    /// `--default-announcer` of the allocator.
    pub default_announcer: bool,
}

impl Default for Handling {
    fn default() -> Self {
        Self { lb_class: contract::DEFAULT_LB_CLASS.to_owned(), default_announcer: true }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Model {
    /// The ServiceGroups, validated as the allocator validates them.
    pub groups: GroupSet,
    /// The allocation table.
    pub table: Allocator,
    /// Live node agents.
    pub members: Members,
    /// Every LoadBalancer Service's request, by key.
    pub requests: BTreeMap<ServiceKey, ServiceRequest>,
    /// Services that hold addresses the table could not give them back (two Services claiming
    /// one address, or an address outside every range): key and why.
    pub unadoptable: BTreeMap<ServiceKey, String>,
}

impl Model {
    /// Builds the model.
    #[must_use]
    pub fn build(snapshot: &Snapshot, handling: &Handling) -> Self {
        let groups = GroupSet::build(&snapshot.groups, &snapshot.namespace);
        let mut table = Allocator::new(groups.clone());
        let mut services: Vec<&Service> = snapshot.services.iter().collect();
        services.sort_by_key(|s| crate::allocator::request::age_key(s));
        let mut requests = BTreeMap::new();
        let mut unadoptable = BTreeMap::new();
        for svc in services {
            let req = ServiceRequest::from_service(svc, &handling.lb_class, handling.default_announcer);
            if let Err(failure) = table.adopt(&req) {
                unadoptable.insert(req.key.clone(), failure.message);
            }
            requests.insert(req.key.clone(), req);
        }
        let members = Members::from_leases(&snapshot.leases, snapshot.now());
        Self { groups, table, members, requests, unadoptable }
    }

    /// Whether PureLB handles (or still holds addresses for) this Service.
    #[must_use]
    pub fn is_ours(&self, key: &ServiceKey) -> bool {
        self.requests.get(key).is_some_and(|r| r.handled || r.allocated_by_us)
    }
}
