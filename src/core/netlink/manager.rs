//! [`AddressManager`]: the rtnetlink request connection and every action on links and
//! addresses. Decisions are delegated to the pure functions of `model`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, LinkDummy, LinkUnspec,
    packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::AddressMessage,
        link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkMessage},
        route::{RouteProtocol, RouteType},
    },
};
use tokio::task::JoinHandle;
use tracing::{debug, info, instrument, warn};

use super::{
    AddressWatch, KernelError, NetlinkError, WatchConfig,
    model::{
        Address, AddressSnapshot, AddressSpec, Link, LinkRef, MarkSupport, address_from_message, address_message,
        bare_address_message, choose_default_interface, default_routes_from, interface_for, link_from_message,
        route_dump_message, validate_link_name,
    },
};
use crate::core::ipam::Family;

/// How often a dump is retried when the kernel says it was interrupted by a change.
const DUMP_ATTEMPTS: usize = 3;

/// A link [`AddressManager::ensure_link`] made sure of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsuredLink {
    /// Kernel index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Link kind (`dummy`, `bridge`, ...), when the kernel reports one.
    pub kind: Option<String>,
    /// Whether this call created it.
    pub created: bool,
}

/// What [`AddressManager::add_or_replace`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// The address was not there and was added.
    Added,
    /// Our address was there; its flags, lifetimes and mark were rewritten.
    Replaced,
}

/// What [`AddressManager::delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The address was removed.
    Removed,
    /// The address (or its interface) was not there; nothing to do.
    Absent,
}

/// The address manager: one rtnetlink request connection (with `NETLINK_GET_STRICT_CHK`, so
/// dumps are filtered by the kernel) running as a task on the Tokio runtime it was created
/// on. The task stops when the manager is dropped. Share it behind an `Arc`.
#[derive(Debug)]
pub struct AddressManager {
    handle: Handle,
    connection: JoinHandle<()>,
    marks_stored: AtomicBool,
    /// The kernel runs one dump per socket at a time (a second one gets `EBUSY`).
    dump_lock: tokio::sync::Mutex<()>,
}

impl Drop for AddressManager {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl AddressManager {
    /// Opens the netlink route socket and spawns its connection on the current Tokio runtime
    /// (which must have IO enabled). Whether the kernel stores the ownership mark is detected
    /// from its release ([`MarkSupport::detect`]) and learnt from what dumps show.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::NoRuntime`] outside a Tokio runtime, [`NetlinkError::Connect`] when
    /// the socket cannot be opened.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection_with_strict_check().map_err(NetlinkError::Connect)?;
        let connection = runtime.spawn(connection);
        let marks_stored = AtomicBool::new(MarkSupport::detect() == MarkSupport::Stored);
        Ok(Self { handle, connection, marks_stored, dump_lock: tokio::sync::Mutex::new(()) })
    }

    /// Whether the kernel stores the ownership mark, as far as the manager knows.
    #[must_use]
    pub fn mark_support(&self) -> MarkSupport {
        if self.marks_stored.load(Ordering::Relaxed) { MarkSupport::Stored } else { MarkSupport::NotStored }
    }

    fn learn_marks(&self, addresses: &[Address]) {
        if addresses.iter().any(|a| a.protocol.is_some()) {
            self.marks_stored.store(true, Ordering::Relaxed);
        }
    }

    /// Subscribes to address and link notifications (see [`AddressWatch`]). Subscribe before
    /// reading the first snapshot so that no change falls in between.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::Subscribe`] or [`NetlinkError::NoRuntime`].
    pub fn watch(&self) -> Result<AddressWatch, NetlinkError> {
        AddressWatch::subscribe(WatchConfig::default())
    }

