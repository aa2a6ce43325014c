//! Support for tests that need root and a network of their own (feature `test-support`,
//! always on in this crate's tests). Entry point: [`in_new_netns`].
//!
//! A network namespace belongs to a thread, so the test body runs on a fresh thread that
//! first leaves the host's namespace with `unshare(CLONE_NEWNET)`, then gets its own
//! single-threaded Tokio runtime. Netlink and packet sockets created there live in that
//! namespace. The namespace has no name and disappears with the thread, so nothing is left
//! behind when the test passes, fails or panics, and tests can run in parallel.

use std::{future::Future, path::PathBuf, process::Command};

/// Runs `body` in a new, empty network namespace (only `lo`, down) and returns its output.
/// A panic in `body` is re-raised in the caller so the test fails with its message.
///
/// # Panics
///
/// When the namespace or runtime cannot be created (not root), or when `body` panics.
#[allow(clippy::expect_used, clippy::panic)]
pub fn in_new_netns<F, Fut, T>(body: F) -> T
where
    F: FnOnce(NetnsHandle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) failed: network namespace tests must run as root");
        let handle = NetnsHandle::current();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cannot build a Tokio runtime");
        runtime.block_on(body(handle))
    });
    match thread.join() {
        Ok(value) => value,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// The namespace a test body runs in: lets it run `ip` and other tools inside it.
#[derive(Clone, Debug)]
pub struct NetnsHandle {
    path: PathBuf,
}

impl NetnsHandle {
    fn current() -> Self {
        let tid = nix::unistd::gettid();
        Self { path: PathBuf::from(format!("/proc/self/task/{tid}/ns/net")) }
    }

    /// Path of the namespace file (`/proc/<pid>/task/<tid>/ns/net`), valid while the test runs.
    #[must_use]
    pub fn path(&self) -> String {
        // Resolve `self` so that child processes can open it.
        self.path.to_string_lossy().replace("/proc/self/", &format!("/proc/{}/", std::process::id()))
    }

    /// Runs a command inside the namespace with `nsenter` and returns its stdout.
    ///
    /// # Panics
    ///
    /// When the command cannot start or exits non-zero.
    #[allow(clippy::expect_used, clippy::panic)]
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg(program)
            .args(args)
            .output()
            .expect("cannot run nsenter");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Shorthand for `ip <args>` inside the namespace.
    #[must_use]
    pub fn ip(&self, args: &[&str]) -> String {
        self.run("ip", args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_private_and_vanish() {
        let first = in_new_netns(|ns| async move {
            let _ = ns.ip(&["link", "add", "pl-test0", "type", "bridge"]);
            ns.ip(&["link", "show"])
        });
        assert!(first.contains("pl-test0"));
        let second = in_new_netns(|ns| async move { ns.ip(&["link", "show"]) });
        assert!(!second.contains("pl-test0"), "a new namespace starts empty");
        let host = std::process::Command::new("ip").args(["link", "show"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&host.stdout).contains("pl-test0"), "nothing leaks to the host");
    }

    #[test]
    fn panics_propagate() {
        let result = std::panic::catch_unwind(|| in_new_netns(|_| async { panic!("boom") }));
        assert!(result.is_err());
    }
}
