//! PureLB's test ground: a Kubernetes API emulator ([`apiserver`]) and a network-namespace
//! lab ([`lab`]). See `e2e/README.md`.

pub mod apiserver;
pub mod lab;
