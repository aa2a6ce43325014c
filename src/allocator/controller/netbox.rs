//! The worker's NetBox steps around [`Worker::plan`] (issue "Netbox"); the NetBox calls
//! themselves are in [`crate::allocator::netbox`].
//!
//! For one Service: [`Worker::netbox_reserve`] asks the table what the Service needs from a
//! netbox group and reserves it in NetBox *before* the (synchronous) decision, which then
//! commits it like a pool address; [`Worker::netbox_settle`] afterwards ends the reservation,
//! gives back what the decision did not use, schedules a retry with backoff after a NetBox
//! failure, and checks addresses the Service already showed (restart, leader change) against
//! NetBox, with a Warning Event when NetBox does not record them for the Service.
//! Releases go through their own queue ([`Worker::netbox_release_loop`]), retried with backoff.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use k8s_openapi::api::core::v1::Service;
use kube::{Resource, runtime::events::EventType};

use super::{ServiceKey, ServiceRequest, Work, Worker, retry_failed};
use crate::{
    allocator::{
        netbox::{NetboxIpam, NetboxSettings, Release, Verdict, is_netbox_failure},
        table::Failure,
    },
    api::{NetboxSpec, contract::reasons},
    core::queue::WorkQueue,
};

/// What the worker keeps about NetBox.
pub(super) struct Link {
    pub(super) ipam: NetboxIpam,
    /// Addresses to give back to NetBox.
    pub(super) releases: WorkQueue<Release>,
    /// What NetBox said about addresses Services show: owned, or a mismatch (when, message).
    checks: Mutex<HashMap<(ServiceKey, IpAddr), Check>>,
}

#[derive(Clone, Debug)]
enum Check {
    Owned,
    Mismatch { at: Instant, message: String },
}

/// What [`Worker::netbox_reserve`] reserved.
pub(super) struct Reserved {
    spec: NetboxSpec,
    offered: Vec<IpAddr>,
}

