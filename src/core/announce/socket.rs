//! The sockets that put announcements on the wire, and a packet capture socket for conflict
//! detection. Needs `CAP_NET_RAW`. Every socket is opened per announcement and closed after it,
//! so nothing is held while the node merely owns addresses, and nothing listens while sending.
//! The `AF_PACKET` socket of a gratuitous ARP is closed on a thread of its own
//! ([`close_in_background`]): that close waits for the kernel.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use super::packet::{ALL_NODES, ArpOp, ETHERTYPE_ARP, MacAddr, gratuitous_arp, unsolicited_na};

/// `ETH_P_ALL`: every protocol, for [`open_packet_capture`].
pub const ETH_P_ALL: u16 = 0x0003;

/// The interface to announce on, as the caller read it with netlink (sysfs shows the host's
/// interfaces, not the namespace's, so it is not used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name, for messages.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// The interface's Ethernet address: the sender of every announcement.
    pub mac: MacAddr,
    /// The interface's link-local IPv6 address, the source of NAs. `None` lets the kernel choose
    /// the source (it prefers a link-local address for `ff02::1` anyway).
    pub link_local: Option<Ipv6Addr>,
}

/// An announcement or capture that failed. Every variant names the interface; the OS error (and
/// its errno) is the source.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// A socket could not be opened or configured.
    #[error("cannot set up the {kind} socket on {interface} ({step}): {source}")]
    Socket {
        /// Interface name.
        interface: String,
        /// `packet` or `ICMPv6`.
        kind: &'static str,
        /// What failed: `open`, `bind`, `multicast hops`, ...
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The link-local source address could not be bound.
    #[error("cannot send from {link_local} on {interface}: {source}")]
    Bind {
        /// Interface name.
        interface: String,
        /// The link-local address.
        link_local: Ipv6Addr,
        /// The OS error.
        source: io::Error,
    },
    /// A packet could not be sent.
    #[error("cannot send the {packet} for {address} on {interface}: {source}")]
    Send {
        /// Interface name.
        interface: String,
        /// The announced address.
        address: IpAddr,
        /// `ARP request`, `ARP reply` or `neighbour advertisement`.
        packet: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The link-local address stayed tentative (DAD running) for longer than the sender waits.
    #[error(
        "cannot send the neighbour advertisement for {address} on {interface}: its link-local address is still tentative after {waited:?} ({source})"
    )]
    Tentative {
        /// Interface name.
        interface: String,
        /// The announced address.
        address: Ipv6Addr,
        /// How long the sender waited.
        waited: Duration,
        /// The last OS error (`EADDRNOTAVAIL`).
        source: io::Error,
    },
}

impl AnnounceError {
    /// The errno of the underlying OS error.
    #[must_use]
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Socket { source, .. }
            | Self::Bind { source, .. }
            | Self::Send { source, .. }
            | Self::Tentative { source, .. } => source.raw_os_error(),
        }
    }

    fn is_tentative(&self) -> bool {
        matches!(self, Self::Bind { .. } | Self::Send { .. }) && self.raw_os_error() == Some(libc::EADDRNOTAVAIL)
    }
}

/// A link-layer socket address (`sockaddr_ll`) for interface `ifindex`: `protocol` is the
/// ethertype (host byte order; stored in network order), `mac` the hardware address (the
/// destination when sending, ignored when binding).
///
/// # Errors
///
/// `InvalidInput` when `ifindex` does not fit the kernel's `int`.
#[allow(unsafe_code)]
pub fn link_layer_sockaddr(ifindex: u32, protocol: u16, mac: MacAddr) -> io::Result<SockAddr> {
    let sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("interface index {ifindex} out of range")))?;
    let [a, b, c, d, e, f] = mac.octets();
    let address = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::sa_family_t,
        sll_protocol: protocol.to_be(),
        sll_ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [a, b, c, d, e, f, 0, 0],
    };
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is a socket address type of this platform (what `view_as` requires),
    // and it is smaller than `sockaddr_storage` (which `view_as` also asserts).
    unsafe {
        *storage.view_as::<libc::sockaddr_ll>() = address;
    }
    let len = socket2::socklen_t::try_from(size_of::<libc::sockaddr_ll>())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sockaddr_ll too large"))?;
    // SAFETY: the storage holds a fully initialised `sockaddr_ll` whose family is `AF_PACKET`,
    // and `len` is exactly its size, as `SockAddr::new` requires.
    Ok(unsafe { SockAddr::new(storage, len) })
}

