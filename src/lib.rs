//! PureLB: LoadBalancer Service addresses for Kubernetes clusters without a cloud load
//! balancer.
//!
//! The library holds everything the `purelb` binary runs: the custom resource types
//! ([`api`]), the pure core ([`core`]), the subcommands ([`allocator`], [`agent`],
//! [`reconcile`]), telemetry ([`telemetry`]) and the command line ([`cli`]).

pub mod agent;
pub mod allocator;
pub mod api;
pub mod bgp;
pub mod cli;
pub mod core;
pub mod duration;
pub mod events;
pub mod leader;
pub mod migrate;
pub mod netbox;
pub mod ops;
pub mod process;
pub mod reconcile;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod watch;

/// The Kubernetes API types this build speaks (`k8s-openapi` with the `v1_33` shapes, chosen
/// once in this crate's `Cargo.toml`). Other crates of the workspace use them through here.
pub use k8s_openapi;
/// The Kubernetes client and runtime.
pub use kube;
/// The `purelb` binary's global allocator (mimalloc, without transparent huge pages; see
/// docs/design.md, "The memory allocator"). A bench that runs PureLB's controllers in its own
/// process declares it too, so that it measures what the binary does:
/// `#[global_allocator] static A: purelb::GlobalAllocator = purelb::GlobalAllocator;`
pub use mimalloc::MiMalloc as GlobalAllocator;

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
