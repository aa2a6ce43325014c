//! The shared core: pure decision logic and the kernel/network primitives the controllers
//! use. Nothing here knows which subcommand runs it.
//!
//! - [`ipam`]: address ranges, exact sizes, pool validation.

pub mod ipam;
