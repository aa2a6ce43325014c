//! The allocator's NetBox side (issue "Netbox"): reserving an address for a Service, giving
//! it back, and checking an adopted address, with the NetBox client of [`crate::netbox`].
//! Decisions about which Service gets what stay in [`super::table`]; this module only talks to
//! NetBox and turns its answers into [`Failure`]s with messages that say what to fix.
//!
//! The record (`docs/netbox.md`): the operator reserves addresses for a tenant (status
//! `reserved`); PureLB takes one by patching it to `active` with the owner in `description`
//! (`purelb:<namespace>/<service>`), and gives it back by patching it to `reserved` with an
//! empty description.
//!
//! Entry points: [`NetboxIpam::reserve`], [`NetboxIpam::release`], [`NetboxIpam::verify`].

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use super::{
    request::{FamilyPolicy, ServiceKey},
    table::{FailReason, Failure, NetboxNeed, NetboxOffers},
};
use crate::{
    api::NetboxSpec,
    core::{ipam::Family, queue::Backoff},
    netbox::{Client, Filter, Http, IpAddressObject, IpAddressPatch, NetboxError, TokenSource, owner_description},
};

/// `status` of an address reserved for PureLB.
pub const STATUS_RESERVED: &str = "reserved";
/// `status` of an address PureLB gave to a Service.
pub const STATUS_ACTIVE: &str = "active";

/// How the allocator talks to NetBox.
#[derive(Clone, Debug)]
pub struct NetboxSettings {
    /// Directory where the chart mounts the token Secret (`--netbox-token-dir`).
    pub token_dir: PathBuf,
    /// Name of the Secret mounted there (`--netbox-token-secret`); none: always read through the API.
    pub token_secret: Option<String>,
    /// Bound of every NetBox call (`--netbox-timeout`).
    pub timeout: Duration,
    /// Retry policy after a NetBox failure: `base·2^n` up to `max`.
    pub retry: Backoff,
    /// When an adopted address does not match NetBox, how long until NetBox is asked again.
    pub recheck: Duration,
    /// Page size asked of NetBox (tests use small pages).
    pub page_size: u32,
    /// How long a token read through the API is reused (NetBox refusing it forgets it).
    pub token_cache: Duration,
}

impl Default for NetboxSettings {
    fn default() -> Self {
        Self {
            token_dir: PathBuf::from("/etc/purelb/netbox"),
            token_secret: None,
            timeout: Duration::from_secs(10),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            recheck: Duration::from_secs(300),
            page_size: 200,
            token_cache: Duration::from_secs(30),
        }
    }
}

/// A NetBox address to give back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Release {
    /// The group's NetBox.
    pub url: String,
    /// The group's tenant slug.
    pub tenant: String,
    /// The token Secret.
    pub secret: (String, String),
    /// The address.
    pub ip: IpAddr,
    /// The Services that used it (the last first); NetBox must record one of them as owner.
    pub owners: Vec<ServiceKey>,
}

impl Release {
    /// A release of `ip`, used by `owners` (the last first), in the NetBox of `spec`.
    #[must_use]
    pub fn new(spec: &NetboxSpec, ip: IpAddr, owners: Vec<ServiceKey>) -> Self {
        Self {
            url: spec.url.clone(),
            tenant: spec.tenant.clone(),
            secret: (spec.token_secret_ref.name.clone(), spec.token_secret_ref.key.clone()),
            ip,
            owners,
        }
    }

    /// The Service that held it last, for messages.
    #[must_use]
    pub fn last_owner(&self) -> String {
        self.owners.first().map(ToString::to_string).unwrap_or_default()
    }

    fn spec(&self) -> NetboxSpec {
        NetboxSpec {
            url: self.url.clone(),
            tenant: self.tenant.clone(),
            aggregation: None,
            token_secret_ref: crate::api::SecretKeyRef { name: self.secret.0.clone(), key: self.secret.1.clone() },
            bgp: None,
        }
    }
}

/// What NetBox says about an address a Service shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Active, in the group's tenant, owned by the Service (or a Service sharing it).
    Owned,
    /// Anything else; the message says what NetBox shows and what to do.
    Mismatch(String),
}