/// Sends a gratuitous ARP request, then a gratuitous ARP reply, for `address` from `link.mac` to
/// the Ethernet broadcast address, through an `AF_PACKET` datagram socket (the kernel writes the
/// Ethernet header from the destination `sockaddr_ll`: `ETH_P_ARP`, `ff:ff:ff:ff:ff:ff`). The
/// socket is opened with protocol 0, so it never receives anything.
///
/// # Errors
///
/// [`AnnounceError::Socket`] when the socket cannot be opened (no `CAP_NET_RAW`),
/// [`AnnounceError::Send`] when the kernel rejects a packet (interface gone: `ENXIO`/`ENODEV`,
/// down: `ENETDOWN`, queue full: `ENOBUFS`/`EAGAIN`).
pub fn send_gratuitous_arp(link: &LinkInfo, address: Ipv4Addr) -> Result<(), AnnounceError> {
    let socket_error =
        |step, source| AnnounceError::Socket { interface: link.name.clone(), kind: "packet", step, source };
    let socket = Socket::new(Domain::PACKET, Type::DGRAM, None).map_err(|e| socket_error("open", e))?;
    socket.set_nonblocking(true).map_err(|e| socket_error("non-blocking", e))?;
    let destination =
        link_layer_sockaddr(link.index, ETHERTYPE_ARP, MacAddr::BROADCAST).map_err(|e| socket_error("address", e))?;
    for (op, packet) in [(ArpOp::Request, "ARP request"), (ArpOp::Reply, "ARP reply")] {
        let body = gratuitous_arp(op, link.mac, address);
        let sent = socket.send_to(&body, &destination).map_err(|source| AnnounceError::Send {
            interface: link.name.clone(),
            address: IpAddr::V4(address),
            packet,
            source,
        });
        if let Err(error) = sent {
            close_in_background(socket);
            return Err(error);
        }
    }
    close_in_background(socket);
    Ok(())
}

/// Closes `socket` on the `socket-closer` thread. Closing an `AF_PACKET` socket waits for an RCU
/// grace period (the kernel's `packet_release` calls `synchronize_net`): 10–15 ms in the lab,
/// all that time in the `close` system call. On a runtime worker that stalled every task queued
/// behind it: a Service's watch event sat in the socket buffer while the worker closed the
/// socket of the previous address's gratuitous ARP, which was most of the p99 of status write →
/// address on the interface (docs/scale.md, "The tail"). Inline when the thread cannot be had.
fn close_in_background(socket: Socket) {
    static CLOSER: OnceLock<Option<mpsc::Sender<Socket>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Socket>();
        std::thread::Builder::new()
            .name("socket-closer".to_owned())
            .spawn(move || {
                for socket in rx {
                    drop(socket);
                }
            })
            .ok()
            .map(|_| tx)
    });
    match closer {
        Some(tx) => {
            if let Err(mpsc::SendError(socket)) = tx.send(socket) {
                drop(socket);
            }
        }
        None => drop(socket),
    }
}

/// Sends one unsolicited Neighbour Advertisement for `address` (Override set, Target Link-Layer
/// Address `link.mac`) to `ff02::1` on `link`, through an ICMPv6 raw socket bound to the
/// link-local address, with multicast hop limit 255 and the multicast interface set to
/// `link.index`. The kernel writes the IPv6 header and the checksum. One attempt: while the
/// link-local address is tentative the kernel refuses it with `EADDRNOTAVAIL`;
/// [`send_unsolicited_na`] retries.
///
/// # Errors
///
/// [`AnnounceError::Socket`] when the socket cannot be opened or configured,
/// [`AnnounceError::Bind`] when the link-local address cannot be used (`EADDRNOTAVAIL` while
/// tentative or gone), [`AnnounceError::Send`] when the kernel rejects the packet.
pub fn try_send_unsolicited_na(link: &LinkInfo, address: Ipv6Addr) -> Result<(), AnnounceError> {
    let socket_error =
        |step, source| AnnounceError::Socket { interface: link.name.clone(), kind: "ICMPv6", step, source };
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(|e| socket_error("open", e))?;
    socket.set_nonblocking(true).map_err(|e| socket_error("non-blocking", e))?;
    socket.set_multicast_hops_v6(255).map_err(|e| socket_error("multicast hops", e))?;
    socket.set_unicast_hops_v6(255).map_err(|e| socket_error("unicast hops", e))?;
    socket.set_multicast_if_v6(link.index).map_err(|e| socket_error("multicast interface", e))?;
    // Our own announcement must not come back to this host's stack.
    socket.set_multicast_loop_v6(false).map_err(|e| socket_error("multicast loop", e))?;
    let source = link.link_local.unwrap_or(Ipv6Addr::UNSPECIFIED);
    if let Some(link_local) = link.link_local {
        let bind_to = SocketAddrV6::new(link_local, 0, 0, link.index);
        socket.bind(&bind_to.into()).map_err(|source| AnnounceError::Bind {
            interface: link.name.clone(),
            link_local,
            source,
        })?;
    }
    // The checksum is computed for the bound source; the kernel recomputes it in any case.
    let body = unsolicited_na(source, link.mac, address);
    let destination = SocketAddrV6::new(ALL_NODES, 0, 0, link.index);
    socket.send_to(&body, &destination.into()).map_err(|source| AnnounceError::Send {
        interface: link.name.clone(),
        address: IpAddr::V6(address),
        packet: "neighbour advertisement",
        source,
    })?;
    Ok(())
}

