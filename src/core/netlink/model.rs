//! What the address manager reads and writes, as plain data, and the pure decisions over it:
//! which interface holds the default route, which interface's subnet contains an address,
//! which addresses are PureLB's, which held addresses went missing. Also the conversions
//! between these types and rtnetlink messages.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rtnetlink::{
    AddressMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags as KernelAddressFlags, AddressMessage, AddressProtocol, CacheInfo},
        link::{AfSpecInet, AfSpecUnspec, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags, RouteType},
    },
};

use super::{NetlinkError, PURELB_ADDRESS_PROTOCOL, PURELB_LINK_ALIAS};
use crate::core::ipam::{AddressRange, Family, Subnet};

/// The kernel's "forever" lifetime (`INFINITY_LIFE_TIME`).
const KERNEL_INFINITY: u32 = u32::MAX;
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_LINK_NAME: usize = 15;

/// An interface, by name or by index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LinkRef {
    /// By name, e.g. `kube-lb0`.
    Name(String),
    /// By kernel index.
    Index(u32),
}

impl LinkRef {
    /// Whether this names the link with `index` and `name`.
    #[must_use]
    pub fn matches(&self, index: u32, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Index(i) => *i == index,
        }
    }
}

impl From<&str> for LinkRef {
    fn from(name: &str) -> Self {
        Self::Name(name.to_owned())
    }
}

impl From<String> for LinkRef {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

impl From<&String> for LinkRef {
    fn from(name: &String) -> Self {
        Self::Name(name.clone())
    }
}

impl From<u32> for LinkRef {
    fn from(index: u32) -> Self {
        Self::Index(index)
    }
}

impl From<&Link> for LinkRef {
    fn from(link: &Link) -> Self {
        Self::Index(link.index)
    }
}

impl fmt::Display for LinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Index(index) => write!(f, "interface #{index}"),
        }
    }
}

/// Checks a name against the kernel's rules for interface names.
///
/// # Errors
///
/// [`NetlinkError::InvalidLinkName`] saying what is wrong.
pub(crate) fn validate_link_name(name: &str) -> Result<(), NetlinkError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_LINK_NAME {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is `.` or `..`"
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        "it contains `/`, `:`, whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(NetlinkError::InvalidLinkName { name: name.to_owned(), reason })
}

/// A network interface as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Kernel index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Link kind (`bridge`, `veth`, `dummy`, ...); `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    /// Has a carrier (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// The loopback device.
    pub loopback: bool,
    /// `net.ipv4.conf.<link>.promote_secondaries`, when the kernel reports it.
    pub promote_secondaries: Option<bool>,
    /// The interface alias (`IFLA_IFALIAS`, `ip link set <link> alias ...`), when set.
    pub alias: Option<String>,
}

impl Link {
    /// Up and with a carrier: traffic can leave through it.
    #[must_use]
    pub fn is_usable(&self) -> bool {
        self.admin_up && self.lower_up
    }

    /// Whether PureLB created this link: its alias is [`PURELB_LINK_ALIAS`], which
    /// [`AddressManager::ensure_link`](super::AddressManager::ensure_link) sets on the links it
    /// creates. Links that were there before are never marked, so never PureLB's.
    #[must_use]
    pub fn is_created_by_purelb(&self) -> bool {
        self.alias.as_deref() == Some(PURELB_LINK_ALIAS)
    }
}

