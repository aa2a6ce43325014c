//! The operator commands (`api.md` §8): `purelb status`, `purelb explain`, `purelb validate`
//! (also as the kubectl plugin `kubectl purelb`). They read the cluster once ([`snapshot`]) and
//! judge it with the same pure functions the allocator and agents run ([`model`]).

pub mod explain;
pub mod model;
pub mod output;
pub mod schema;
pub mod snapshot;
pub mod status;
pub mod validate;
