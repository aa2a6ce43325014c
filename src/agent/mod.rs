//! `purelb agent`: runs on every node, keeps this node's membership Lease, decides which
//! Service addresses this node must hold and makes the kernel hold exactly those (issue 6,
//! `api.md` §1, §3, §4, §6). See `docs/agent.md` for the behaviour and the decisions taken.
//!
//! - [`decide`]: the pure decision (desired addresses from Services, members, groups and
//!   endpoints);
//! - [`config`]: which LBNodeAgent governs this node, checked;
//! - [`lease`]: this node's Lease body and its renewal;
//! - [`plan`]: one pass as a pure function (snapshot and timers in, actions and timers out),
//!   shared with `purelb reconcile`;
//! - [`echo`]: the kernel's echoes of the agent's own address changes (no pass for them);
//! - [`connections`]: open TCP connections to an address (the quiet moment of a handover);
//! - [`shutdown`]: what a SIGTERM means (replaced in place: keep; going away: hand over);
//! - [`controller`]: the IO (watch caches, netlink, bursts, Events, metrics); entry point
//!   [`controller::run`].

pub mod cached;
pub mod config;
pub mod connections;
pub mod controller;
pub mod decide;
pub mod echo;
pub mod lease;
pub mod plan;
pub mod shutdown;

pub use controller::{AgentError, Settings, run};