/// The owner description of `key`.
#[must_use]
pub fn owner_of(key: &ServiceKey) -> String {
    owner_description(&key.namespace, &key.name)
}

/// Judges NetBox's records of `ip` (every object with that address, any VRF or tenant) for a
/// Service that shows it; `owners` are the descriptions of the Services using it (one for an
/// address that is not shared, and it comes first).
#[must_use]
pub fn judge(objects: &[IpAddressObject], ip: IpAddr, tenant: &str, owners: &[String]) -> Verdict {
    let mine = |o: &&IpAddressObject| o.ip == ip && o.tenant_slug() == Some(tenant);
    if objects.iter().filter(mine).any(|o| o.status == STATUS_ACTIVE && owners.contains(&o.description)) {
        return Verdict::Owned;
    }
    let owner = owners.first().map(String::as_str).unwrap_or_default();
    let shown = match objects.iter().find(mine).or_else(|| objects.iter().find(|o| o.ip == ip)) {
        None => format!("NetBox has no IP address {ip}"),
        Some(o) => format!(
            "NetBox shows {ip} with status {}, tenant {}, description {:?}",
            clean(&o.status),
            o.tenant_slug().map_or_else(|| "none".to_owned(), clean),
            clean(&o.description)
        ),
    };
    Verdict::Mismatch(format!(
        "address {ip} is not recorded for this Service in NetBox ({shown}; expected status active, tenant {tenant}, description {owner:?}): PureLB keeps the address and changes nothing in NetBox; correct the record in NetBox, or remove the address from the Service"
    ))
}

fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// Turns a NetBox error into the failure a Service reports.
fn failure(group: &str, spec: &NetboxSpec, error: &NetboxError) -> Failure {
    let hint = match error {
        NetboxError::Auth { .. } => {
            format!("; check the token in Secret {} key {}", spec.token_secret_ref.name, spec.token_secret_ref.key)
        }
        NetboxError::BadRequest { .. } => {
            format!("; check spec.netbox.tenant ({:?} must be a tenant's slug) of ServiceGroup {group}", spec.tenant)
        }
        e if e.is_transient() => "; PureLB retries with backoff".to_owned(),
        _ => String::new(),
    };
    Failure {
        reason: FailReason::Netbox,
        message: format!("ServiceGroup {group}: {error}{hint}"),
        group: Some(group.to_owned()),
    }
}

/// NetBox had no reserved address left.
fn exhausted(group: &str, spec: &NetboxSpec, url: &str, family: Family, lost: usize) -> Failure {
    let lost = if lost > 0 { format!(" ({lost} were taken by someone else meanwhile)") } else { String::new() };
    Failure {
        reason: FailReason::PoolFull,
        message: format!(
            "ServiceGroup {group}: NetBox at {url} has no reserved {family} address left for tenant {}{lost}: reserve more addresses for the tenant in NetBox (status Reserved), or release one",
            spec.tenant
        ),
        group: Some(group.to_owned()),
    }
}

/// Whether a failure is one of NetBox's (retried with backoff: NetBox changes without telling).
#[must_use]
pub fn is_netbox_failure(failure: &Failure, netbox_group: bool) -> bool {
    failure.reason == FailReason::Netbox || (netbox_group && failure.reason == FailReason::PoolFull)
}

/// Outcome of taking one candidate.
enum Take {
    Won,
    Lost,
}

/// The allocator's link to NetBox: clients, the token source, and what is in flight.
pub struct NetboxIpam {
    settings: NetboxSettings,
    http: OnceLock<Http>,
    tokens: TokenSource,
    /// Addresses being reserved or released right now (never two operations on one address).
    in_flight: Mutex<HashSet<IpAddr>>,
    /// Failures in a row per Service, for the retry backoff.
    failures: Mutex<HashMap<ServiceKey, u32>>,
}

impl std::fmt::Debug for NetboxIpam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetboxIpam").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Removes the in-flight mark of an address when dropped.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<IpAddr>>,
    ip: IpAddr,
}

impl InFlight<'_> {
    /// Keeps the mark after this value is gone (until [`NetboxIpam::settled`]).
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.ip);
    }
}