/// [`try_send_unsolicited_na`], retried every `retry_every` for up to `wait` while the kernel
/// says the link-local address is not available (`EADDRNOTAVAIL`: still tentative during DAD,
/// about one to two seconds after the link comes up).
///
/// # Errors
///
/// [`AnnounceError::Tentative`] when the address stayed unavailable for `wait`; any other error of
/// [`try_send_unsolicited_na`] at once.
pub async fn send_unsolicited_na(
    link: &LinkInfo,
    address: Ipv6Addr,
    wait: Duration,
    retry_every: Duration,
) -> Result<(), AnnounceError> {
    let start = tokio::time::Instant::now();
    loop {
        match try_send_unsolicited_na(link, address) {
            Err(error) if error.is_tentative() => {
                let waited = start.elapsed();
                if waited >= wait {
                    let source = match error {
                        AnnounceError::Bind { source, .. } | AnnounceError::Send { source, .. } => source,
                        _ => io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
                    };
                    return Err(AnnounceError::Tentative { interface: link.name.clone(), address, waited, source });
                }
                tokio::time::sleep(retry_every.min(wait - waited)).await;
            }
            result => return result,
        }
    }
}

/// Opens a raw `AF_PACKET` socket that receives every frame with ethertype `protocol`
/// ([`ETH_P_ALL`] for all) on `link` only, incoming and outgoing, Ethernet header included; for
/// conflict detection ([`super::parse_claim`]) and tests. The socket is blocking; set a read
/// timeout or make it non-blocking as needed.
///
/// # Errors
///
/// [`AnnounceError::Socket`] when the socket cannot be opened or bound to the interface.
pub fn open_packet_capture(link: &LinkInfo, protocol: u16) -> Result<Socket, AnnounceError> {
    let socket_error =
        |step, source| AnnounceError::Socket { interface: link.name.clone(), kind: "packet", step, source };
    // Protocol 0 at creation, so nothing is received before the bind picks the interface.
    let socket = Socket::new(Domain::PACKET, Type::RAW, None).map_err(|e| socket_error("open", e))?;
    let address = link_layer_sockaddr(link.index, protocol, MacAddr::ZERO).map_err(|e| socket_error("address", e))?;
    socket.bind(&address).map_err(|e| socket_error("bind", e))?;
    Ok(socket)
}

/// Puts one announcement on the wire. The burst scheduler sends through this trait, so it can be
/// tested without sockets or root.
pub trait Transmitter: Send + Sync {
    /// Announces that `address` is on `link`: for IPv4 a gratuitous ARP request and reply, for
    /// IPv6 one unsolicited NA.
    ///
    /// # Errors
    ///
    /// An [`AnnounceError`] saying which packet failed on which interface, and why.
    fn announce(&self, link: &LinkInfo, address: IpAddr) -> impl Future<Output = Result<(), AnnounceError>> + Send;
}

/// The [`Transmitter`] that uses real sockets: [`send_gratuitous_arp`] and
/// [`send_unsolicited_na`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketTransmitter {
    /// How long an NA waits for a tentative link-local address (default 5 s).
    pub tentative_wait: Duration,
    /// How often it retries meanwhile (default 100 ms).
    pub retry_every: Duration,
}

impl Default for SocketTransmitter {
    fn default() -> Self {
        Self { tentative_wait: Duration::from_secs(5), retry_every: Duration::from_millis(100) }
    }
}

impl Transmitter for SocketTransmitter {
    async fn announce(&self, link: &LinkInfo, address: IpAddr) -> Result<(), AnnounceError> {
        match address {
            IpAddr::V4(v4) => send_gratuitous_arp(link, v4),
            IpAddr::V6(v6) => send_unsolicited_na(link, v6, self.tentative_wait, self.retry_every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_ll_has_the_packet_family_and_size() {
        // The fields themselves are checked by the kernel tests (tests/announce.rs): sending and
        // binding only work when index, protocol and address are right.
        let address = link_layer_sockaddr(7, ETHERTYPE_ARP, MacAddr::BROADCAST).unwrap();
        assert_eq!(address.family(), libc::AF_PACKET as libc::sa_family_t);
        assert_eq!(address.len() as usize, size_of::<libc::sockaddr_ll>());
        assert!(link_layer_sockaddr(u32::MAX, ETH_P_ALL, MacAddr::ZERO).is_err());
    }

    #[test]
    fn errors_name_the_interface_and_errno() {
        let error = AnnounceError::Send {
            interface: "eth0".into(),
            address: "192.0.2.10".parse().unwrap(),
            packet: "ARP reply",
            source: io::Error::from_raw_os_error(libc::ENETDOWN),
        };
        let text = error.to_string();
        assert!(text.contains("eth0") && text.contains("192.0.2.10") && text.contains("ARP reply"), "{text}");
        assert!(text.contains(&format!("os error {}", libc::ENETDOWN)), "{text}");
        assert_eq!(error.raw_os_error(), Some(libc::ENETDOWN));
        assert!(!error.is_tentative());
        let tentative = AnnounceError::Bind {
            interface: "eth0".into(),
            link_local: "fe80::1".parse().unwrap(),
            source: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
        };
        assert!(tentative.is_tentative());
    }
}
