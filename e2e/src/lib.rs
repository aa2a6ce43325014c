//! PureLB's test ground: a Kubernetes API emulator and a network-namespace lab (issue
//! "Test ground"). Not built yet: see `e2e/README.md`.
