//! Gratuitous ARP (IPv4) and unsolicited Neighbour Advertisements (IPv6): the packets, the
//! sockets that send them, the burst that repeats them after a takeover, and the parsers that
//! recognise another host claiming an address we hold.
//!
//! After the elected node adds a `local` address, the neighbours' ARP/ND caches and the
//! switches' forwarding tables still point at the previous holder. The agent announces the new
//! location: for IPv4 an ARP request and an ARP reply, both gratuitous (sender = target = the
//! address, broadcast), exactly as the Go PureLB and MetalLB send them; for IPv6 one unsolicited
//! NA (Override set) to all nodes, `ff02::1`, from the interface's link-local address. The kernel
//! does neither on its own: adding an IPv6 address only starts DAD, whose probes come from `::`.
//!
//! Pieces:
//!
//! - packets (pure, golden-byte tested): [`gratuitous_arp`], [`gratuitous_arp_frame`],
//!   [`unsolicited_na`], [`unsolicited_na_frame`];
//! - conflict detection (pure, never panics on any input): [`parse_claim`] on a captured frame,
//!   [`parse_arp`] and [`parse_neighbor_advertisement`] on bodies;
//! - sockets: [`send_gratuitous_arp`] (`AF_PACKET` datagram socket, the kernel writes the
//!   Ethernet header), [`send_unsolicited_na`] (ICMPv6 raw socket, the kernel writes the IPv6
//!   header and checksum; retries while the link-local address is still tentative),
//!   [`open_packet_capture`] for receiving frames on one interface, all behind the
//!   [`Transmitter`] trait ([`SocketTransmitter`] is the real one);
//! - the burst ([`run_burst`], [`spawn_burst`]): `count` announcements `interval` apart after
//!   `initialDelay`, then one every `refreshInterval` if set, stopped at once when ownership is
//!   lost ([`StopHandle`]); counts `purelb_garp_sent_total{family}` and `purelb_garp_errors_total`.
//!
//! The interface is described by [`LinkInfo`] (index, MAC, link-local address), which the
//! caller reads with netlink: sysfs cannot be trusted inside a network namespace.

mod burst;
mod packet;
mod socket;

pub use burst::{
    BurstConfig, BurstConfigError, BurstHandle, BurstReport, StopHandle, StopSignal, run_burst, spawn_burst,
    stop_channel,
};
pub use packet::{
    ALL_NODES, ALL_NODES_MAC, ARP_BODY_LEN, ARP_FRAME_LEN, ArpOp, ArpPacket, Claim, ClaimKind, ETHERTYPE_ARP,
    ETHERTYPE_IPV6, MacAddr, MacAddrParseError, NA_BODY_LEN, NA_FRAME_LEN, NeighborAdvertisement, gratuitous_arp,
    gratuitous_arp_frame, icmpv6_checksum, parse_arp, parse_claim, parse_neighbor_advertisement, unsolicited_na,
    unsolicited_na_frame,
};
pub use socket::{
    AnnounceError, ETH_P_ALL, LinkInfo, SocketTransmitter, Transmitter, link_layer_sockaddr, open_packet_capture,
    send_gratuitous_arp, send_unsolicited_na, try_send_unsolicited_na,
};
