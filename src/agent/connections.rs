//! Open TCP connections to an address on this node, for the quiet moment of a graceful
//! handover (`docs/agent.md`, "Graceful handover without a failed request").
//!
//! A connection that is open when the client's neighbour entry moves to the successor has its
//! remaining packets delivered to a node that does not know it, which resets it. So a draining
//! node lets a local address go at a moment when no connection to it is open: no socket of a
//! process on the node (the kernel's socket tables, asked through `NETLINK_SOCK_DIAG`: a
//! fraction of a millisecond, where reading `/proc/net/tcp` walks the whole connection hash
//! table in text and takes milliseconds) and no flow in the connection tracking table
//! (`/proc/self/net/nf_conntrack`, when it exists: kube-proxy forwards such connections to a
//! Pod). Both are read in this process's network namespace (the agent uses the host's).
//!
//! The parsers never panic: what they cannot read is skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

/// Open TCP connections whose local address (sockets) or original destination (tracked
/// flows) is `ip`. A table that cannot be read counts as empty (logged at debug level).
#[must_use]
pub fn open_to(ip: IpAddr) -> usize {
    let ip = ip.to_canonical();
    // A dual-stack listener holds IPv4 connections in the IPv6 table (`::ffff:a.b.c.d`).
    let families: &[u8] = if ip.is_ipv4() { &[AF_INET, AF_INET6] } else { &[AF_INET6] };
    let sockets: usize = families
        .iter()
        .map(|family| {
            open_sockets(*family, ip).unwrap_or_else(|error| {
                tracing::debug!(%error, family, "cannot list sockets");
                0
            })
        })
        .sum();
    let tracked = std::fs::read_to_string("/proc/self/net/nf_conntrack").map_or(0, |t| open_tracked(&t, ip));
    sockets + tracked
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_msg`.
const DIAG_MESSAGE: usize = 72;

/// Socket states that carry a connection whose packets must still reach this node:
/// `ESTABLISHED`, `SYN_SENT`, `SYN_RECV`, `FIN_WAIT1`, `FIN_WAIT2`, `CLOSE_WAIT`, `LAST_ACK`,
/// `CLOSING` (not `TIME_WAIT`, `CLOSE` or `LISTEN`).
const OPEN_SOCKET_STATES: [u8; 8] = [1, 2, 3, 4, 5, 8, 9, 11];

/// A `SOCK_DIAG_BY_FAMILY` dump request for the TCP sockets of `family` in an open state.
#[must_use]
pub fn diag_request(family: u8, sequence: u32) -> Vec<u8> {
    let states = OPEN_SOCKET_STATES.iter().fold(0_u32, |mask, state| mask | (1 << state));
    let length = NLMSG_HEADER + 56;
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0_u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zero inet_diag_sockid.
    out.extend_from_slice(&[family, 6, 0, 0]);
    out.extend_from_slice(&states.to_ne_bytes());
    out.resize(length, 0);
    out
}

/// What one buffer of a sock_diag dump holds: sockets with local address `ip` and whether the
/// dump ended (done, or an error the kernel reported).
#[must_use]
pub fn count_diag_replies(buffer: &[u8], ip: IpAddr) -> (usize, bool) {
    let ip = ip.to_canonical();
    let mut count = 0;
    let mut offset = 0;
    while let Some(header) = buffer.get(offset..offset + NLMSG_HEADER) {
        let length = header.get(0..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes) as usize;
        let kind = header.get(4..6).and_then(|b| b.try_into().ok()).map_or(0, u16::from_ne_bytes);
        if length < NLMSG_HEADER {
            return (count, true);
        }
        if kind == NLMSG_DONE || kind == NLMSG_ERROR {
            return (count, true);
        }
        if kind == SOCK_DIAG_BY_FAMILY
            && let Some(message) = buffer.get(offset + NLMSG_HEADER..offset + NLMSG_HEADER + DIAG_MESSAGE)
            && diag_source(message).is_some_and(|source| source.to_canonical() == ip)
        {
            count += 1;
        }
        offset += (length + 3) & !3;
    }
    (count, false)
}

/// The local address of one `struct inet_diag_msg` (network byte order in `id.idiag_src`).
fn diag_source(message: &[u8]) -> Option<IpAddr> {
    let family = *message.first()?;
    let source = message.get(8..24)?;
    match family {
        AF_INET => <[u8; 4]>::try_from(source.get(..4)?).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        AF_INET6 => <[u8; 16]>::try_from(source).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// Counts the open TCP sockets of `family` with local address `ip`.
///
/// # Errors
///
/// The sock_diag socket cannot be opened, written or read.
pub fn open_sockets(family: u8, ip: IpAddr) -> std::io::Result<usize> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.send(&diag_request(family, 1), 0)?;
    let mut total = 0;
    // A dump ends with NLMSG_DONE; never loop forever on a kernel that says nothing more.
    for _ in 0..100_000 {
        let (buffer, _) = socket.recv_from_full()?;
        if buffer.is_empty() {
            break;
        }
        let (count, done) = count_diag_replies(&buffer, ip);
        total += count;
        if done {
            break;
        }
    }
    Ok(total)
}

/// TCP segments this network namespace has received (`InSegs` of `/proc/self/net/snmp`, both
/// families): unchanged across an interval means no connection can have started in it. Cheap
/// (no socket table walk); `None` when it cannot be read.
#[must_use]
pub fn segments_received() -> Option<u64> {
    std::fs::read_to_string("/proc/self/net/snmp").ok().as_deref().and_then(in_segments)
}

/// `InSegs` from the text of `/proc/net/snmp` (a `Tcp:` header line, then a `Tcp:` values line).
#[must_use]
pub fn in_segments(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let column = names.split_whitespace().position(|n| n == "InSegs")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// Connection tracking states of a TCP flow still in use.
const OPEN_TRACKED_STATES: [&str; 7] =
    ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "SYN_SENT2"];

/// Counts the TCP flows of a `/proc/net/nf_conntrack` table whose original destination is
/// `ip`, in an open state.
#[must_use]
pub fn open_tracked(table: &str, ip: IpAddr) -> usize {
    let ip = ip.to_canonical();
    table
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `ipv4 2 tcp 6 <timeout> <state> src=… dst=… sport=… dport=… …`
            if fields.get(2) != Some(&"tcp") {
                return false;
            }
            let open = fields.get(5).is_some_and(|s| OPEN_TRACKED_STATES.contains(s));
            let destination = fields
                .iter()
                .find_map(|f| f.strip_prefix("dst="))
                .and_then(|d| d.parse::<IpAddr>().ok())
                .map(|d| d.to_canonical());
            open && destination == Some(ip)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `inet_diag_msg` reply for a socket of `family` with local address `source`.
    fn reply(family: u8, source: IpAddr) -> Vec<u8> {
        let mut message = vec![0_u8; DIAG_MESSAGE];
        message[0] = family;
        message[1] = 1;
        match source {
            IpAddr::V4(v4) => message[8..12].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => message[8..24].copy_from_slice(&v6.octets()),
        }
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(NLMSG_HEADER + DIAG_MESSAGE).unwrap().to_ne_bytes());
        out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&message);
        out
    }

    fn done() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&20_u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        out.extend_from_slice(&[0; 14]);
        out
    }

    #[test]
    fn diag_replies_are_counted_by_local_address() {
        let vip: IpAddr = "192.0.2.240".parse().unwrap();
        let mut buffer = reply(AF_INET, vip);
        buffer.extend(reply(AF_INET, "192.0.2.11".parse().unwrap()));
        buffer.extend(reply(AF_INET6, "::ffff:192.0.2.240".parse().unwrap()));
        buffer.extend(reply(AF_INET6, "2001:db8::f0".parse().unwrap()));
        assert_eq!(count_diag_replies(&buffer, vip), (2, false), "IPv4 and IPv4-mapped");
        assert_eq!(count_diag_replies(&buffer, "2001:db8::f0".parse().unwrap()), (1, false));
        buffer.extend(done());
        assert_eq!(count_diag_replies(&buffer, vip), (2, true));
        // Truncated and hostile buffers end the count without a panic.
        for cut in 0..buffer.len() {
            let _ = count_diag_replies(&buffer[..cut], vip);
        }
        let mut zero_length = reply(AF_INET, vip);
        zero_length[0..4].copy_from_slice(&0_u32.to_ne_bytes());
        assert_eq!(count_diag_replies(&zero_length, vip), (0, true));
        assert_eq!(diag_request(AF_INET, 7).len(), 72);
    }

    #[test]
    fn received_segments_from_snmp() {
        let snmp =
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin InSegs OutSegs\nTcp: 1 200 12574 11247\n";
        assert_eq!(in_segments(snmp), Some(12574));
        assert_eq!(in_segments("Tcp: InSegs\n"), None);
        assert_eq!(in_segments("Tcp: InSegs\nTcp: x\n"), None);
        assert_eq!(in_segments(""), None);
        assert!(segments_received().is_some(), "this namespace has a TCP MIB");
    }

    #[test]
    fn tracked_flows_by_original_destination() {
        let table = "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.100 dst=192.0.2.240 sport=40000 dport=80 src=10.0.0.5 dst=192.0.2.100 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=192.0.2.100 dst=192.0.2.240 sport=40001 dport=80 src=10.0.0.5 dst=192.0.2.100 sport=8080 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=192.0.2.100 dst=192.0.2.240 sport=53 dport=53 src=192.0.2.240 dst=192.0.2.100 sport=53 dport=53 mark=0 zone=0 use=2
ipv6     10 tcp      6 60 SYN_RECV src=2001:0db8:0000:0000:0000:0000:0000:0064 dst=2001:0db8:0000:0000:0000:0000:0000:00f0 sport=1 dport=80 src=2001:0db8:0000:0000:0000:0000:0000:00f0 dst=2001:0db8:0000:0000:0000:0000:0000:0064 sport=80 dport=1 mark=0 zone=0 use=2
ipv4 2 tcp
nonsense";
        assert_eq!(open_tracked(table, "192.0.2.240".parse().unwrap()), 1);
        assert_eq!(open_tracked(table, "2001:db8::f0".parse().unwrap()), 1);
        assert_eq!(open_tracked(table, "192.0.2.100".parse().unwrap()), 0, "the reply direction does not count");
    }

    #[test]
    fn this_process_sees_its_own_connection() {
        // An address of the loopback range no other test uses.
        let ip: IpAddr = "127.0.0.77".parse().unwrap();
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        assert_eq!(open_to(ip), 0, "a listener is not a connection");
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // The accepted end has 127.0.0.77 as its local address (the client's is 127.0.0.1).
        assert_eq!(open_to(ip), 1);
        drop((client, server));
    }
}
