//! A small NetBox 4.x REST client for the calls PureLB makes on IPAM IP addresses, and the API
//! token it authenticates with. Knows nothing about Kubernetes Services; the allocator's use of
//! it (which address, which owner, when to give it back) is in [`crate::allocator::netbox`].
//!
//! Entry points: [`Client`] (list with pagination, get one, patch one; every call bounded by a
//! timeout and counted in `purelb_netbox_requests_total{method,code}` and
//! `purelb_netbox_request_duration_seconds`), [`Token`] (never printed) and [`TokenSource`]
//! (the token from the mounted Secret file or, failing that, from the Secret through the API).

mod client;
mod token;

pub use client::{
    Client, Filter, Http, IpAddressObject, IpAddressPatch, NetboxError, Page, TenantRef, check_url, owner_description,
};
pub use token::{Token, TokenError, TokenSource};
