//! `purelb allocator`: gives every handled LoadBalancer Service its addresses from the
//! ServiceGroups, and keeps them. Pure parts: [`groups`] (validated ServiceGroups),
//! [`request`] (what a Service asks for), [`table`] (the allocation table and decisions);
//! [`netbox`] talks to NetBox for netbox groups.

pub mod conditions;
pub mod controller;
pub mod groups;
pub mod netbox;
pub mod request;
pub mod table;
