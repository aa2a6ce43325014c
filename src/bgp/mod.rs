//! Routed announcements over BGP with BIRD 2 (`api.md` §7, `docs/bgp.md`). PureLB writes no
//! BGP code: the agent renders BIRD's configuration from the BGPPeers that select its node and
//! the remote (and netbox) ServiceGroups ([`render`]), hands it to BIRD over its control socket
//! ([`birdc`], [`manager`]) and reads the sessions back. BIRD's `direct` protocol reads the
//! addresses the agent puts on the dummy interface, so a route exists exactly while this node
//! holds the address. Entry points: [`manager::start`], [`peer::PeerConfig::from_spec`].

pub mod birdc;
pub mod desired;
pub mod manager;
pub mod peer;
pub mod render;

pub use manager::{BgpHandle, BgpSettings, BgpStatus};
pub use peer::{PeerConfig, RouteAttributes};
pub use render::{BirdConfig, ExportMode, GroupExport, PrefixPattern};
