//! The shared core: pure decision logic and the kernel/network primitives the controllers
//! use. Nothing here knows which subcommand runs it.
//!
//! - [`ipam`]: address ranges, exact sizes, pool validation.
//! - [`queue`]: typed, de-duplicating, rate-limited work queue.
//! - [`endpoints`]: EndpointSlice index and "does node N have a usable endpoint".
//! - [`netlink`]: the address manager (links, addresses, default routes, ownership, drift).
//! - [`announce`]: gratuitous ARP and unsolicited NA packets, sockets and bursts.
//! - [`election`]: node membership from Leases and the per-address winner.
//! - [`memory`]: returning freed memory to the system after a large pass.

pub mod announce;
pub mod election;
pub mod endpoints;
pub mod ipam;
pub mod memory;
pub mod netlink;
pub mod queue;