/// Reads a link from an `RTM_NEWLINK` message; `None` when it has no name.
pub(crate) fn link_from_message(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    let mut promote_secondaries = None;
    let mut alias = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::IfAlias(a) => alias = Some(a.clone()).filter(|a| !a.is_empty()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            LinkAttribute::AfSpecUnspec(specs) => {
                for spec in specs {
                    if let AfSpecUnspec::Inet(inet) = spec {
                        for entry in inet {
                            if let AfSpecInet::DevConf(conf) = entry {
                                promote_secondaries = Some(conf.promote_secondaries != 0);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let flags = message.header.flags;
    Some(Link {
        index: message.header.index,
        name: name?,
        kind,
        admin_up: flags.contains(LinkFlags::Up),
        lower_up: flags.contains(LinkFlags::LowerUp),
        loopback: flags.contains(LinkFlags::Loopback),
        promote_secondaries,
        alias,
    })
}

/// The address flags PureLB sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddressFlags {
    /// `IFA_F_NODAD`: no duplicate address detection (IPv6 only; ignored for IPv4).
    pub nodad: bool,
    /// `IFA_F_NOPREFIXROUTE`: no route for the address's prefix.
    pub noprefixroute: bool,
}

/// The address state the kernel maintains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddressState {
    /// No lifetime (`IFA_F_PERMANENT`).
    pub permanent: bool,
    /// A secondary address of its subnet (IPv4; `IFA_F_SECONDARY`).
    pub secondary: bool,
    /// Duplicate address detection still running (IPv6; `IFA_F_TENTATIVE`).
    pub tentative: bool,
    /// Preferred lifetime over (`IFA_F_DEPRECATED`).
    pub deprecated: bool,
    /// Duplicate address detection failed (IPv6; `IFA_F_DADFAILED`).
    pub dad_failed: bool,
    /// Optimistic DAD (IPv6; `IFA_F_OPTIMISTIC`).
    pub optimistic: bool,
}

/// An address on an interface, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Index of the interface.
    pub index: u32,
    /// Name of the interface.
    pub ifname: String,
    /// The address (`IFA_LOCAL`, or `IFA_ADDRESS` when there is no local one).
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Flags PureLB sets.
    pub flags: AddressFlags,
    /// State the kernel maintains.
    pub state: AddressState,
    /// Seconds of valid lifetime left; `None` = forever.
    pub valid_lifetime: Option<u32>,
    /// Seconds of preferred lifetime left; `None` = forever.
    pub preferred_lifetime: Option<u32>,
    /// `IFA_PROTO` (the ownership mark is [`PURELB_ADDRESS_PROTOCOL`]); `None` when unset.
    pub protocol: Option<u8>,
}

#[cfg(test)]
impl Address {
    /// An address without flags, state, lifetimes or mark (tests).
    pub(crate) fn plain(index: u32, ifname: &str, ip: &str, prefix_len: u8) -> Self {
        Self {
            index,
            ifname: ifname.to_owned(),
            ip: ip.parse().unwrap_or(IpAddr::from([0u8; 4])),
            prefix_len,
            flags: AddressFlags::default(),
            state: AddressState::default(),
            valid_lifetime: None,
            preferred_lifetime: None,
            protocol: None,
        }
    }
}

impl Address {
    /// The family.
    #[must_use]
    pub fn family(&self) -> Family {
        Family::of(self.ip)
    }

    /// The subnet the address and prefix length describe.
    #[must_use]
    pub fn subnet(&self) -> Subnet {
        Subnet::new(self.ip, self.prefix_len)
    }

    /// Carries PureLB's ownership mark.
    #[must_use]
    pub fn has_purelb_mark(&self) -> bool {
        self.protocol == Some(PURELB_ADDRESS_PROTOCOL)
    }

    /// An IPv6 link-local address (`fe80::/10`).
    #[must_use]
    pub fn is_link_local(&self) -> bool {
        matches!(self.ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
    }

    /// Whether the address tells which subnet its interface is on: not PureLB's own, not a
    /// host address (/32, /128), not IPv6 link-local, tentative, deprecated or DAD-failed.
    #[must_use]
    pub fn defines_subnet(&self) -> bool {
        !self.has_purelb_mark()
            && self.prefix_len < self.family().bits()
            && !self.is_link_local()
            && !self.state.tentative
            && !self.state.deprecated
            && !self.state.dad_failed
    }
}

fn lifetime_from_kernel(seconds: u32) -> Option<u32> {
    (seconds != KERNEL_INFINITY).then_some(seconds)
}

/// Reads an address from an `RTM_NEWADDR`/`RTM_DELADDR` message; `None` without an address.
pub(crate) fn address_from_message(message: &AddressMessage, ifname: &str) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    let mut cache = None;
    let mut protocol = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(*f),
            AddressAttribute::CacheInfo(c) => cache = Some(*c),
            AddressAttribute::Protocol(p) => protocol = Some(u8::from(*p)).filter(|p| *p != 0),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let bits = flags.unwrap_or_else(|| KernelAddressFlags::from_bits_retain(u32::from(message.header.flags.bits())));
    let has = |flag: KernelAddressFlags| bits.contains(flag);
    Some(Address {
        index: message.header.index,
        ifname: ifname.to_owned(),
        ip,
        prefix_len: message.header.prefix_len,
        flags: AddressFlags {
            nodad: has(KernelAddressFlags::Nodad),
            noprefixroute: has(KernelAddressFlags::Noprefixroute),
        },
        state: AddressState {
            permanent: has(KernelAddressFlags::Permanent),
            secondary: has(KernelAddressFlags::Secondary),
            tentative: has(KernelAddressFlags::Tentative),
            deprecated: has(KernelAddressFlags::Deprecated),
            dad_failed: has(KernelAddressFlags::Dadfailed),
            optimistic: has(KernelAddressFlags::Optimistic),
        },
        valid_lifetime: cache.and_then(|c| lifetime_from_kernel(c.ifa_valid)),
        preferred_lifetime: cache.and_then(|c| lifetime_from_kernel(c.ifa_preferred)),
        protocol,
    })
}

/// An address PureLB wants on an interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AddressSpec {
    /// The interface.
    pub link: LinkRef,
    /// The address.
    pub ip: IpAddr,
    /// Prefix length (the subnet's prefix for `local` addresses, /32 or /128 on `kube-lb0`).
    pub prefix_len: u8,
    /// `nodad` / `noprefixroute`.
    pub flags: AddressFlags,
    /// Valid lifetime in seconds, [`PERMANENT`](super::PERMANENT) (0) = forever.
    pub valid_lifetime: u32,
    /// Preferred lifetime in seconds, 0 = forever; never longer than the valid lifetime.
    pub preferred_lifetime: u32,
}

impl AddressSpec {
    /// A permanent address without flags.
    #[must_use]
    pub fn new(link: impl Into<LinkRef>, ip: IpAddr, prefix_len: u8) -> Self {
        Self {
            link: link.into(),
            ip,
            prefix_len,
            flags: AddressFlags::default(),
            valid_lifetime: super::PERMANENT,
            preferred_lifetime: super::PERMANENT,
        }
    }

    /// With `IFA_F_NODAD` (IPv6).
    #[must_use]
    pub fn nodad(mut self) -> Self {
        self.flags.nodad = true;
        self
    }

    /// With `IFA_F_NOPREFIXROUTE`.
    #[must_use]
    pub fn noprefixroute(mut self) -> Self {
        self.flags.noprefixroute = true;
        self
    }

    /// With these flags.
    #[must_use]
    pub fn flags(mut self, flags: AddressFlags) -> Self {
        self.flags = flags;
        self
    }

    /// With these lifetimes in seconds (0 = forever).
    #[must_use]
    pub fn lifetimes(mut self, valid: u32, preferred: u32) -> Self {
        self.valid_lifetime = valid;
        self.preferred_lifetime = preferred;
        self
    }

    /// Checks what the kernel would refuse.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::InvalidAddress`] or [`NetlinkError::InvalidLinkName`].
    pub fn validate(&self) -> Result<(), NetlinkError> {
        if let LinkRef::Name(name) = &self.link {
            validate_link_name(name)?;
        }
        let reason = if self.prefix_len > Family::of(self.ip).bits() {
            "the prefix length is longer than the family allows"
        } else if self.prefix_len == 0 {
            "the prefix length is 0"
        } else if self.ip.is_unspecified() {
            "the address is unspecified"
        } else if self.ip.is_multicast() {
            "the address is a multicast address"
        } else {
            return Ok(());
        };
        Err(NetlinkError::InvalidAddress { ip: self.ip, prefix_len: self.prefix_len, reason })
    }

    /// The `(valid, preferred)` lifetimes as the kernel takes them: forever is `u32::MAX`,
    /// and the preferred lifetime is capped at the valid one.
    #[must_use]
    pub fn kernel_lifetimes(&self) -> (u32, u32) {
        let to_kernel = |seconds: u32| if seconds == super::PERMANENT { KERNEL_INFINITY } else { seconds };
        let valid = to_kernel(self.valid_lifetime);
        (valid, to_kernel(self.preferred_lifetime).min(valid))
    }
}

/// The `RTM_NEWADDR` body for `spec` on interface `index`: address, prefix, flags, lifetimes
/// (always sent, so a replace also resets them) and the ownership mark.
pub(crate) fn address_message(index: u32, spec: &AddressSpec) -> AddressMessage {
    let mut message = bare_address_message(index, spec.ip, spec.prefix_len);
    let mut flags = KernelAddressFlags::empty();
    if spec.flags.nodad && spec.ip.is_ipv6() {
        flags |= KernelAddressFlags::Nodad;
    }
    if spec.flags.noprefixroute {
        flags |= KernelAddressFlags::Noprefixroute;
    }
    message.attributes.push(AddressAttribute::Flags(flags));
    let (valid, preferred) = spec.kernel_lifetimes();
    let mut cache = CacheInfo::default();
    cache.ifa_valid = valid;
    cache.ifa_preferred = preferred;
    message.attributes.push(AddressAttribute::CacheInfo(cache));
    message.attributes.push(AddressAttribute::Protocol(AddressProtocol::from(PURELB_ADDRESS_PROTOCOL)));
    message
}

/// Address, local address (and IPv4 broadcast) on interface `index`: enough to delete.
pub(crate) fn bare_address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    match ip {
        IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(v4, prefix_len).build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(v6, prefix_len).build(),
    }
}

/// Links and addresses read together: the state every decision starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSnapshot {
    /// Every link, by index.
    pub links: Vec<Link>,
    /// Every address, by interface index and address.
    pub addresses: Vec<Address>,
}

