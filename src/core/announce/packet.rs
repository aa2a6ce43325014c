//! The announcement packets as bytes, and the parsers that read claims out of captured frames.
//! Pure functions; the parsers accept any byte string and never panic.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ARP_HTYPE_ETHERNET: u16 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
const NDP_OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
const NA_FLAG_ROUTER: u8 = 0x80;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ETHERNET_HEADER_LEN: usize = 14;
const IPV6_HEADER_LEN: usize = 40;
/// The minimum NA: ICMPv6 header (4), flags and reserved (4), target (16).
const NA_MIN_LEN: usize = 24;

/// Length of an Ethernet/IPv4 ARP packet (without the Ethernet header).
pub const ARP_BODY_LEN: usize = 28;
/// Length of a gratuitous ARP Ethernet frame (header and ARP packet, no padding, no FCS).
pub const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_BODY_LEN;
/// Length of an unsolicited NA as built here: ICMPv6 NA (24) and one Target Link-Layer Address
/// option (8).
pub const NA_BODY_LEN: usize = NA_MIN_LEN + 8;
/// Length of an unsolicited NA Ethernet frame (Ethernet, IPv6 and ICMPv6; no FCS).
pub const NA_FRAME_LEN: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + NA_BODY_LEN;

/// The all-nodes multicast address `ff02::1`, destination of unsolicited NAs.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of `ff02::1`: `33:33:00:00:00:01`.
pub const ALL_NODES_MAC: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: Self = Self([0; 6]);

    /// The six octets.
    #[must_use]
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// The Ethernet multicast address of an IPv6 multicast group (`33:33` and the group's low
    /// 32 bits, RFC 2464 §7).
    #[must_use]
    pub fn ipv6_multicast(group: Ipv6Addr) -> Self {
        let o = group.octets();
        Self([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a MAC address: write six hex octets such as 02:00:5e:00:53:01")]
pub struct MacAddrParseError {
    /// The rejected text.
    pub value: String,
}

impl FromStr for MacAddr {
    type Err = MacAddrParseError;

    /// Parses `02:00:5e:00:53:01` (also with `-` separators, any case).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || MacAddrParseError { value: text.to_owned() };
        let mut octets = [0u8; 6];
        let mut parts = text.trim().split([':', '-']);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(octets))
    }
}

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// Request (1).
    Request,
    /// Reply (2).
    Reply,
}

impl ArpOp {
    /// The opcode on the wire.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Reply => 2,
        }
    }
}

