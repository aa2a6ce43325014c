//! PureLB's test ground: a Kubernetes API emulator ([`apiserver`]), a network-namespace
//! lab ([`lab`]), and a fake NetBox ([`netbox`]). See `e2e/README.md`.

pub mod apiserver;
pub mod lab;
pub mod netbox;