impl AddressSnapshot {
    /// The link with this name.
    #[must_use]
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The addresses on the interface `link`.
    pub fn addresses_on<'a>(&'a self, link: &'a LinkRef) -> impl Iterator<Item = &'a Address> + 'a {
        self.addresses.iter().filter(move |a| link.matches(a.index, &a.ifname))
    }

    /// See [`interface_for`].
    #[must_use]
    pub fn interface_for(&self, ip: IpAddr) -> Option<InterfaceMatch> {
        interface_for(&self.addresses, ip)
    }
}

/// The interface whose subnet contains an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceMatch {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub ifname: String,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The subnet.
    pub subnet: Subnet,
}

/// The interface whose subnet contains `ip`, with that subnet's prefix length. Only addresses
/// that [define a subnet](Address::defines_subnet) count (so no IPv6 link-local, tentative,
/// deprecated or DAD-failed address, no host address and none of PureLB's own); the longest
/// prefix wins, then the lowest interface index.
#[must_use]
pub fn interface_for(addresses: &[Address], ip: IpAddr) -> Option<InterfaceMatch> {
    addresses
        .iter()
        .filter(|a| a.defines_subnet() && a.subnet().contains(ip))
        .max_by(|a, b| a.prefix_len.cmp(&b.prefix_len).then(b.index.cmp(&a.index)))
        .map(|a| InterfaceMatch {
            index: a.index,
            ifname: a.ifname.clone(),
            prefix_len: a.prefix_len,
            subnet: a.subnet(),
        })
}

