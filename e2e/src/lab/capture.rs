//! A wire capture for tests: what a host of the lab sees on one of its links.
//!
//! [`Capture::start`] opens an `AF_PACKET` raw socket (`ETH_P_ALL`) bound to an interface inside a
//! lab namespace and records every frame with its receive time ([`Instant`]) on a background
//! thread until it is stopped or dropped. [`Capture::start_probing`] also sends a frame every so
//! often from the same socket (an ARP request, built with [`arp_request_frame`]), so a test can
//! ask "who has this address?" the way a client does.
//!
//! Frames are parsed with `etherparse`, independently of the agent's own parsers
//! (`purelb::core::announce`), into ARP packets ([`Arp`]) and ICMPv6 Neighbour Advertisements
//! ([`Na`]); [`parse`] accepts any bytes and never panics. [`Capture::claims`] lists the frames
//! by which a MAC says it has an address, and [`interleave`] measures how long two MACs did so
//! at the same time.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, LinkSlice, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
    icmpv6::{Icmpv6PayloadSlice, NdpOptionSlice},
};
pub use purelb::core::announce::MacAddr;
use purelb::core::announce::{ETH_P_ALL, link_layer_sockaddr};
use socket2::{Domain, SockAddr, Socket, Type};

use super::{LabError, netns};

/// The most frames a capture keeps (later ones are counted in [`Capture::dropped`]).
pub const MAX_FRAMES: usize = 200_000;
/// How often the capture thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(10);
const ETHERTYPE_ARP: u16 = 0x0806;

/// An interface of a lab host: its index and Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index (in its namespace).
    pub index: u32,
    /// Ethernet address.
    pub mac: MacAddr,
}

/// The index and MAC of `interface` in `netns` (`ip -j -n <netns> link show dev <interface>`).
///
/// # Errors
///
/// `ip` fails or its output has no index or MAC.
pub fn link(netns: &str, interface: &str) -> Result<Link, LabError> {
    let text = netns::run("ip", &["-j", "-n", netns, "link", "show", "dev", interface])?;
    let what = || format!("`ip -j -n {netns} link show dev {interface}`");
    let links: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LabError::Parse { what: what(), detail: e.to_string() })?;
    let entry = &links[0];
    let index = entry["ifindex"].as_u64().and_then(|i| u32::try_from(i).ok());
    let mac = entry["address"].as_str().and_then(|m| m.parse::<MacAddr>().ok());
    match (index, mac) {
        (Some(index), Some(mac)) => Ok(Link { index, mac }),
        _ => Err(LabError::Parse { what: what(), detail: format!("no ifindex or address in {text}") }),
    }
}

/// The MAC of `interface` in `netns`.
///
/// # Errors
///
/// As [`link`].
pub fn mac_of(netns: &str, interface: &str) -> Result<MacAddr, LabError> {
    link(netns, interface).map(|l| l.mac)
}

/// An ARP packet (Ethernet/IPv4) seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// Operation: [`Arp::REQUEST`], [`Arp::REPLY`] or another code.
    pub op: u16,
    /// Source address of the Ethernet frame.
    pub source: MacAddr,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl Arp {
    /// Opcode of a request.
    pub const REQUEST: u16 = 1;
    /// Opcode of a reply.
    pub const REPLY: u16 = 2;

    /// A gratuitous ARP: sender and target protocol address are the same.
    #[must_use]
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

/// An ICMPv6 Neighbour Advertisement seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Na {
    /// Source address of the Ethernet frame.
    pub source: MacAddr,
    /// Source IPv6 address.
    pub source_ip: Ipv6Addr,
    /// Destination IPv6 address (`ff02::1` for an unsolicited NA).
    pub destination_ip: Ipv6Addr,
    /// The target address: the address advertised.
    pub target: Ipv6Addr,
    /// Router flag.
    pub router: bool,
    /// Solicited flag (clear in an unsolicited NA).
    pub solicited: bool,
    /// Override flag.
    pub override_flag: bool,
    /// The Target Link-Layer Address option, if present (and six octets long).
    pub target_mac: Option<MacAddr>,
}

impl Na {
    /// The MAC this NA says the target is at: the option, else the frame's source.
    #[must_use]
    pub fn claimed_mac(&self) -> MacAddr {
        self.target_mac.unwrap_or(self.source)
    }
}

/// A frame this module understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// ARP.
    Arp(Arp),
    /// ICMPv6 Neighbour Advertisement.
    Na(Na),
}