    /// Sends a dump request and collects the replies; retried when the kernel flags the dump
    /// as interrupted by a concurrent change (`NLM_F_DUMP_INTR`). Dumps are serialised.
    async fn dump(&self, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        let _one_at_a_time = self.dump_lock.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut message = NetlinkMessage::from(request.clone());
            message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut replies = self.handle.clone().request(message)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            while let Some(reply) = replies.next().await {
                interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Error(error) => {
                        if let Some(code) = error.code {
                            return Err(KernelError::from_code(code.get()));
                        }
                    }
                    _ => {}
                }
            }
            if !interrupted || attempt >= DUMP_ATTEMPTS {
                return Ok(out);
            }
            debug!(attempt, "netlink dump interrupted by a change, retrying");
        }
    }

    /// Every link.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::List`] when the kernel refuses the dump.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await
            .map_err(|kernel| NetlinkError::List { what: "links", kernel })?;
        let mut links: Vec<Link> = replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(message) => link_from_message(message),
                _ => None,
            })
            .collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// The address messages of one interface (`Some(index)`) or of all.
    async fn address_messages(&self, index: Option<u32>) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut request = AddressMessage::default();
        request.header.index = index.unwrap_or(0);
        let replies = self
            .dump(RouteNetlinkMessage::GetAddress(request))
            .await
            .map_err(|kernel| NetlinkError::List { what: "addresses", kernel })?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(message) => Some(message),
                _ => None,
            })
            .filter(|message| index.is_none_or(|i| message.header.index == i))
            .collect())
    }

    /// The addresses on one link.
    async fn addresses_on(&self, link: &Link) -> Result<Vec<Address>, NetlinkError> {
        let addresses: Vec<Address> = self
            .address_messages(Some(link.index))
            .await?
            .iter()
            .filter_map(|message| address_from_message(message, &link.name))
            .collect();
        self.learn_marks(&addresses);
        Ok(addresses)
    }

    /// Every link and every address, read together. This is the state level-triggered
    /// callers re-read after each [`AddressWatch::changed`].
    ///
    /// # Errors
    ///
    /// [`NetlinkError::List`] when the kernel refuses a dump.
    pub async fn snapshot(&self) -> Result<AddressSnapshot, NetlinkError> {
        let (links, messages) = futures::try_join!(self.links(), self.address_messages(None))?;
        let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let mut addresses: Vec<Address> = messages
            .iter()
            .filter_map(|message| {
                let name = names.get(&message.header.index).copied().unwrap_or_default();
                address_from_message(message, name)
            })
            .collect();
        addresses.sort_by_key(|a| (a.index, a.ip));
        self.learn_marks(&addresses);
        Ok(AddressSnapshot { links, addresses })
    }

    /// Every address on every interface.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::List`] when the kernel refuses a dump.
    pub async fn addresses(&self) -> Result<Vec<Address>, NetlinkError> {
        Ok(self.snapshot().await?.addresses)
    }

    /// The interface of the lowest-metric default route of `family` (main table) whose link is
    /// up with a carrier; `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::List`] when the kernel refuses a dump.
    pub async fn default_interface(&self, family: Family) -> Result<Option<Link>, NetlinkError> {
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(route_dump_message(family)))
            .await
            .map_err(|kernel| NetlinkError::List { what: "routes", kernel })?;
        let routes: Vec<_> = replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(message) => Some(default_routes_from(message)),
                _ => None,
            })
            .flatten()
            .collect();
        let links = self.links().await?;
        Ok(choose_default_interface(&routes, &links))
    }

    /// The interface whose subnet contains `ip`, with the subnet (see [`interface_for`]).
    ///
    /// # Errors
    ///
    /// [`NetlinkError::List`] when the kernel refuses a dump.
    pub async fn interface_for(&self, ip: IpAddr) -> Result<Option<super::InterfaceMatch>, NetlinkError> {
        Ok(interface_for(&self.snapshot().await?.addresses, ip))
    }

    /// The link named or numbered `link`; `None` when there is no such link. This is
    /// `if_nametoindex` over netlink.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::InvalidLinkName`] or [`NetlinkError::List`].
    pub async fn link(&self, link: &LinkRef) -> Result<Option<Link>, NetlinkError> {
        let request = match link {
            LinkRef::Name(name) => {
                validate_link_name(name)?;
                self.handle.link().get().match_name(name.clone())
            }
            LinkRef::Index(0) => return Ok(None),
            LinkRef::Index(index) => self.handle.link().get().match_index(*index),
        };
        match request.execute().try_next().await {
            Ok(message) => Ok(message.as_ref().and_then(link_from_message)),
            Err(error) => {
                let kernel = KernelError::from(error);
                if kernel.is(libc::ENODEV) { Ok(None) } else { Err(NetlinkError::List { what: "links", kernel }) }
            }
        }
    }

    async fn resolve(&self, link: &LinkRef) -> Result<Link, NetlinkError> {
        self.link(link).await?.ok_or_else(|| NetlinkError::LinkNotFound { link: link.to_string() })
    }

    async fn set_up(&self, link: &Link) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|e| NetlinkError::SetLinkUp { name: link.name.clone(), kernel: e.into() })
    }

    /// Makes sure a link named `name` exists and is up: an existing link of any kind is used
    /// as it is (only set up); an absent one is created as a dummy link and marked as created
    /// by PureLB (alias [`PURELB_LINK_ALIAS`](super::PURELB_LINK_ALIAS), see
    /// [`AddressManager::mark_created_link`]).
    ///
    /// # Errors
    ///
    /// [`NetlinkError::InvalidLinkName`]; [`NetlinkError::CreateLink`] when the link is absent
    /// and cannot be created (its message says what to do when the kernel has no dummy link
    /// type); [`NetlinkError::SetLinkUp`]; [`NetlinkError::List`].
    #[instrument(level = "debug", skip(self))]
    pub async fn ensure_link(&self, name: &str) -> Result<EnsuredLink, NetlinkError> {
        validate_link_name(name)?;
        let by_name = LinkRef::from(name);
        let mut created = false;
        let link = match self.link(&by_name).await? {
            Some(link) => link,
            None => {
                match self.handle.link().add(LinkDummy::new(name).up().build()).execute().await {
                    Ok(()) => {
                        created = true;
                        info!(link = name, "created dummy link");
                    }
                    // Someone else created it meanwhile: use theirs.
                    Err(error) if KernelError::from(error.clone()).is(libc::EEXIST) => {}
                    Err(error) => return Err(NetlinkError::create_link(name, error.into())),
                }
                let link = self.resolve(&by_name).await?;
                if created && let Err(error) = self.mark_created_link(&link).await {
                    warn!(link = name, %error, "created the link but cannot mark it as PureLB's; `purelb reconcile --all` will leave it");
                }
                link
            }
        };
        if !link.admin_up {
            self.set_up(&link).await?;
            info!(link = name, kind = link.kind.as_deref().unwrap_or("none"), "set link up");
        }
        Ok(EnsuredLink { index: link.index, name: link.name, kind: link.kind, created })
    }

    /// Marks `link` as created by PureLB: sets its alias to
    /// [`PURELB_LINK_ALIAS`](super::PURELB_LINK_ALIAS). [`AddressManager::ensure_link`] calls it
    /// on every link it creates; nothing else should (a marked link is one
    /// [`AddressManager::delete_created_link`] may delete).
    ///
    /// # Errors
    ///
    /// [`NetlinkError::MarkLink`] when the kernel refuses.
    pub async fn mark_created_link(&self, link: &Link) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).alias(super::PURELB_LINK_ALIAS).build())
            .execute()
            .await
            .map_err(|e| NetlinkError::MarkLink { name: link.name.clone(), kernel: e.into() })
    }

    /// Deletes `link` if PureLB created it ([`Link::is_created_by_purelb`], read from `link`,
    /// which must be recent). A link that is already gone is not an error.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::LinkNotCreated`] when the link does not carry PureLB's mark (nothing is
    /// deleted); [`NetlinkError::DeleteLink`] when the kernel refuses.
    #[instrument(level = "debug", skip(self, link), fields(link = %link.name))]
    pub async fn delete_created_link(&self, link: &Link) -> Result<DeleteOutcome, NetlinkError> {
        if !link.is_created_by_purelb() {
            return Err(NetlinkError::LinkNotCreated { name: link.name.clone() });
        }
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => {
                info!(link = %link.name, "deleted the link PureLB created");
                Ok(DeleteOutcome::Removed)
            }
            Err(error) => {
                let kernel = KernelError::from(error);
                if kernel.is(libc::ENODEV) {
                    Ok(DeleteOutcome::Absent)
                } else {
                    Err(NetlinkError::DeleteLink { name: link.name.clone(), kernel })
                }
            }
        }
    }

    async fn send_address(&self, message: AddressMessage, replace: bool) -> Result<(), KernelError> {
        // The request is rebuilt from `message`; index, address and prefix are placeholders.
        let mut request = self.handle.address().add(0, IpAddr::from([0, 0, 0, 0]), 0);
        *request.message_mut() = message;
        let request = if replace { request.replace() } else { request };
        request.execute().await.map_err(KernelError::from)
    }

    /// Adds the address with its prefix length, flags, lifetimes and the ownership mark, or
    /// — when PureLB's own address is already there — replaces it (rewriting flags, lifetimes
    /// and the mark; lifetimes are renewed this way). An address already there that PureLB
    /// did not add is left alone.
    ///
    /// The kernel keeps an existing IPv4 address's flags on a replace (only lifetimes and the
    /// mark change); IPv6 takes the new flags. To change `noprefixroute` of an IPv4 address,
    /// delete it and add it again.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::InvalidAddress`], [`NetlinkError::InvalidLinkName`],
    /// [`NetlinkError::LinkNotFound`], [`NetlinkError::NotOwned`] (an administrator's address
    /// is in the way), [`NetlinkError::AddAddress`] (the kernel refused), [`NetlinkError::List`].
    #[instrument(level = "debug", skip(self, spec), fields(link = %spec.link, ip = %spec.ip, prefix_len = spec.prefix_len))]
    pub async fn add_or_replace(&self, spec: &AddressSpec) -> Result<AddOutcome, NetlinkError> {
        spec.validate()?;
        // By index the kernel checks the link itself (one request); a name is looked up first.
        let (index, named) = match &spec.link {
            LinkRef::Index(index) => (*index, None),
            LinkRef::Name(_) => {
                let link = self.resolve(&spec.link).await?;
                (link.index, Some(link))
            }
        };
        let add_error =
            |link: String, kernel| NetlinkError::AddAddress { link, ip: spec.ip, prefix_len: spec.prefix_len, kernel };
        let message = address_message(index, spec);
        match self.send_address(message.clone(), false).await {
            Ok(()) => return Ok(AddOutcome::Added),
            Err(kernel) if kernel.is(libc::EEXIST) => {}
            Err(kernel) if named.is_none() && kernel.is(libc::ENODEV) => {
                return Err(NetlinkError::LinkNotFound { link: spec.link.to_string() });
            }
            Err(kernel) => {
                let name = named.map_or_else(|| spec.link.to_string(), |l| l.name);
                return Err(add_error(name, kernel));
            }
        }
        let link = match named {
            Some(link) => link,
            None => self.resolve(&spec.link).await?,
        };
        // The kernel matches IPv4 addresses by address and prefix, IPv6 by address.
        let existing = self.addresses_on(&link).await?;
        let in_the_way =
            existing.iter().find(|a| a.ip == spec.ip && (spec.ip.is_ipv6() || a.prefix_len == spec.prefix_len));
        let outcome = match in_the_way {
            // Gone meanwhile: the replace below creates it.
            None => AddOutcome::Added,
            Some(address) if address.has_purelb_mark() || self.mark_support() == MarkSupport::NotStored => {
                AddOutcome::Replaced
            }
            Some(_) => return Err(NetlinkError::NotOwned { link: link.name.clone(), ip: spec.ip }),
        };
        self.send_address(message, true).await.map_err(|kernel| add_error(link.name.clone(), kernel))?;
        Ok(outcome)
    }

    /// Adds (`on`) or removes a blackhole host route for `ip` in the main table (protocol
    /// PureLB's). While it is there and `ip` is not a local address, packets to `ip` are dropped
    /// rather than forwarded: the instant of a graceful handover in which a connection that
    /// raced the withdrawal must not be reset elsewhere (`docs/agent.md`). Adding one that is
    /// there and removing one that is not are not errors.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::Route`] when the kernel refuses.
    pub async fn set_blackhole(&self, ip: IpAddr, on: bool) -> Result<(), NetlinkError> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let message = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, prefix)
            .map_err(|_| NetlinkError::InvalidAddress { ip, prefix_len: prefix, reason: "not a host address" })?
            .kind(RouteType::BlackHole)
            .protocol(RouteProtocol::Other(super::PURELB_ADDRESS_PROTOCOL))
            .build();
        let routes = self.handle.route();
        let (action, result) = if on {
            ("add", routes.add(message).replace().execute().await)
        } else {
            ("remove", routes.del(message).execute().await)
        };
        match result.map_err(KernelError::from) {
            Ok(()) => Ok(()),
            Err(kernel) if !on && (kernel.is(libc::ESRCH) || kernel.is(libc::ENOENT)) => Ok(()),
            Err(kernel) => Err(NetlinkError::Route { action, ip, kernel }),
        }
    }

    async fn enable_promote_secondaries(&self, link: &Link) -> Result<(), KernelError> {
        let mut conf = InetDevConf::default();
        conf.promote_secondaries = 1;
        let message = LinkUnspec::new_with_index(link.index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]))
            .build();
        self.handle.link().set(message).execute().await.map_err(KernelError::from)
    }

    /// Deletes `ip` from the interface `link`, if PureLB owns it there (with any prefix
    /// length). Deleting an address that is not there, or from an interface that does not
    /// exist, is not an error. Before deleting an IPv4 primary address that has secondaries,
    /// `promote_secondaries` is enabled on the interface so that they survive (see the module
    /// documentation).
    ///
    /// # Errors
    ///
    /// [`NetlinkError::NotOwned`] when the address is there but is not PureLB's (nothing is
    /// deleted); [`NetlinkError::PromoteSecondaries`]; [`NetlinkError::DeleteAddress`];
    /// [`NetlinkError::InvalidLinkName`]; [`NetlinkError::List`].
    #[instrument(level = "debug", skip(self, link), fields(link))]
    pub async fn delete(&self, link: impl Into<LinkRef>, ip: IpAddr) -> Result<DeleteOutcome, NetlinkError> {
        let link_ref = link.into();
        tracing::Span::current().record("link", tracing::field::display(&link_ref));
        let Some(link) = self.link(&link_ref).await? else {
            return Ok(DeleteOutcome::Absent);
        };
        let on_link = self.addresses_on(&link).await?;
        let targets: Vec<&Address> = on_link.iter().filter(|a| a.ip == ip).collect();
        self.delete_targets(&link, &on_link, &targets, ip).await
    }

    /// Deletes one address listed in `snapshot` (which must be recent), if PureLB owns it: the
    /// fast path for a reconcile pass that already holds the snapshot (one request instead of
    /// a lookup and a dump). Same rules and outcomes as [`AddressManager::delete`].
    ///
    /// # Errors
    ///
    /// As [`AddressManager::delete`].
    #[instrument(level = "debug", skip(self, address, snapshot), fields(link = %address.ifname, ip = %address.ip))]
    pub async fn delete_listed(
        &self,
        address: &Address,
        snapshot: &AddressSnapshot,
    ) -> Result<DeleteOutcome, NetlinkError> {
        let link = snapshot.links.iter().find(|l| l.index == address.index).cloned().unwrap_or_else(|| Link {
            index: address.index,
            name: address.ifname.clone(),
            kind: None,
            admin_up: false,
            lower_up: false,
            loopback: false,
            promote_secondaries: None,
            alias: None,
        });
        let on_link: Vec<Address> = snapshot.addresses.iter().filter(|a| a.index == address.index).cloned().collect();
        self.delete_targets(&link, &on_link, &[address], address.ip).await
    }

    /// Deletes those of `targets` (all with address `ip`, on `link`) that PureLB owns, minding
    /// the secondaries among `on_link`.
    async fn delete_targets(
        &self,
        link: &Link,
        on_link: &[Address],
        targets: &[&Address],
        ip: IpAddr,
    ) -> Result<DeleteOutcome, NetlinkError> {
        if targets.is_empty() {
            return Ok(DeleteOutcome::Absent);
        }
        let marks = self.mark_support();
        let owned: Vec<&Address> =
            targets.iter().copied().filter(|a| a.has_purelb_mark() || marks == MarkSupport::NotStored).collect();
        if owned.is_empty() {
            return Err(NetlinkError::NotOwned { link: link.name.clone(), ip });
        }
        let mut outcome = DeleteOutcome::Absent;
        let mut promoted = link.promote_secondaries == Some(true);
        for target in owned {
            if target.ip.is_ipv4() && !target.state.secondary && !promoted {
                let subnet = target.subnet();
                let secondaries: Vec<IpAddr> = on_link
                    .iter()
                    .filter(|o| o.state.secondary && o.prefix_len == target.prefix_len && subnet.contains(o.ip))
                    .map(|o| o.ip)
                    .collect();
                if !secondaries.is_empty() {
                    self.enable_promote_secondaries(link).await.map_err(|kernel| NetlinkError::PromoteSecondaries {
                        link: link.name.clone(),
                        ip,
                        secondaries: secondaries.clone(),
                        kernel,
                    })?;
                    promoted = true;
                    info!(
                        link = %link.name, %ip, ?secondaries,
                        "enabled promote_secondaries so that deleting a primary address keeps its subnet's other addresses"
                    );
                }
            }
            let message = bare_address_message(link.index, target.ip, target.prefix_len);
            match self.handle.address().del(message).execute().await {
                Ok(()) => outcome = DeleteOutcome::Removed,
                Err(error) => {
                    let kernel = KernelError::from(error);
                    // Removed by someone else meanwhile.
                    if kernel.is(libc::EADDRNOTAVAIL) || kernel.is(libc::ENOENT) || kernel.is(libc::ENODEV) {
                        continue;
                    }
                    return Err(NetlinkError::DeleteAddress { link: link.name.clone(), ip, kernel });
                }
            }
        }
        Ok(outcome)
    }
}
