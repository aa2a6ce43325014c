//! Network namespaces and links: builds the lab's network from a [`Topology`], removes it by
//! prefix, and runs code or commands inside a namespace.
//!
//! Everything is created inside namespaces the lab owns (`ip -n <ns> link add eth0 type veth
//! peer name <port> netns <P>-net`), so nothing is ever added to the root namespace.
//! Entry points: [`build`], [`delete_lab_namespaces`], [`in_netns`], [`bind_tcp`], [`exec`].

use std::{
    fs::File,
    io::Write,
    net::{IpAddr, SocketAddr, TcpListener},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use nix::sched::CloneFlags;

use super::{
    LabError,
    topology::{BRIDGE, DUMMY_LINK, HOST_LINK, Host, Role, Topology, is_lab_netns},
};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The file of a named namespace.
#[must_use]
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Names of every named network namespace on this machine.
#[must_use]
pub fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
}

/// Names of the namespaces that belong to the lab with `prefix`.
#[must_use]
pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    list().into_iter().filter(|n| is_lab_netns(prefix, n)).collect()
}

/// The identity (device, inode) of a named namespace, to find processes living in it.
#[must_use]
pub fn netns_id(name: &str) -> Option<(u64, u64)> {
    std::fs::metadata(netns_path(name)).ok().map(|m| (m.dev(), m.ino()))
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// Runs `program args` and returns its stdout, or an error with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = describe(program, args);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command,
            detail: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip [-n netns] -batch -` with `lines` as its commands (one process for many changes).
fn ip_batch(netns: &str, lines: &[String]) -> Result<(), LabError> {
    let command = format!("ip -n {netns} -batch - <<< {lines:?}");
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = lines.join("\n") + "\n";
        stdin.write_all(text.as_bytes()).map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    }
    let output = child.wait_with_output().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        return Err(LabError::Command { command, detail: String::from_utf8_lossy(&output.stderr).trim().to_owned() });
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the network namespace `netns`, and returns
/// its result. Sockets created by `f` stay in that namespace after the thread ends; the
/// calling thread never changes namespace.
///
/// # Errors
///
/// The namespace cannot be entered, or `f` fails.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let name = netns.to_owned();
    let thread_name = format!("netns-{netns}");
    let spawned = std::thread::Builder::new().name(thread_name).spawn(move || -> Result<T, LabError> {
        let file =
            File::open(netns_path(&name)).map_err(|source| LabError::EnterNetns { netns: name.clone(), source })?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|errno| LabError::EnterNetns { netns: name.clone(), source: errno.into() })?;
        f().map_err(|source| LabError::InNetns { netns: name, source })
    });
    let handle = spawned.map_err(|source| LabError::EnterNetns { netns: netns.to_owned(), source })?;
    handle.join().map_err(|_| LabError::InNetns {
        netns: netns.to_owned(),
        source: std::io::Error::other("the namespace thread panicked"),
    })?
}

/// Binds a TCP listener on `addr` inside `netns` (the listener stays in that namespace).
///
/// # Errors
///
/// The namespace cannot be entered or the address cannot be bound.
pub fn bind_tcp(netns: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    in_netns(netns, move || TcpListener::bind(addr)).map_err(std::io::Error::other)
}

/// Writes `net.*` sysctls inside `netns` (`key` in dotted form, e.g. `net.ipv4.ip_forward`).
pub fn set_sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<(), LabError> {
    let owned: Vec<(String, String)> = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    in_netns(netns, move || {
        for (key, value) in owned {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, &value)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot set {key}={value}: {e}")))?;
        }
        Ok(())
    })
}

/// Runs `program args` inside `netns` (`ip netns exec`) and returns its output, whatever its
/// exit status.
///
/// # Errors
///
/// The command cannot be started.
pub fn exec(netns: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
    Command::new("ip").args(["netns", "exec", netns, program]).args(args).stdin(Stdio::null()).output().map_err(
        |source| LabError::Spawn { command: format!("ip netns exec {netns} {}", describe(program, args)), source },
    )
}

/// The addresses on the links of `netns`, as (link, address) pairs.
///
/// # Errors
///
/// `ip` fails or prints something that is not the expected JSON.
pub fn addresses(netns: &str) -> Result<Vec<(String, IpAddr)>, LabError> {
    let text = run("ip", &["-j", "-n", netns, "addr", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LabError::Parse { what: format!("`ip -j -n {netns} addr show`"), detail: e.to_string() })?;
    let mut out = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or_default();
        for info in link["addr_info"].as_array().into_iter().flatten() {
            if let Some(ip) = info["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                out.push((name.to_owned(), ip));
            }
        }
    }
    Ok(out)
}

/// Sysctls every lab namespace gets before its links exist (so `default.*` applies to them).
fn base_sysctls(host: &Host) -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![
        // IPv6 addresses usable at once: no duplicate address detection in the lab.
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ];
    match host.role {
        Role::Router => settings.extend([("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")]),
        Role::Node => settings.extend([
            // A Service address added with the subnet's prefix is a secondary of the node's own
            // address; keep secondaries when a primary goes (docs/design.md, kernel facts).
            ("net.ipv4.conf.all.promote_secondaries", "1"),
            ("net.ipv4.conf.default.promote_secondaries", "1"),
            ("net.ipv4.conf.all.arp_notify", "1"),
            ("net.ipv4.conf.default.arp_notify", "1"),
            // Kubernetes nodes forward (kube-proxy and the CNI need it): a node that has just
            // let a Service address go forwards what clients still send it to the new holder.
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // The client's view of an address is its neighbour entry alone (what the tests
            // observe), not a redirect cached from a node that forwarded for a moment.
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ]),
        Role::Client => {}
    }
    settings
}

/// Builds the network of `topology`: namespaces, the bridge, one veth per host, addresses,
/// default routes and `kube-lb0` on the nodes. Fails if any namespace already exists.
///
/// # Errors
///
/// A namespace, link, address or route cannot be created.
pub fn build(topology: &Topology) -> Result<(), LabError> {
    let router = &topology.router;
    for host in topology.hosts() {
        run("ip", &["netns", "add", &host.netns])?;
        set_sysctls(&host.netns, &base_sysctls(host))?;
    }
    let mut lines = vec![
        "link set lo up".to_owned(),
        format!("link add {BRIDGE} type bridge mcast_snooping 0"),
        format!("link set {BRIDGE} up"),
        format!("addr add {}/24 dev {BRIDGE}", router.ipv4),
    ];
    if let Some(v6) = router.ipv6 {
        lines.push(format!("addr add {v6}/64 dev {BRIDGE} nodad"));
    }
    ip_batch(&router.netns, &lines)?;

    let others: Vec<&Host> = topology.hosts().filter(|h| h.role != Role::Router).collect();
    for host in &others {
        ip_batch(
            &host.netns,
            &[
                format!("link add {HOST_LINK} type veth peer name {} netns {}", host.bridge_port, router.netns),
                "link set lo up".to_owned(),
                format!("link set {HOST_LINK} up"),
            ],
        )?;
    }
    let ports: Vec<String> = others
        .iter()
        .flat_map(|h| [format!("link set {} master {BRIDGE}", h.bridge_port), format!("link set {} up", h.bridge_port)])
        .collect();
    ip_batch(&router.netns, &ports)?;

    for host in &others {
        let mut lines = vec![
            format!("addr add {}/24 dev {HOST_LINK}", host.ipv4),
            format!("route add default via {}", router.ipv4),
        ];
        if let (Some(v6), Some(gateway)) = (host.ipv6, router.ipv6) {
            lines.push(format!("addr add {v6}/64 dev {HOST_LINK} nodad"));
            lines.push(format!("route add default via {gateway}"));
        }
        if host.role == Role::Node {
            lines.push(format!("link add {DUMMY_LINK} type bridge"));
            lines.push(format!("link set {DUMMY_LINK} up"));
        }
        ip_batch(&host.netns, &lines)?;
        if host.role == Role::Node {
            set_sysctls(&host.netns, &[("net.ipv4.conf.eth0.promote_secondaries", "1")])?;
        }
    }
    Ok(())
}

/// Deletes every namespace of the lab with `prefix` (their links go with them) and returns
/// their names. Processes inside them must be stopped first, or the kernel keeps the
/// namespaces alive without a name.
///
/// # Errors
///
/// A namespace is still there after `ip netns delete`.
pub fn delete_lab_namespaces(prefix: &str) -> Result<Vec<String>, LabError> {
    let names = lab_namespaces(prefix);
    let mut failures = Vec::new();
    for name in &names {
        if let Err(error) = run("ip", &["netns", "delete", name])
            && netns_path(name).exists()
        {
            failures.push(error.to_string());
        }
    }
    if failures.is_empty() {
        Ok(names)
    } else {
        Err(LabError::Command { command: format!("ip netns delete ({prefix}-*)"), detail: failures.join("; ") })
    }
}
