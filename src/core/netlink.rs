//! The address manager: everything PureLB does to the kernel's interfaces and addresses,
//! over rtnetlink (`netlink-sys` socket, `netlink-packet-route` messages, `rtnetlink` handle).
//!
//! It owns: listing links and addresses; the default-route interface of a family; the
//! interface whose subnet contains an address; making sure a link (the dummy interface for
//! `remote` pools, `kube-lb0`) exists and is up; adding, replacing and deleting addresses
//! with prefix length, flags and lifetimes; the ownership mark and the ownership rule; the
//! address/link notification watch.
//!
//! Entry points: [`AddressManager::new`] (one request socket on the current Tokio runtime),
//! then [`AddressManager::snapshot`], [`AddressManager::add_or_replace`],
//! [`AddressManager::delete`] (or [`AddressManager::delete_listed`] with a snapshot at
//! hand), [`AddressManager::ensure_link`], [`AddressManager::delete_created_link`],
//! [`AddressManager::link`] (`if_nametoindex`),
//! [`AddressManager::default_interface`], [`AddressManager::interface_for`],
//! and [`AddressManager::watch`]. The decisions themselves are pure functions over a
//! snapshot, testable without root: [`interface_for`], [`choose_default_interface`],
//! [`is_owned`]; which addresses to add and remove is the agent's planner
//! ([`crate::agent::plan`]).
//!
//! # The ownership mark
//!
//! Every address PureLB adds carries `IFA_PROTO` = [`PURELB_ADDRESS_PROTOCOL`] (`0x50`, ASCII
//! `P`; `ip address show` prints it as `proto 80`, and a line `80 purelb` in
//! `/etc/iproute2/rt_addrprotos` names it). Kernels store `IFA_PROTO` since Linux 6.3; the
//! kernel's own values are 1–3 (`kernel_lo`, `kernel_ra`, `kernel_ll`) and 0 means "unset",
//! which is what `ip address add` without `proto` leaves.
//!
//! An address is PureLB's ([`is_owned`]) when it carries the mark, or — only on kernels that
//! do not store `IFA_PROTO` ([`MarkSupport::NotStored`]) — when it lies inside a configured
//! pool range on an interface PureLB manages. Everything else belongs to the administrator:
//! [`AddressManager::add_or_replace`] refuses to replace it (a replace would rewrite its
//! lifetimes and give it our mark) and [`AddressManager::delete`] refuses to delete it; both
//! return [`NetlinkError::NotOwned`].
//!
//! # Links PureLB creates
//!
//! [`AddressManager::ensure_link`] creates the dummy interface only when no link of that name
//! exists, and then sets its alias (`IFLA_IFALIAS`) to [`PURELB_LINK_ALIAS`] (`ip link show`
//! prints `alias created by PureLB`). That alias is how `purelb reconcile --all` later knows the
//! link is PureLB's to delete ([`Link::is_created_by_purelb`],
//! [`AddressManager::delete_created_link`]); a link that was there before (an administrator's
//! bridge, a dummy from another tool) is never marked and never deleted. The kernel ignores an
//! alias sent with the creation request, so it is set right after; if that fails the link works
//! but stays unmarked (logged).
//!
//! # Secondary addresses
//!
//! The kernel deletes every secondary IPv4 address of a subnet when the primary address of
//! that subnet is deleted, unless `net.ipv4.conf.<if>.promote_secondaries=1`. Service
//! addresses added with the subnet's prefix are usually secondaries of the node's own address
//! (which PureLB never deletes), but one of ours is the primary when it was there first.
//! Before deleting an IPv4 primary that has secondaries, [`AddressManager::delete`] turns on
//! `promote_secondaries` for that interface through netlink (`IFLA_AF_SPEC`, logged); if that
//! fails it deletes nothing and returns [`NetlinkError::PromoteSecondaries`]. Administrators
//! who prefer to set it themselves can set `net.ipv4.conf.all.promote_secondaries=1` (many
//! distributions do).
//!
//! # Level-triggered watching
//!
//! Notifications are triggers, never state. [`AddressWatch::changed`] waits for address or
//! link notifications (groups `Ipv4Ifaddr`, `Ipv6Ifaddr`, `Link`), debounces a burst into
//! one trigger, and the caller re-reads the whole [`AddressSnapshot`]. When the socket
//! overran (`ENOBUFS`, surfaced by `netlink-proto` as an `Overrun` message) the trigger says
//! so; the answer is the same full re-read. Subscribe before the first read so that no change
//! falls between the two. Drift (an address the agent holds removed by someone else) is
//! found by the agent's planner in the next snapshot and added back.
//!
//! # Cost
//!
//! Adding a new address, or deleting one listed in a snapshot, is one request. Replacing an
//! address that is already there, and deleting by interface and address, also dump the
//! interface's addresses (to check ownership and secondaries): about a millisecond with a
//! thousand addresses on it. Dumps are serialised on the manager's socket (the kernel runs
//! one dump per socket at a time) and retried when a concurrent change interrupts them.
//! `benches/netlink.rs` measures all of these.
//!
//! # Kernel notes
//!
//! Some kernels have no `dummy` link type (`EOPNOTSUPP` when creating one):
//! [`AddressManager::ensure_link`] accepts an existing link of any kind and says how to
//! create one when it can do neither. Interface names are resolved through netlink, never
//! `/sys/class/net` (which shows the host's interfaces inside a network namespace).

mod error;
mod manager;
mod model;
mod watch;

#[cfg(test)]
mod tests;

pub use error::{KernelError, NetlinkError};
pub use manager::{AddOutcome, AddressManager, DeleteOutcome, EnsuredLink};
pub use model::{
    Address, AddressFlags, AddressSnapshot, AddressSpec, AddressState, DefaultRoute, InterfaceMatch, Link, LinkRef,
    MarkSupport, choose_default_interface, interface_for, is_owned,
};
pub use watch::{AddressWatch, WatchConfig, WatchTrigger};

/// The `IFA_PROTO` value on every address PureLB adds: `0x50` (ASCII `P`, decimal 80). See the
/// module documentation for what it means and how ownership is decided.
pub const PURELB_ADDRESS_PROTOCOL: u8 = 0x50;

/// The alias (`IFLA_IFALIAS`) [`AddressManager::ensure_link`] sets on a link it creates: the
/// mark that PureLB created the link (see the module documentation).
pub const PURELB_LINK_ALIAS: &str = "created by PureLB";

/// A lifetime of zero seconds in [`AddressSpec`] means "permanent".
pub const PERMANENT: u32 = 0;