/// A default route (main table, unicast, destination `/0`) leaving through interface `oif`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    /// Outgoing interface index.
    pub oif: u32,
    /// Metric (`RTA_PRIORITY`), 0 when absent.
    pub metric: u32,
}

/// The default routes in a route message (one per next hop; none when it is not a usable
/// main-table unicast default route).
pub(crate) fn default_routes_from(message: &RouteMessage) -> Vec<DefaultRoute> {
    let header = &message.header;
    let dead = RouteFlags::Linkdown | RouteFlags::Dead;
    if header.destination_prefix_length != 0 || header.kind != RouteType::Unicast || header.flags.intersects(dead) {
        return Vec::new();
    }
    let mut table = u32::from(header.table);
    let mut metric = 0;
    let mut oif = None;
    let mut hops = Vec::new();
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(next_hops) => {
                let dead_hop = RouteNextHopFlags::Linkdown | RouteNextHopFlags::Dead;
                hops.extend(next_hops.iter().filter(|h| !h.flags.intersects(dead_hop)).map(|h| h.interface_index));
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Vec::new();
    }
    oif.into_iter().chain(hops).filter(|i| *i != 0).map(|oif| DefaultRoute { oif, metric }).collect()
}

/// The route dump request for one family's main table.
pub(crate) fn route_dump_message(family: Family) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message
}

/// The interface of the lowest-metric default route whose link is up with a carrier (routes
/// through a down link are ignored); ties go to the lowest interface index.
#[must_use]
pub fn choose_default_interface(routes: &[DefaultRoute], links: &[Link]) -> Option<Link> {
    routes
        .iter()
        .filter_map(|route| links.iter().find(|l| l.index == route.oif && l.is_usable()).map(|l| (route.metric, l)))
        .min_by_key(|(metric, link)| (*metric, link.index))
        .map(|(_, link)| link.clone())
}

/// Whether the kernel stores `IFA_PROTO`, which decides how ownership is recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkSupport {
    /// Linux 6.3 or later (or an address with `IFA_PROTO` was seen): the mark alone decides.
    Stored,
    /// An older kernel: unmarked addresses inside a pool range on a managed interface count as
    /// PureLB's too.
    NotStored,
}

impl MarkSupport {
    /// From a kernel release such as `6.8.0-45-generic`; `None` when it does not parse.
    #[must_use]
    pub fn from_kernel_release(release: &str) -> Option<Self> {
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some(if (major, minor) >= (6, 3) { Self::Stored } else { Self::NotStored })
    }

    /// From the running kernel's release (`/proc/sys/kernel/osrelease`). When it cannot be
    /// read the answer is [`MarkSupport::Stored`]: never claim an unmarked address by guess.
    #[must_use]
    pub fn detect() -> Self {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| Self::from_kernel_release(&release))
            .unwrap_or(Self::Stored)
    }
}

/// The ownership rule: an address is PureLB's when it carries the mark, or — only when the
/// kernel does not store marks — when it is unmarked, on one of `managed_interfaces` and inside
/// one of `pool_ranges`. Everything else is the administrator's and is never touched.
#[must_use]
pub fn is_owned<S: AsRef<str>>(
    address: &Address,
    managed_interfaces: &[S],
    pool_ranges: &[AddressRange],
    marks: MarkSupport,
) -> bool {
    if address.has_purelb_mark() {
        return true;
    }
    marks == MarkSupport::NotStored
        && address.protocol.is_none()
        && managed_interfaces.iter().any(|m| m.as_ref() == address.ifname)
        && pool_ranges.iter().any(|r| r.contains(address.ip))
}