impl NetboxIpam {
    /// A link reading token Secrets of `namespace` through `client`.
    #[must_use]
    pub fn new(client: kube::Client, namespace: &str, settings: NetboxSettings) -> Self {
        let tokens = TokenSource::new(
            client,
            namespace,
            settings.token_dir.clone(),
            settings.token_secret.clone(),
            settings.timeout,
        )
        .cache_for(settings.token_cache);
        Self { settings, http: OnceLock::new(), tokens, in_flight: Mutex::default(), failures: Mutex::default() }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &NetboxSettings {
        &self.settings
    }

    /// Marks `ip` in flight; `None` when it already is.
    fn claim(&self, ip: IpAddr) -> Option<InFlight<'_>> {
        let fresh = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ip);
        // Built only when the mark is ours: dropping one removes the mark.
        if fresh { Some(InFlight { set: &self.in_flight, ip }) } else { None }
    }

    /// Whether `ip` is being reserved or released right now.
    #[must_use]
    pub fn in_flight(&self, ip: IpAddr) -> bool {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&ip)
    }

    async fn client(&self, spec: &NetboxSpec) -> Result<Client, NetboxError> {
        let token = self.tokens.token(&spec.token_secret_ref).await?;
        let http = self.http.get_or_init(|| Http::new(self.settings.timeout));
        Ok(Client::new(http, &spec.url, token, self.settings.timeout)?.with_page_size(self.settings.page_size))
    }

    /// After NetBox refused the token, reads it again (elsewhere) next time.
    async fn on_error(&self, spec: &NetboxSpec, error: &NetboxError) {
        if error.is_auth() {
            self.tokens.invalidate(&spec.token_secret_ref).await;
        }
    }

    /// The delay before retrying `key` after another NetBox failure.
    pub fn next_retry(&self, key: &ServiceKey) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.clone()).or_default();
        let delay = self.settings.retry.delay_for(*n);
        *n = n.saturating_add(1);
        delay
    }

    /// `key` needs no NetBox retry any more.
    pub fn forget_failures(&self, key: &ServiceKey) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }

    /// Reserves in NetBox what `need` asks for `owner`: per family, an address now `active`
    /// with the owner's description, or the failure to report. `may_use` says whether an
    /// address is free for PureLB (the allocation table's view). Also returns how many reserved
    /// addresses NetBox had left per family.
    ///
    /// Addresses in the result stay marked in flight until [`Self::settled`] is called.
    pub async fn reserve(
        &self,
        need: &NetboxNeed,
        owner: &ServiceKey,
        may_use: impl Fn(IpAddr) -> bool,
    ) -> (NetboxOffers, Vec<(Family, u64)>) {
        let mut offers = NetboxOffers::new();
        let mut left = Vec::new();
        let client = match self.client(&need.spec).await {
            Ok(c) => c,
            Err(e) => {
                self.on_error(&need.spec, &e).await;
                if let Some(f) = need.families.first() {
                    offers.insert(*f, Err(failure(&need.group, &need.spec, &e)));
                }
                return (offers, left);
            }
        };
        if need.policy == FamilyPolicy::RequireDualStack && need.families.len() > 1 {
            // All or nothing: do not take one family's address while the other has none left.
            for family in &need.families {
                let filter = Filter {
                    tenant: Some(need.spec.tenant.clone()),
                    status: Some(STATUS_RESERVED.to_owned()),
                    family: Some(*family),
                    ..Filter::default()
                };
                match client.list_first(&filter).await {
                    Ok(page) if page.count == 0 => {
                        offers.insert(*family, Err(exhausted(&need.group, &need.spec, client.url(), *family, 0)));
                        left.push((*family, 0));
                        return (offers, left);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.on_error(&need.spec, &e).await;
                        offers.insert(*family, Err(failure(&need.group, &need.spec, &e)));
                        return (offers, left);
                    }
                }
            }
        }
        for family in &need.families {
            let result = self.reserve_one(&client, need, *family, owner, &may_use).await;
            let failed = result.is_err();
            match result {
                Ok((ip, available)) => {
                    offers.insert(*family, Ok(ip));
                    left.extend(available.map(|n| (*family, n)));
                }
                Err(Ok(f)) => {
                    offers.insert(*family, Err(f));
                    left.push((*family, 0));
                }
                Err(Err(e)) => {
                    self.on_error(&need.spec, &e).await;
                    tracing::warn!(service = %owner, %family, error = %e, "cannot reserve an address in NetBox");
                    offers.insert(*family, Err(failure(&need.group, &need.spec, &e)));
                }
            }
            if failed && need.policy != FamilyPolicy::PreferDualStack {
                break;
            }
        }
        (offers, left)
    }

    /// One family: an address already recorded for `owner` (a reservation whose answer was
    /// lost, or a crash before the Service showed it), else the first reserved one that
    /// `may_use` allows and nobody takes meanwhile. `Err(Ok(_))` is "none left".
    async fn reserve_one(
        &self,
        client: &Client,
        need: &NetboxNeed,
        family: Family,
        owner: &ServiceKey,
        may_use: &impl Fn(IpAddr) -> bool,
    ) -> Result<(IpAddr, Option<u64>), Result<Failure, NetboxError>> {
        let description = owner_of(owner);
        let tenant = need.spec.tenant.as_str();
        let mine = client
            .list_all(&Filter {
                tenant: Some(tenant.to_owned()),
                status: Some(STATUS_ACTIVE.to_owned()),
                family: Some(family),
                description: Some(description.clone()),
                address: None,
            })
            .await
            .map_err(Err)?;
        for o in &mine {
            if Family::of(o.ip) == family
                && o.description == description
                && o.tenant_slug() == Some(tenant)
                && may_use(o.ip)
                && let Some(mark) = self.claim(o.ip)
            {
                mark.keep();
                tracing::info!(service = %owner, ip = %o.ip, "NetBox already records this address for the Service; taking it");
                return Ok((o.ip, None));
            }
        }
        let filter = Filter {
            tenant: Some(tenant.to_owned()),
            status: Some(STATUS_RESERVED.to_owned()),
            family: Some(family),
            description: None,
            address: None,
        };
        let mut page = client.list_first(&filter).await.map_err(Err)?;
        let available = page.count;
        let mut lost = 0usize;
        loop {
            for o in &page.results {
                if Family::of(o.ip) != family || o.status != STATUS_RESERVED || o.tenant_slug() != Some(tenant) {
                    continue;
                }
                if !may_use(o.ip) {
                    continue;
                }
                let Some(mark) = self.claim(o.ip) else { continue };
                match self.take(client, o, tenant, &description).await.map_err(Err)? {
                    Take::Won => {
                        mark.keep();
                        tracing::info!(service = %owner, ip = %o.ip, netbox_id = o.id, "reserved in NetBox");
                        return Ok((o.ip, Some(available.saturating_sub(1 + lost as u64))));
                    }
                    Take::Lost => {
                        lost += 1;
                        tracing::info!(service = %owner, ip = %o.ip, "someone else took this NetBox address meanwhile; trying the next");
                    }
                }
            }
            match client.list_next(&page).await.map_err(Err)? {
                Some(next) => page = next,
                None => break,
            }
        }
        Err(Ok(exhausted(&need.group, &need.spec, client.url(), family, lost)))
    }

    /// Takes one reserved address: re-read it, patch it to active with our description (with
    /// `If-Match` where NetBox supports it), and check what NetBox saved.
    async fn take(
        &self,
        client: &Client,
        candidate: &IpAddressObject,
        tenant: &str,
        description: &str,
    ) -> Result<Take, NetboxError> {
        let fresh = match client.get(candidate.id).await {
            Ok(o) => o,
            Err(NetboxError::NotFound { .. }) => return Ok(Take::Lost),
            Err(e) => return Err(e),
        };
        if fresh.ip != candidate.ip || fresh.status != STATUS_RESERVED || fresh.tenant_slug() != Some(tenant) {
            return Ok(Take::Lost);
        }
        let patch = IpAddressPatch { status: STATUS_ACTIVE.to_owned(), description: description.to_owned() };
        let saved = match client.patch(candidate.id, &patch, fresh.etag.as_deref()).await {
            Ok(o) => o,
            Err(NetboxError::PreconditionFailed { .. } | NetboxError::NotFound { .. }) => return Ok(Take::Lost),
            Err(e) => return Err(e),
        };
        if saved.ip == candidate.ip && saved.status == STATUS_ACTIVE && saved.description == description {
            Ok(Take::Won)
        } else {
            // NetBox answers with the state after the write: another writer won. Theirs now.
            Ok(Take::Lost)
        }
    }

    /// The reservation of `ip` is over (the table holds it now, or it is being given back).
    pub fn settled(&self, ip: IpAddr) {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&ip);
    }

    /// Gives an address back: `reserved` with an empty description, if NetBox still records it
    /// for its Services (`active`, the group's tenant, one of them as owner). `still_held` is
    /// asked while the address is marked in flight, so a Service that took it again keeps it.
    /// Returns `false` when the address is being reserved right now (try again later).
    ///
    /// # Errors
    ///
    /// NetBox could not be asked (retry later).
    pub async fn release(&self, release: &Release, still_held: impl Fn(IpAddr) -> bool) -> Result<bool, NetboxError> {
        let spec = release.spec();
        let Some(_mark) = self.claim(release.ip) else { return Ok(false) };
        if still_held(release.ip) {
            return Ok(true);
        }
        let result = self.release_marked(release, &spec).await;
        if let Err(e) = &result {
            self.on_error(&spec, e).await;
        }
        result.map(|()| true)
    }

    async fn release_marked(&self, release: &Release, spec: &NetboxSpec) -> Result<(), NetboxError> {
        let client = self.client(spec).await?;
        let owners: Vec<String> = release.owners.iter().map(owner_of).collect();
        let ours = |o: &IpAddressObject| {
            o.ip == release.ip
                && o.status == STATUS_ACTIVE
                && o.tenant_slug() == Some(release.tenant.as_str())
                && owners.contains(&o.description)
        };
        let filter = Filter { address: Some(release.ip), tenant: Some(release.tenant.clone()), ..Filter::default() };
        for o in client.list_all(&filter).await? {
            if !ours(&o) {
                tracing::info!(ip = %release.ip, description = %o.description, status = %o.status, "NetBox does not record the address for its last Services; left as it is");
                continue;
            }
            let fresh = client.get(o.id).await?;
            if !ours(&fresh) {
                continue;
            }
            let patch = IpAddressPatch { status: STATUS_RESERVED.to_owned(), description: String::new() };
            match client.patch(o.id, &patch, fresh.etag.as_deref()).await {
                Ok(_) => {
                    tracing::info!(ip = %release.ip, owner = %release.last_owner(), url = %client.url(), "given back to NetBox (reserved)");
                }
                Err(NetboxError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What NetBox records for `ip`, which `owner` shows in its status and `sharers` share.
    ///
    /// # Errors
    ///
    /// NetBox could not be asked.
    pub async fn verify(
        &self,
        spec: &NetboxSpec,
        ip: IpAddr,
        owner: &ServiceKey,
        sharers: &[ServiceKey],
    ) -> Result<Verdict, NetboxError> {
        let mut owners = vec![owner_of(owner)];
        owners.extend(sharers.iter().filter(|k| *k != owner).map(owner_of));
        let result = async {
            let client = self.client(spec).await?;
            let objects = client.list_all(&Filter { address: Some(ip), ..Filter::default() }).await?;
            Ok(judge(&objects, ip, &spec.tenant, &owners))
        }
        .await;
        if let Err(e) = &result {
            self.on_error(spec, e).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::netbox::TenantRef;

    fn obj(ip: &str, status: &str, tenant: Option<&str>, description: &str) -> IpAddressObject {
        IpAddressObject {
            id: 1,
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            status: status.to_owned(),
            tenant: tenant.map(|t| TenantRef { id: 1, slug: t.to_owned(), name: t.to_owned() }),
            description: description.to_owned(),
            etag: None,
        }
    }

    #[test]
    fn adopted_addresses_are_judged_by_owner_status_and_tenant() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let owner = vec![owner_of(&ServiceKey { namespace: "web".into(), name: "a".into() })];
        assert_eq!(owner, ["purelb:web/a"]);
        let ok = obj("192.0.2.10", "active", Some("k8s"), "purelb:web/a");
        assert_eq!(judge(std::slice::from_ref(&ok), ip, "k8s", &owner), Verdict::Owned);
        let other_vrf = obj("192.0.2.10", "active", Some("other"), "x");
        assert_eq!(judge(&[other_vrf, ok], ip, "k8s", &owner), Verdict::Owned);
        // A Service sharing the address sees the owner's record as fine.
        let shared = obj("192.0.2.10", "active", Some("k8s"), "purelb:web/b");
        let sharers = vec!["purelb:web/a".to_owned(), "purelb:web/b".to_owned()];
        assert_eq!(judge(std::slice::from_ref(&shared), ip, "k8s", &sharers), Verdict::Owned);
        for (objects, want) in [
            (vec![], "NetBox has no IP address 192.0.2.10"),
            (vec![obj("192.0.2.10", "reserved", Some("k8s"), "")], "status reserved, tenant k8s, description \"\""),
            (vec![obj("192.0.2.10", "active", Some("k8s"), "purelb:web/b")], "description \"purelb:web/b\""),
            (vec![obj("192.0.2.10", "active", None, "purelb:web/a")], "tenant none"),
            (vec![obj("192.0.2.10", "active", Some("k8s"), "evil\u{7}\n")], "description \"evil\""),
        ] {
            let Verdict::Mismatch(m) = judge(&objects, ip, "k8s", &owner) else { panic!("{want}: owned") };
            assert!(m.contains(want), "{want}: {m}");
            assert!(m.contains("expected status active, tenant k8s, description \"purelb:web/a\""), "{m}");
            assert!(m.contains("PureLB keeps the address"), "{m}");
        }
    }

    #[test]
    fn failures_say_what_to_fix() {
        let spec = NetboxSpec {
            url: "https://nb".into(),
            tenant: "k8s".into(),
            aggregation: None,
            token_secret_ref: crate::api::SecretKeyRef { name: "nb-token".into(), key: "token".into() },
            bgp: None,
        };
        let auth = NetboxError::Auth { url: "https://nb".into(), status: 403, detail: "Invalid token".into() };
        let f = failure("g", &spec, &auth);
        assert_eq!(f.reason, FailReason::Netbox);
        assert!(
            f.message.contains("refused the API token") && f.message.contains("Secret nb-token key token"),
            "{}",
            f.message
        );
        let down = NetboxError::Unreachable { url: "https://nb".into(), detail: "connection refused".into() };
        assert!(failure("g", &spec, &down).message.ends_with("PureLB retries with backoff"));
        let bad = NetboxError::BadRequest { url: "https://nb".into(), detail: "tenant: Select a valid choice".into() };
        assert!(failure("g", &spec, &bad).message.contains("spec.netbox.tenant"));
        let e = exhausted("g", &spec, "https://nb", Family::V6, 1);
        assert_eq!(e.reason, FailReason::PoolFull);
        assert!(e.message.contains("no reserved IPv6 address left for tenant k8s (1 were taken"), "{}", e.message);
        assert!(is_netbox_failure(&e, true) && !is_netbox_failure(&e, false));
    }

    #[test]
    fn releases_name_every_user() {
        let spec = NetboxSpec {
            url: "https://nb".into(),
            tenant: "k8s".into(),
            aggregation: Some("/32".into()),
            token_secret_ref: crate::api::SecretKeyRef { name: "nb-token".into(), key: "token".into() },
            bgp: None,
        };
        let r = Release::new(
            &spec,
            "192.0.2.1".parse().unwrap(),
            vec![ServiceKey::new("web", "b"), ServiceKey::new("web", "a")],
        );
        assert_eq!(r.last_owner(), "web/b");
        let back = r.spec();
        assert_eq!(
            (back.url.as_str(), back.tenant.as_str(), back.token_secret_ref),
            ("https://nb", "k8s", spec.token_secret_ref)
        );
    }
}