fn mac(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

/// Parses an Ethernet frame (with or without VLAN tags, padding allowed, no FCS) into an ARP
/// packet or a Neighbour Advertisement; anything else (or anything malformed) is `None`. Never
/// panics.
#[must_use]
pub fn parse(frame: &[u8]) -> Option<Neighbour> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let source = match &packet.link {
        Some(LinkSlice::Ethernet2(ethernet)) => MacAddr(ethernet.source()),
        _ => return None,
    };
    match (&packet.net, &packet.transport) {
        (Some(NetSlice::Arp(arp)), _) => {
            if arp.hw_addr_type() != ArpHardwareId::ETHERNET || arp.proto_addr_type() != EtherType::IPV4 {
                return None;
            }
            let ip = |bytes: &[u8]| <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from);
            Some(Neighbour::Arp(Arp {
                op: arp.operation().0,
                source,
                sender_mac: mac(arp.sender_hw_addr())?,
                sender_ip: ip(arp.sender_protocol_addr())?,
                target_mac: mac(arp.target_hw_addr())?,
                target_ip: ip(arp.target_protocol_addr())?,
            }))
        }
        (Some(NetSlice::Ipv6(ipv6)), Some(TransportSlice::Icmpv6(icmp))) => {
            let etherparse::Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else { return None };
            let Ok(Icmpv6PayloadSlice::NeighborAdvertisement(payload)) = icmp.payload_slice() else { return None };
            let mut target_mac = None;
            for option in payload.options_iterator() {
                match option {
                    Ok(NdpOptionSlice::TargetLinkLayerAddress(tlla)) => {
                        target_mac = tlla.link_layer_address().get(..6).and_then(mac);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let header = ipv6.header();
            Some(Neighbour::Na(Na {
                source,
                source_ip: header.source_addr(),
                destination_ip: header.destination_addr(),
                target: payload.target_address(),
                router: flags.router,
                solicited: flags.solicited,
                override_flag: flags.r#override,
                target_mac,
            }))
        }
        _ => None,
    }
}

/// A broadcast ARP request "who has `target`? tell `sender_ip`" from `sender_mac`, as an
/// Ethernet frame (for [`Probe`]).
#[must_use]
pub fn arp_request_frame(sender_mac: MacAddr, sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &sender_mac.0,
        &sender_ip.octets(),
        &[0; 6],
        &target.octets(),
    );
    if let Ok(arp) = arp {
        // Writing into a Vec cannot fail for a well-formed ARP packet; an empty frame is
        // rejected by the kernel and so shows up as a send error.
        let _ = PacketBuilder::ethernet2(sender_mac.0, [0xff; 6]).arp(arp).write(&mut frame);
    }
    frame
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// When the capture thread received it.
    pub at: Instant,
    /// The frame, Ethernet header first.
    pub bytes: Vec<u8>,
}

/// How a MAC said it has an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimKind {
    /// A gratuitous ARP request.
    GratuitousRequest,
    /// A gratuitous ARP reply.
    GratuitousReply,
    /// An ARP reply (to someone's request).
    Reply,
    /// An ARP request sent from the address (its sender protocol address).
    Request,
    /// A Neighbour Advertisement for the address.
    Advertisement,
}

/// A frame by which `mac` says it has `address` (what moves a client's neighbour entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// When it was received.
    pub at: Instant,
    /// The MAC the address is claimed for.
    pub mac: MacAddr,
    /// The address.
    pub address: IpAddr,
    /// What kind of frame it was.
    pub kind: ClaimKind,
}

/// The claim in one parsed frame, if any: an ARP packet whose sender protocol address is
/// `address` (for the sender hardware address), or an NA whose target is `address` (for its
/// target link-layer address, else the frame's source).
#[must_use]
pub fn claim_of(at: Instant, neighbour: &Neighbour, address: IpAddr) -> Option<Claim> {
    match (neighbour, address) {
        (Neighbour::Arp(arp), IpAddr::V4(v4)) if arp.sender_ip == v4 => {
            let kind = match (arp.op, arp.is_gratuitous()) {
                (Arp::REQUEST, true) => ClaimKind::GratuitousRequest,
                (Arp::REPLY, true) => ClaimKind::GratuitousReply,
                (Arp::REPLY, false) => ClaimKind::Reply,
                (Arp::REQUEST, false) => ClaimKind::Request,
                _ => return None,
            };
            Some(Claim { at, mac: arp.sender_mac, address, kind })
        }
        (Neighbour::Na(na), IpAddr::V6(v6)) if na.target == v6 => {
            Some(Claim { at, mac: na.claimed_mac(), address, kind: ClaimKind::Advertisement })
        }
        _ => None,
    }
}