impl Link {
    pub(super) fn new(client: kube::Client, namespace: &str, settings: NetboxSettings) -> Self {
        let releases = WorkQueue::with_backoff("netbox-releases", settings.retry);
        Self { ipam: NetboxIpam::new(client, namespace, settings), releases, checks: Mutex::default() }
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, HashMap<(ServiceKey, IpAddr), Check>> {
        self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what NetBox said about adopted addresses (a new lead checks them again).
    pub(super) fn forget_checks(&self) {
        self.checks().clear();
    }
}

impl Worker {
    /// Reserves in NetBox what `req` needs from a netbox group, and hands it to the table for
    /// the decision that follows.
    pub(super) async fn netbox_reserve(&self, req: &ServiceRequest) -> Option<Reserved> {
        let need = self.lock().table.netbox_need(req, &self.settings.namespace)?;
        let (offers, left) = self.netbox.ipam.reserve(&need, &req.key, |ip| self.lock().table.netbox_may_use(ip)).await;
        let offered: Vec<IpAddr> = offers.values().filter_map(|r| r.as_ref().ok().copied()).collect();
        {
            let mut state = self.lock();
            for (family, n) in left {
                state.table.set_netbox_available(&need.group, family, n);
            }
            state.table.offer(&req.key, offers);
        }
        Some(Reserved { spec: need.spec, offered })
    }

    /// After the decision: ends the reservation, gives back what was not used and what the
    /// table released, retries NetBox failures with backoff, and checks adopted addresses.
    pub(super) async fn netbox_settle(
        &self,
        svc: &Service,
        req: &ServiceRequest,
        reserved: Option<Reserved>,
        failure: Option<&Failure>,
    ) {
        let key = &req.key;
        let (holding, spec, failed_group_is_netbox) = {
            let state = self.lock();
            let holding = state.table.holding(key).cloned();
            let spec = holding.as_ref().and_then(|h| state.table.netbox_spec(&h.group).cloned());
            let failed_netbox =
                failure.and_then(|f| f.group.as_deref()).is_some_and(|g| state.table.netbox_spec(g).is_some());
            if let Some(r) = &reserved {
                for ip in &r.offered {
                    if holding.as_ref().is_some_and(|h| h.addresses.contains(ip)) {
                        self.netbox.checks().insert((key.clone(), *ip), Check::Owned);
                    } else {
                        self.netbox.releases.add(Release::new(&r.spec, *ip, vec![key.clone()]));
                    }
                }
            }
            (holding, spec, failed_netbox)
        };
        for ip in reserved.iter().flat_map(|r| r.offered.iter()) {
            self.netbox.ipam.settled(*ip);
        }
        self.netbox_flush();
        match failure {
            Some(f) if is_netbox_failure(f, failed_group_is_netbox) => {
                let delay = self.netbox.ipam.next_retry(key);
                tracing::info!(service = %key, ?delay, message = %f.message, "NetBox allocation failed; will retry");
                self.queue.add_after(Work::Service(key.clone()), delay);
            }
            Some(_) => {}
            None => self.netbox.ipam.forget_failures(key),
        }
        let (Some(holding), Some(spec)) = (holding, spec) else { return };
        for ip in holding.addresses {
            let due = match self.netbox.checks().get(&(key.clone(), ip)) {
                None => true,
                Some(Check::Owned) => false,
                Some(Check::Mismatch { at, .. }) => at.elapsed() >= self.netbox.ipam.settings().recheck,
            };
            if due {
                self.netbox_check(svc, key, &spec, ip).await;
            }
        }
    }

    /// Asks NetBox whether it records `ip` for `key`; a mismatch is a Warning Event (once per
    /// message) and is asked again later; the address is kept either way.
    async fn netbox_check(&self, svc: &Service, key: &ServiceKey, spec: &NetboxSpec, ip: IpAddr) {
        let sharers = self.lock().table.users_of(ip);
        match self.netbox.ipam.verify(spec, ip, key, &sharers).await {
            Ok(Verdict::Owned) => {
                let before = self.netbox.checks().insert((key.clone(), ip), Check::Owned);
                if matches!(before, Some(Check::Mismatch { .. })) {
                    tracing::info!(service = %key, %ip, "NetBox now records the address for the Service");
                }
            }
            Ok(Verdict::Mismatch(message)) => {
                let recheck = self.netbox.ipam.settings().recheck;
                let before = self
                    .netbox
                    .checks()
                    .insert((key.clone(), ip), Check::Mismatch { at: Instant::now(), message: message.clone() });
                tracing::warn!(service = %key, %ip, %message, "NetBox does not record this address for the Service");
                if !matches!(before, Some(Check::Mismatch { message: m, .. }) if m == message) {
                    self.publish_in_background(
                        svc.object_ref(&()),
                        vec![(EventType::Warning, reasons::CONFIGURATION_WARNING, message)],
                    );
                }
                self.queue.add_after(Work::Service(key.clone()), recheck);
            }
            Err(error) => {
                let delay = self.netbox.ipam.next_retry(key);
                tracing::warn!(service = %key, %ip, %error, ?delay, "cannot check the address in NetBox; the Service keeps it, will retry");
                self.queue.add_after(Work::Service(key.clone()), delay);
            }
        }
    }

    /// Queues the NetBox addresses the table released for giving back.
    pub(super) fn netbox_flush(&self) {
        let released = self.lock().table.take_netbox_releases();
        for r in released {
            for owner in &r.owners {
                self.netbox.checks().remove(&(owner.clone(), r.ip));
            }
            match r.spec {
                Some(spec) => self.netbox.releases.add(Release::new(&spec, r.ip, r.owners)),
                None => {
                    tracing::warn!(ip = %r.ip, group = %r.group, "cannot give the address back to NetBox: the group's NetBox is unknown")
                }
            }
        }
    }

    /// Gives addresses back to NetBox while this replica leads; a failure is retried with
    /// backoff. Each release re-queues the Services waiting for an address.
    pub(super) async fn netbox_release_loop(self: Arc<Self>) {
        while let Some(claim) = self.netbox.releases.get().await {
            if !self.gate.may_write() {
                claim.done();
                continue;
            }
            let release = claim.item().clone();
            match self.netbox.ipam.release(&release, |ip| self.lock().table.is_held(ip)).await {
                Ok(true) => {
                    claim.succeeded();
                    retry_failed(&mut self.lock(), &self.queue);
                }
                Ok(false) => {
                    claim.retry_with_backoff();
                }
                Err(error) => {
                    let delay = claim.retry_with_backoff();
                    tracing::warn!(ip = %release.ip, owner = %release.last_owner(), %error, ?delay, "cannot give the address back to NetBox; will retry");
                }
            }
        }
    }
}