/// A gratuitous ARP packet (Ethernet/IPv4, without the Ethernet header) announcing that
/// `address` is at `mac`: sender and target protocol address are both `address`, the sender
/// hardware address is `mac`, and the target hardware address is the broadcast address for the
/// request and the reply alike. That last choice copies the Go PureLB (`sendGARP`) and MetalLB
/// (`internal/layer2/arp.go`), whose packets switches and hosts have accepted for years; RFC 5227
/// would put zeros in a request, and receivers ignore the field in both cases.
#[must_use]
pub fn gratuitous_arp(op: ArpOp, mac: MacAddr, address: Ipv4Addr) -> [u8; ARP_BODY_LEN] {
    let mut body = [0u8; ARP_BODY_LEN];
    body[0..2].copy_from_slice(&ARP_HTYPE_ETHERNET.to_be_bytes());
    body[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    body[4] = 6;
    body[5] = 4;
    body[6..8].copy_from_slice(&op.code().to_be_bytes());
    body[8..14].copy_from_slice(&mac.0);
    body[14..18].copy_from_slice(&address.octets());
    body[18..24].copy_from_slice(&MacAddr::BROADCAST.0);
    body[24..28].copy_from_slice(&address.octets());
    body
}

/// [`gratuitous_arp`] in a broadcast Ethernet frame from `mac` (42 bytes: no padding to the
/// 60-byte minimum, which NIC drivers add, and no FCS).
#[must_use]
pub fn gratuitous_arp_frame(op: ArpOp, mac: MacAddr, address: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut frame = [0u8; ARP_FRAME_LEN];
    frame[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    frame[6..12].copy_from_slice(&mac.0);
    frame[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame[ETHERNET_HEADER_LEN..].copy_from_slice(&gratuitous_arp(op, mac, address));
    frame
}

/// An unsolicited Neighbour Advertisement (the ICMPv6 message, what an ICMPv6 raw socket sends)
/// saying that `target` is at `mac`: Router 0, Solicited 0, Override 1, with a Target Link-Layer
/// Address option. The checksum is computed for `source` → `ff02::1`; an ICMPv6 raw socket
/// recomputes it from the addresses it actually uses.
#[must_use]
pub fn unsolicited_na(source: Ipv6Addr, mac: MacAddr, target: Ipv6Addr) -> [u8; NA_BODY_LEN] {
    let mut body = [0u8; NA_BODY_LEN];
    body[0] = ICMPV6_NEIGHBOR_ADVERTISEMENT;
    body[4] = NA_FLAG_OVERRIDE;
    body[8..24].copy_from_slice(&target.octets());
    body[24] = NDP_OPTION_TARGET_LINK_LAYER_ADDRESS;
    body[25] = 1; // in units of 8 octets
    body[26..32].copy_from_slice(&mac.0);
    let checksum = icmpv6_checksum(source, ALL_NODES, &body);
    body[2..4].copy_from_slice(&checksum.to_be_bytes());
    body
}

/// [`unsolicited_na`] in a full Ethernet frame: from `mac` to `33:33:00:00:00:01`, IPv6 from
/// `source` (the link-local address) to `ff02::1` with hop limit 255.
#[must_use]
pub fn unsolicited_na_frame(source: Ipv6Addr, mac: MacAddr, target: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut frame = [0u8; NA_FRAME_LEN];
    frame[0..6].copy_from_slice(&ALL_NODES_MAC.0);
    frame[6..12].copy_from_slice(&mac.0);
    frame[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let ip = &mut frame[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + IPV6_HEADER_LEN];
    ip[0] = 0x60; // version 6, traffic class 0, flow label 0
    // NA_BODY_LEN is 32: the payload length fits in two bytes.
    ip[4..6].copy_from_slice(&(NA_BODY_LEN as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&source.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    frame[ETHERNET_HEADER_LEN + IPV6_HEADER_LEN..].copy_from_slice(&unsolicited_na(source, mac, target));
    frame
}

/// The ICMPv6 checksum of `message` (with its checksum field taken as zero) sent from `source` to
/// `destination` (RFC 4443 §2.3, pseudo-header of RFC 8200 §8.1). A received message is intact
/// when this returns the checksum it carries. Messages longer than 4 GiB get a meaningless value.
#[must_use]
pub fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut pairs = bytes.chunks_exact(2);
        for pair in &mut pairs {
            if let [hi, lo] = pair {
                sum += u64::from(u16::from_be_bytes([*hi, *lo]));
            }
        }
        if let [last] = pairs.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    };
    add(&source.octets());
    add(&destination.octets());
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    add(&length.to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    // The checksum field (bytes 2..4) counts as zero.
    add(message.get(..2).unwrap_or(message));
    add(message.get(4..).unwrap_or(&[]));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // After folding, sum <= 0xffff.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An Ethernet/IPv4 ARP packet, as read by [`parse_arp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// Reads an Ethernet/IPv4 ARP request or reply (the ARP packet, without the Ethernet header;
/// what an `AF_PACKET` datagram socket receives). `None` for anything else: other hardware or
/// protocol types, other operations, short input. Trailing bytes (padding) are ignored.
#[must_use]
pub fn parse_arp(body: &[u8]) -> Option<ArpPacket> {
    let body: &[u8; ARP_BODY_LEN] = body.get(..ARP_BODY_LEN)?.try_into().ok()?;
    if u16::from_be_bytes([body[0], body[1]]) != ARP_HTYPE_ETHERNET
        || u16::from_be_bytes([body[2], body[3]]) != ETHERTYPE_IPV4
        || body[4] != 6
        || body[5] != 4
    {
        return None;
    }
    let op = match u16::from_be_bytes([body[6], body[7]]) {
        1 => ArpOp::Request,
        2 => ArpOp::Reply,
        _ => return None,
    };
    let mac = |at: usize| -> Option<MacAddr> { Some(MacAddr(body.get(at..at + 6)?.try_into().ok()?)) };
    let ipv4 = |at: usize| -> Option<Ipv4Addr> {
        let octets: [u8; 4] = body.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(octets))
    };
    Some(ArpPacket { op, sender_mac: mac(8)?, sender_ip: ipv4(14)?, target_mac: mac(18)?, target_ip: ipv4(24)? })
}

/// A Neighbour Advertisement, as read by [`parse_neighbor_advertisement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborAdvertisement {
    /// The Router flag.
    pub router: bool,
    /// The Solicited flag.
    pub solicited: bool,
    /// The Override flag.
    pub override_flag: bool,
    /// The target address.
    pub target: Ipv6Addr,
    /// The Ethernet address of the Target Link-Layer Address option, if present.
    pub target_mac: Option<MacAddr>,
}

/// Reads an ICMPv6 Neighbour Advertisement message (what an ICMPv6 raw socket receives) with the
/// checks of RFC 4861 §7.1.2 that need no IPv6 header: type 136, code 0, at least 24 bytes, a
/// target that is not multicast, options of non-zero length that fit. The caller checks hop limit
/// 255 and the checksum ([`parse_claim`] does both). `None` for anything else.
#[must_use]
pub fn parse_neighbor_advertisement(message: &[u8]) -> Option<NeighborAdvertisement> {
    let header = message.get(..NA_MIN_LEN)?;
    if header.first() != Some(&ICMPV6_NEIGHBOR_ADVERTISEMENT) || header.get(1) != Some(&0) {
        return None;
    }
    let flags = *header.get(4)?;
    let target_octets: [u8; 16] = header.get(8..24)?.try_into().ok()?;
    let target = Ipv6Addr::from(target_octets);
    if target.is_multicast() {
        return None;
    }
    let mut target_mac = None;
    let mut options = message.get(NA_MIN_LEN..)?;
    while !options.is_empty() {
        let kind = *options.first()?;
        let len = usize::from(*options.get(1)?) * 8;
        if len == 0 {
            return None;
        }
        let option = options.get(..len)?;
        if kind == NDP_OPTION_TARGET_LINK_LAYER_ADDRESS && len == 8 && target_mac.is_none() {
            target_mac = Some(MacAddr(option.get(2..8)?.try_into().ok()?));
        }
        options = options.get(len..)?;
    }
    Some(NeighborAdvertisement {
        router: flags & NA_FLAG_ROUTER != 0,
        solicited: flags & NA_FLAG_SOLICITED != 0,
        override_flag: flags & NA_FLAG_OVERRIDE != 0,
        target,
        target_mac,
    })
}

/// What kind of packet made a [`Claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimKind {
    /// An ARP request whose sender address is the claimed address (a gratuitous request, or a
    /// host using the address to ask for another).
    ArpRequest,
    /// An ARP reply.
    ArpReply,
    /// A Neighbour Advertisement.
    NeighborAdvertisement,
}

/// "Address `address` is at `mac`", read from a frame on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claimed address.
    pub address: IpAddr,
    /// The Ethernet address that claims it.
    pub mac: MacAddr,
    /// The packet it came from.
    pub kind: ClaimKind,
}

/// Reads the address claim in an Ethernet frame, for conflict detection: an ARP request or reply
/// with a non-zero sender address claims that address for its sender hardware address; a valid
/// Neighbour Advertisement (hop limit 255, correct checksum, the checks of
/// [`parse_neighbor_advertisement`], Solicited clear when sent to a multicast group) claims its
/// target for the Target Link-Layer Address, or for the frame's source when the option is
/// missing. Up to two VLAN tags are skipped; IPv6 extension headers are not (NDP never uses
/// them). `None` for every other frame, and for any malformed input: it never panics.
#[must_use]
pub fn parse_claim(frame: &[u8]) -> Option<Claim> {
    let source_mac = MacAddr(frame.get(6..12)?.try_into().ok()?);
    let mut ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let mut payload = frame.get(ETHERNET_HEADER_LEN..)?;
    for _ in 0..2 {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        ethertype = u16::from_be_bytes(payload.get(2..4)?.try_into().ok()?);
        payload = payload.get(4..)?;
    }
    match ethertype {
        ETHERTYPE_ARP => {
            let arp = parse_arp(payload)?;
            if arp.sender_ip.is_unspecified() {
                return None; // an ARP probe (RFC 5227) claims nothing
            }
            let kind = match arp.op {
                ArpOp::Request => ClaimKind::ArpRequest,
                ArpOp::Reply => ClaimKind::ArpReply,
            };
            Some(Claim { address: IpAddr::V4(arp.sender_ip), mac: arp.sender_mac, kind })
        }
        ETHERTYPE_IPV6 => {
            let header = payload.get(..IPV6_HEADER_LEN)?;
            if header.first()? >> 4 != 6 || *header.get(6)? != IPPROTO_ICMPV6 || *header.get(7)? != 255 {
                return None;
            }
            let length = usize::from(u16::from_be_bytes(header.get(4..6)?.try_into().ok()?));
            let message = payload.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + length)?;
            let source = Ipv6Addr::from(<[u8; 16]>::try_from(header.get(8..24)?).ok()?);
            let destination = Ipv6Addr::from(<[u8; 16]>::try_from(header.get(24..40)?).ok()?);
            let carried = u16::from_be_bytes(message.get(2..4)?.try_into().ok()?);
            if icmpv6_checksum(source, destination, message) != carried {
                return None;
            }
            let na = parse_neighbor_advertisement(message)?;
            if destination.is_multicast() && na.solicited {
                return None;
            }
            Some(Claim {
                address: IpAddr::V6(na.target),
                mac: na.target_mac.unwrap_or(source_mac),
                kind: ClaimKind::NeighborAdvertisement,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a]);
    const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    fn link_local() -> Ipv6Addr {
        "fe80::42:c0ff:fe00:20a".parse().unwrap()
    }

    fn target() -> Ipv6Addr {
        "2001:db8::10".parse().unwrap()
    }

    #[rustfmt::skip]
    const ARP_REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,  // Ethernet, IPv4, 6, 4, request
        0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a,              // sender MAC
        0xc0, 0x00, 0x02, 0x0a,                          // sender IP 192.0.2.10
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,              // target MAC: broadcast
        0xc0, 0x00, 0x02, 0x0a,                          // target IP 192.0.2.10
    ];

    /// Computed independently (Python, RFC 4443 pseudo-header sum): checksum 0xa4bc.
    #[rustfmt::skip]
    const NA: [u8; 32] = [
        0x88, 0x00, 0xa4, 0xbc,                          // type 136, code 0, checksum
        0x20, 0x00, 0x00, 0x00,                          // R=0 S=0 O=1, reserved
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,  // target 2001:db8::10
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
        0x02, 0x01, 0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a,  // option 2 (TLLA), 1×8 bytes, MAC
    ];

    #[test]
    fn arp_request_golden_bytes() {
        assert_eq!(gratuitous_arp(ArpOp::Request, MAC, V4), ARP_REQUEST);
    }

    #[test]
    fn arp_reply_golden_bytes() {
        let mut expected = ARP_REQUEST;
        expected[7] = 0x02;
        assert_eq!(gratuitous_arp(ArpOp::Reply, MAC, V4), expected);
    }

    #[test]
    fn arp_frame_golden_bytes() {
        let frame = gratuitous_arp_frame(ArpOp::Reply, MAC, V4);
        assert_eq!(frame[..14], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a, 0x08, 0x06]);
        assert_eq!(frame[14..], gratuitous_arp(ArpOp::Reply, MAC, V4));
    }

    #[test]
    fn na_golden_bytes() {
        assert_eq!(unsolicited_na(link_local(), MAC, target()), NA);
    }

    #[test]
    fn na_frame_golden_bytes() {
        let frame = unsolicited_na_frame(link_local(), MAC, target());
        #[rustfmt::skip]
        let headers: [u8; 54] = [
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a, 0x86, 0xdd,
            0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff,  // v6, length 32, ICMPv6, hop limit 255
            0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42, 0xc0, 0xff, 0xfe, 0x00, 0x02, 0x0a,
            0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        ];
        assert_eq!(frame[..54], headers);
        assert_eq!(frame[54..], NA);
    }

    #[test]
    fn na_frame_agrees_with_etherparse() {
        let frame = unsolicited_na_frame(link_local(), MAC, target());
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = packet.net else { panic!("not IPv6") };
        assert_eq!(ip.header().hop_limit(), 255);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = packet.transport else { panic!("not ICMPv6") };
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()));
        let etherparse::Icmpv6Type::NeighborAdvertisement(h) = icmp.header().icmp_type else { panic!("not an NA") };
        assert!(h.r#override && !h.solicited && !h.router);
    }

    #[test]
    fn multicast_mac_of_all_nodes() {
        assert_eq!(MacAddr::ipv6_multicast(ALL_NODES), ALL_NODES_MAC);
        assert_eq!(ALL_NODES_MAC.to_string(), "33:33:00:00:00:01");
    }

    #[test]
    fn mac_text_round_trips() {
        assert_eq!("02:42:C0:00:02:0a".parse::<MacAddr>().unwrap(), MAC);
        assert_eq!("02-42-c0-00-02-0a".parse::<MacAddr>().unwrap(), MAC);
        assert_eq!(MAC.to_string(), "02:42:c0:00:02:0a");
        assert_eq!(format!("{MAC:?}"), "02:42:c0:00:02:0a");
        for bad in
            ["", "02:42:c0:00:02", "02:42:c0:00:02:0a:01", "2:42:c0:00:02:0a", "02:42:c0:00:02:zz", "+2:42:c0:00:02:0a"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn our_own_packets_parse_back_as_claims() {
        for op in [ArpOp::Request, ArpOp::Reply] {
            let frame = gratuitous_arp_frame(op, MAC, V4);
            let arp = parse_arp(&frame[14..]).unwrap();
            assert_eq!(
                arp,
                ArpPacket { op, sender_mac: MAC, sender_ip: V4, target_mac: MacAddr::BROADCAST, target_ip: V4 }
            );
            let kind = if op == ArpOp::Request { ClaimKind::ArpRequest } else { ClaimKind::ArpReply };
            assert_eq!(parse_claim(&frame), Some(Claim { address: IpAddr::V4(V4), mac: MAC, kind }));
        }
        let na = parse_neighbor_advertisement(&NA).unwrap();
        assert_eq!(
            na,
            NeighborAdvertisement {
                router: false,
                solicited: false,
                override_flag: true,
                target: target(),
                target_mac: Some(MAC)
            }
        );
        let frame = unsolicited_na_frame(link_local(), MAC, target());
        assert_eq!(
            parse_claim(&frame),
            Some(Claim { address: IpAddr::V6(target()), mac: MAC, kind: ClaimKind::NeighborAdvertisement })
        );
    }

    #[test]
    fn padded_and_vlan_tagged_frames_parse() {
        let mut padded = gratuitous_arp_frame(ArpOp::Reply, MAC, V4).to_vec();
        padded.resize(60, 0);
        assert!(parse_claim(&padded).is_some());

        let frame = unsolicited_na_frame(link_local(), MAC, target());
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]); // VLAN 5
        tagged.extend_from_slice(&frame[12..]);
        tagged.extend_from_slice(&[0; 4]); // padding after the IPv6 payload
        assert_eq!(parse_claim(&tagged).unwrap().address, IpAddr::V6(target()));
    }

    #[test]
    fn na_without_tlla_claims_for_the_frame_source() {
        let other = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
        let mut body = NA[..24].to_vec();
        body[2] = 0;
        body[3] = 0;
        let checksum = icmpv6_checksum(link_local(), ALL_NODES, &body);
        body[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = unsolicited_na_frame(link_local(), other, target())[..54].to_vec();
        frame[18..20].copy_from_slice(&24u16.to_be_bytes());
        frame.extend_from_slice(&body);
        assert_eq!(parse_claim(&frame).unwrap().mac, other);
    }

    #[test]
    fn invalid_packets_claim_nothing() {
        let frame = unsolicited_na_frame(link_local(), MAC, target());
        let mut bad_checksum = frame;
        bad_checksum[57] ^= 1;
        assert_eq!(parse_claim(&bad_checksum), None);
        let mut low_hop_limit = frame;
        low_hop_limit[21] = 64;
        assert_eq!(parse_claim(&low_hop_limit), None);
        let mut solicited_to_multicast = NA;
        solicited_to_multicast[4] |= NA_FLAG_SOLICITED;
        let mut frame2 = frame[..54].to_vec();
        solicited_to_multicast[2..4].copy_from_slice(&[0, 0]);
        let sum = icmpv6_checksum(link_local(), ALL_NODES, &solicited_to_multicast);
        solicited_to_multicast[2..4].copy_from_slice(&sum.to_be_bytes());
        frame2.extend_from_slice(&solicited_to_multicast);
        assert_eq!(parse_claim(&frame2), None);
        assert!(parse_neighbor_advertisement(&solicited_to_multicast).unwrap().solicited);
        let mut zero_option = NA;
        zero_option[25] = 0;
        assert_eq!(parse_neighbor_advertisement(&zero_option), None);
        let mut multicast_target = NA;
        multicast_target[8] = 0xff;
        assert_eq!(parse_neighbor_advertisement(&multicast_target), None);
        assert_eq!(parse_neighbor_advertisement(&NA[..23]), None);
        assert_eq!(parse_neighbor_advertisement(&NA[..30]), None, "truncated option");

        let mut probe = gratuitous_arp_frame(ArpOp::Request, MAC, V4);
        probe[28..32].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_claim(&probe), None, "an ARP probe claims nothing");
        let mut rarp = gratuitous_arp(ArpOp::Request, MAC, V4);
        rarp[7] = 3;
        assert_eq!(parse_arp(&rarp), None);
        let mut ipoib = gratuitous_arp(ArpOp::Request, MAC, V4);
        ipoib[4] = 20;
        assert_eq!(parse_arp(&ipoib), None);
        assert_eq!(parse_arp(&ARP_REQUEST[..27]), None);
        assert_eq!(parse_claim(&[]), None);
        assert_eq!(parse_claim(&frame[..13]), None);
        assert_eq!(parse_claim(&frame[..60]), None, "IPv6 payload cut short");
    }

    #[test]
    fn checksum_handles_odd_lengths() {
        // RFC 1071 example shape: an odd trailing byte is padded with zero.
        let a = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED, &[0, 0, 0, 0, 0xab]);
        let b = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED, &[0, 0, 0, 0, 0xab, 0]);
        assert_ne!(a, b, "the length in the pseudo-header differs");
        assert_eq!(icmpv6_checksum(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED, &[]), !58u16);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_claim(&bytes);
            let _ = parse_arp(&bytes);
            let _ = parse_neighbor_advertisement(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_mutated_packets(
            flips in proptest::collection::vec((0usize..NA_FRAME_LEN, any::<u8>()), 1..6),
            cut in 0usize..=NA_FRAME_LEN,
        ) {
            for frame in [unsolicited_na_frame(link_local(), MAC, target()).to_vec(), gratuitous_arp_frame(ArpOp::Reply, MAC, V4).to_vec()] {
                let mut frame = frame;
                for (at, value) in &flips {
                    if let Some(byte) = frame.get_mut(*at) {
                        *byte = *value;
                    }
                }
                frame.truncate(cut);
                let _ = parse_claim(&frame);
                let _ = parse_arp(frame.get(14..).unwrap_or(&[]));
                let _ = parse_neighbor_advertisement(frame.get(54..).unwrap_or(&[]));
            }
        }

        #[test]
        fn every_built_packet_parses_back(mac in any::<[u8; 6]>(), v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(), ll in any::<u64>()) {
            let mac = MacAddr(mac);
            let v4 = Ipv4Addr::from(v4);
            prop_assume!(!v4.is_unspecified());
            let arp = parse_claim(&gratuitous_arp_frame(ArpOp::Reply, mac, v4)).unwrap();
            prop_assert_eq!(arp, Claim { address: IpAddr::V4(v4), mac, kind: ClaimKind::ArpReply });
            let target = Ipv6Addr::from(v6);
            prop_assume!(!target.is_multicast());
            let source = Ipv6Addr::from((0xfe80u128 << 112) | u128::from(ll));
            let na = parse_claim(&unsolicited_na_frame(source, mac, target)).unwrap();
            prop_assert_eq!(na, Claim { address: IpAddr::V6(target), mac, kind: ClaimKind::NeighborAdvertisement });
        }
    }
}