/// When each MAC first and last claimed, from a list of claims.
#[must_use]
pub fn spans(claims: &[Claim]) -> BTreeMap<MacAddr, (Instant, Instant, usize)> {
    let mut spans: BTreeMap<MacAddr, (Instant, Instant, usize)> = BTreeMap::new();
    for claim in claims {
        let entry = spans.entry(claim.mac).or_insert((claim.at, claim.at, 0));
        entry.0 = entry.0.min(claim.at);
        entry.1 = entry.1.max(claim.at);
        entry.2 += 1;
    }
    spans
}

/// The longest time two different MACs were both claiming the address: over every pair of
/// MACs, from the later of their first claims to the earlier of their last claims (zero when
/// one stopped before the other started). `None` when fewer than two MACs claimed.
#[must_use]
pub fn interleave(claims: &[Claim]) -> Option<(MacAddr, MacAddr, Duration)> {
    let spans: Vec<(MacAddr, (Instant, Instant, usize))> = spans(claims).into_iter().collect();
    let mut longest: Option<(MacAddr, MacAddr, Duration)> = None;
    for (i, (a, (first_a, last_a, _))) in spans.iter().enumerate() {
        for (b, (first_b, last_b, _)) in spans.iter().skip(i + 1) {
            let both = (*last_a).min(*last_b).saturating_duration_since((*first_a).max(*first_b));
            if longest.is_none_or(|(_, _, d)| both > d) {
                longest = Some((*a, *b, both));
            }
        }
    }
    longest
}

/// A frame the capture thread sends every `every` (the first at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The Ethernet frame.
    pub frame: Vec<u8>,
    /// How often.
    pub every: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    frames: Mutex<Vec<Frame>>,
    error: Mutex<Option<String>>,
    dropped: AtomicUsize,
    probes_sent: AtomicUsize,
    probe_errors: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn frames(&self) -> MutexGuard<'_, Vec<Frame>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running capture on one interface of a lab namespace. Dropping it stops its thread.
#[derive(Debug)]
pub struct Capture {
    netns: String,
    interface: String,
    link: Link,
    started: Instant,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing every frame on `interface` in `netns`; frames received after this
    /// returns are recorded.
    ///
    /// # Errors
    ///
    /// The interface is unknown, or the socket cannot be opened (needs `CAP_NET_RAW`).
    pub fn start(netns: &str, interface: &str) -> Result<Self, LabError> {
        Self::start_probing(netns, interface, None)
    }

    /// [`Capture::start`], also sending `probe` (if any) from the capture socket.
    ///
    /// # Errors
    ///
    /// As [`Capture::start`].
    pub fn start_probing(netns: &str, interface: &str, probe: Option<Probe>) -> Result<Self, LabError> {
        let link = link(netns, interface)?;
        let socket = netns::in_netns(netns, move || {
            // Protocol 0 at creation, so that nothing arrives before the bind picks the link.
            let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
            socket.set_recv_buffer_size(4 << 20)?;
            socket.bind(&link_layer_sockaddr(link.index, ETH_P_ALL, MacAddr::ZERO)?)?;
            socket.set_read_timeout(Some(POLL))?;
            Ok(socket)
        })?;
        let destination = link_layer_sockaddr(link.index, ETHERTYPE_ARP, MacAddr::BROADCAST)
            .map_err(|source| LabError::InNetns { netns: netns.to_owned(), source })?;
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("capture-{netns}-{interface}"))
            .spawn(move || run(&socket, &destination, probe.as_ref(), &worker))
            .map_err(|source| LabError::InNetns { netns: netns.to_owned(), source })?;
        Ok(Self {
            netns: netns.to_owned(),
            interface: interface.to_owned(),
            link,
            started: Instant::now(),
            shared,
            thread: Some(thread),
        })
    }

    /// The namespace and interface captured.
    #[must_use]
    pub fn target(&self) -> (&str, &str) {
        (&self.netns, &self.interface)
    }

    /// The captured interface's index and MAC.
    #[must_use]
    pub fn link(&self) -> Link {
        self.link
    }

    /// When the capture started.
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A copy of the frames recorded so far.
    #[must_use]
    pub fn frames(&self) -> Vec<Frame> {
        self.shared.frames().clone()
    }

    /// The recorded frames this module understands, with their receive times.
    #[must_use]
    pub fn neighbours(&self) -> Vec<(Instant, Neighbour)> {
        self.shared.frames().iter().filter_map(|f| Some((f.at, parse(&f.bytes)?))).collect()
    }

    /// The gratuitous ARPs (requests and replies) for `address`.
    #[must_use]
    pub fn gratuitous_arps(&self, address: Ipv4Addr) -> Vec<(Instant, Arp)> {
        self.neighbours()
            .into_iter()
            .filter_map(|(at, n)| match n {
                Neighbour::Arp(arp) if arp.is_gratuitous() && arp.sender_ip == address => Some((at, arp)),
                _ => None,
            })
            .collect()
    }

    /// The Neighbour Advertisements for `address`.
    #[must_use]
    pub fn advertisements(&self, address: Ipv6Addr) -> Vec<(Instant, Na)> {
        self.neighbours()
            .into_iter()
            .filter_map(|(at, n)| match n {
                Neighbour::Na(na) if na.target == address => Some((at, na)),
                _ => None,
            })
            .collect()
    }

    /// Every claim for `address` (see [`claim_of`]), oldest first.
    #[must_use]
    pub fn claims(&self, address: IpAddr) -> Vec<Claim> {
        self.neighbours().iter().filter_map(|(at, n)| claim_of(*at, n, address)).collect()
    }

    /// Frames not kept because [`MAX_FRAMES`] were recorded.
    #[must_use]
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Probes sent, and probes the kernel refused.
    #[must_use]
    pub fn probes(&self) -> (usize, usize) {
        (self.shared.probes_sent.load(Ordering::Relaxed), self.shared.probe_errors.load(Ordering::Relaxed))
    }

    /// The error that ended the capture thread early, if any.
    #[must_use]
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether the capture thread still runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the capture thread and returns every recorded frame.
    #[must_use]
    pub fn stop(mut self) -> Vec<Frame> {
        self.halt();
        std::mem::take(&mut *self.shared.frames())
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The capture thread: reads frames until told to stop (or the socket fails), sending the
/// probe when it is due.
fn run(socket: &Socket, destination: &SockAddr, probe: Option<&Probe>, shared: &Shared) {
    let mut buffer = vec![0u8; 65_536];
    let mut next_probe = Instant::now();
    let mut reader = socket;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(probe) = probe
            && Instant::now() >= next_probe
        {
            match socket.send_to(&probe.frame, destination) {
                Ok(_) => shared.probes_sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => shared.probe_errors.fetch_add(1, Ordering::Relaxed),
            };
            next_probe += probe.every;
            if next_probe < Instant::now() {
                // Late (a loaded machine): keep the rhythm from now rather than catch up.
                next_probe = Instant::now() + probe.every;
            }
        }
        match reader.read(&mut buffer) {
            Ok(len) => {
                let at = Instant::now();
                let mut frames = shared.frames();
                if frames.len() < MAX_FRAMES {
                    frames.push(Frame { at, bytes: buffer.get(..len).unwrap_or_default().to_vec() });
                } else {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => {
                *shared.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use etherparse::icmpv6::NeighborAdvertisementHeader;
    use proptest::prelude::*;
    use purelb::core::announce::{ArpOp, gratuitous_arp_frame, unsolicited_na_frame};

    use super::*;

    const NODE: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 0x53, 0x01]);
    const CLIENT: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 0x53, 0x64]);
    const SERVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 240);

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    fn arp_frame(op: ArpOperation, sender: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            op,
            &sender.0,
            &sender_ip.octets(),
            &[0xff; 6],
            &target_ip.octets(),
        )
        .unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(sender.0, [0xff; 6]).arp(arp).write(&mut frame).unwrap();
        frame
    }

    fn na_frame(
        source: MacAddr,
        target: Ipv6Addr,
        flags: NeighborAdvertisementHeader,
        tlla: Option<MacAddr>,
    ) -> Vec<u8> {
        let mut payload = target.octets().to_vec();
        if let Some(mac) = tlla {
            payload.extend([2, 1]);
            payload.extend(mac.0);
        }
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(source.0, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(v6("fe80::1").octets(), v6("ff02::1").octets(), 255)
            .icmpv6(etherparse::Icmpv6Type::NeighborAdvertisement(flags))
            .write(&mut frame, &payload)
            .unwrap();
        frame
    }

    fn unsolicited() -> NeighborAdvertisementHeader {
        NeighborAdvertisementHeader { router: false, solicited: false, r#override: true }
    }

    #[test]
    fn gratuitous_arp_requests_and_replies_parse() {
        for (op, code) in [(ArpOperation::REQUEST, Arp::REQUEST), (ArpOperation::REPLY, Arp::REPLY)] {
            let parsed = parse(&arp_frame(op, NODE, SERVICE, SERVICE));
            let Some(Neighbour::Arp(arp)) = parsed else { panic!("{parsed:?}") };
            assert_eq!(
                arp,
                Arp {
                    op: code,
                    source: NODE,
                    sender_mac: NODE,
                    sender_ip: SERVICE,
                    target_mac: MacAddr::BROADCAST,
                    target_ip: SERVICE
                }
            );
            assert!(arp.is_gratuitous());
        }
    }

    #[test]
    fn an_ordinary_request_is_not_gratuitous_and_claims_for_its_sender() {
        let client = Ipv4Addr::new(192, 0, 2, 100);
        let frame = arp_request_frame(CLIENT, client, SERVICE);
        let Some(Neighbour::Arp(arp)) = parse(&frame) else { panic!() };
        assert_eq!(
            (arp.op, arp.sender_ip, arp.target_ip, arp.target_mac),
            (Arp::REQUEST, client, SERVICE, MacAddr::ZERO)
        );
        assert!(!arp.is_gratuitous());
        let now = Instant::now();
        assert!(claim_of(now, &Neighbour::Arp(arp), IpAddr::V4(SERVICE)).is_none());
        let claim = claim_of(now, &Neighbour::Arp(arp), IpAddr::V4(client)).unwrap();
        assert_eq!((claim.mac, claim.kind), (CLIENT, ClaimKind::Request));
        // A reply from the holder claims the address.
        let reply = parse(&arp_frame(ArpOperation::REPLY, NODE, SERVICE, client)).unwrap();
        let claim = claim_of(now, &reply, IpAddr::V4(SERVICE)).unwrap();
        assert_eq!((claim.mac, claim.kind), (NODE, ClaimKind::Reply));
    }

    #[test]
    fn the_agents_own_frames_parse_the_same_way() {
        for op in [ArpOp::Request, ArpOp::Reply] {
            let frame = gratuitous_arp_frame(op, NODE, SERVICE);
            let Some(Neighbour::Arp(arp)) = parse(&frame) else { panic!() };
            assert_eq!((arp.op, arp.sender_mac, arp.source), (op.code(), NODE, NODE));
            assert!(arp.is_gratuitous() && arp.sender_ip == SERVICE);
        }
        let target = v6("2001:db8::f1");
        let frame = unsolicited_na_frame(v6("fe80::1"), NODE, target);
        let Some(Neighbour::Na(na)) = parse(&frame) else { panic!() };
        assert_eq!((na.target, na.target_mac, na.source), (target, Some(NODE), NODE));
        assert!(na.override_flag && !na.solicited && !na.router);
        assert_eq!(na.destination_ip, v6("ff02::1"));
    }

    #[test]
    fn neighbour_advertisements_parse_with_and_without_the_option() {
        let target = v6("2001:db8::f0");
        let Some(Neighbour::Na(na)) = parse(&na_frame(CLIENT, target, unsolicited(), Some(NODE))) else { panic!() };
        assert_eq!(
            na,
            Na {
                source: CLIENT,
                source_ip: v6("fe80::1"),
                destination_ip: v6("ff02::1"),
                target,
                router: false,
                solicited: false,
                override_flag: true,
                target_mac: Some(NODE),
            }
        );
        assert_eq!(na.claimed_mac(), NODE);
        let solicited = NeighborAdvertisementHeader { router: true, solicited: true, r#override: false };
        let Some(Neighbour::Na(na)) = parse(&na_frame(CLIENT, target, solicited, None)) else { panic!() };
        assert_eq!((na.target_mac, na.claimed_mac()), (None, CLIENT));
        assert!(na.router && na.solicited && !na.override_flag);
        let claim = claim_of(Instant::now(), &Neighbour::Na(na), IpAddr::V6(target)).unwrap();
        assert_eq!((claim.mac, claim.kind), (CLIENT, ClaimKind::Advertisement));
        assert!(claim_of(Instant::now(), &Neighbour::Na(na), IpAddr::V6(v6("2001:db8::f1"))).is_none());
    }

    #[test]
    fn padded_and_vlan_tagged_frames_parse() {
        let mut padded = arp_frame(ArpOperation::REPLY, NODE, SERVICE, SERVICE);
        padded.resize(60, 0);
        assert!(matches!(parse(&padded), Some(Neighbour::Arp(a)) if a.is_gratuitous()));
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REPLY,
            &NODE.0,
            &SERVICE.octets(),
            &[0; 6],
            &SERVICE.octets(),
        )
        .unwrap();
        let mut tagged = Vec::new();
        PacketBuilder::ethernet2(NODE.0, [0xff; 6])
            .single_vlan(etherparse::VlanId::try_new(7).unwrap())
            .arp(arp)
            .write(&mut tagged)
            .unwrap();
        assert!(matches!(parse(&tagged), Some(Neighbour::Arp(a)) if a.sender_mac == NODE));
    }

    #[test]
    fn other_frames_are_ignored() {
        let mut udp = Vec::new();
        PacketBuilder::ethernet2(NODE.0, CLIENT.0)
            .ipv4([192, 0, 2, 11], [192, 0, 2, 100], 64)
            .udp(1, 2)
            .write(&mut udp, b"hello")
            .unwrap();
        assert_eq!(parse(&udp), None);
        let mut echo = Vec::new();
        PacketBuilder::ethernet2(NODE.0, CLIENT.0)
            .ipv6(v6("2001:db8::b").octets(), v6("2001:db8::64").octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut echo, b"ping")
            .unwrap();
        assert_eq!(parse(&echo), None);
        // An NA with a code other than 0 is not an NA.
        let mut odd = Vec::new();
        PacketBuilder::ethernet2(NODE.0, CLIENT.0)
            .ipv6(v6("fe80::1").octets(), v6("ff02::1").octets(), 255)
            .icmpv6_raw(136, 1, [0x20, 0, 0, 0])
            .write(&mut odd, &v6("2001:db8::f0").octets())
            .unwrap();
        assert_eq!(parse(&odd), None);
        // ARP for another protocol or hardware type.
        let arp = ArpPacket::new(
            ArpHardwareId::IEEE802,
            EtherType::IPV4,
            ArpOperation::REPLY,
            &NODE.0,
            &[1; 4],
            &[0; 6],
            &[1; 4],
        )
        .unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(NODE.0, [0xff; 6]).arp(arp).write(&mut frame).unwrap();
        assert_eq!(parse(&frame), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn every_prefix_of_a_valid_frame_is_safe() {
        let frames = [
            arp_frame(ArpOperation::REQUEST, NODE, SERVICE, SERVICE),
            na_frame(NODE, v6("2001:db8::f0"), unsolicited(), Some(NODE)),
            unsolicited_na_frame(v6("fe80::1"), NODE, v6("2001:db8::f0")).to_vec(),
        ];
        for frame in frames {
            for len in 0..frame.len() {
                let _ = parse(&frame[..len]);
            }
            assert!(parse(&frame).is_some());
        }
    }

    #[test]
    fn interleave_measures_how_long_two_macs_claimed_together() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let claim = |ms, mac| Claim { at: at(ms), mac, address: IpAddr::V4(SERVICE), kind: ClaimKind::Reply };
        // NODE answers until 1,030 ms; CLIENT (standing in for a successor) from 1,000 ms.
        let mut claims: Vec<Claim> = (0..=20).map(|i| claim(i * 50 + 30, NODE)).collect();
        claims.extend((0..5).map(|i| claim(1_000 + i * 50, CLIENT)));
        let (_, _, both) = interleave(&claims).unwrap();
        assert_eq!(both, Duration::from_millis(30));
        let spans = spans(&claims);
        assert_eq!(spans[&NODE], (at(30), at(1_030), 21));
        // Handed over cleanly: no overlap.
        let clean: Vec<Claim> = claims.iter().copied().filter(|c| c.mac == CLIENT || c.at < at(1_000)).collect();
        assert_eq!(interleave(&clean).unwrap().2, Duration::ZERO);
        assert_eq!(interleave(&claims[..3]), None);
        assert_eq!(interleave(&[]), None);
    }

    #[test]
    fn probe_frames_are_arp_requests() {
        let frame = arp_request_frame(CLIENT, Ipv4Addr::new(192, 0, 2, 100), SERVICE);
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_frames(index in 0usize..100, value in any::<u8>(), len in 0usize..120) {
            for mut frame in [
                arp_frame(ArpOperation::REPLY, NODE, SERVICE, SERVICE),
                na_frame(NODE, v6("2001:db8::f0"), unsolicited(), Some(NODE)),
            ] {
                let at = index % frame.len();
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
                frame.truncate(len);
                let _ = parse(&frame);
            }
        }
    }
}
