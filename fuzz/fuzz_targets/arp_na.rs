//! The ARP/NA parser used for conflict detection reads every frame on the wire: it never
//! panics, a claim it reports is consistent with the frame, and what PureLB sends (gratuitous
//! ARP, unsolicited NA) reads back as the claim it makes, also with arbitrary NDP options
//! appended (length and checksum fixed up, so the fuzzer reaches the option parser).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use purelb::core::announce::{
    ArpOp, Claim, ClaimKind, MacAddr, gratuitous_arp_frame, icmpv6_checksum, parse_arp, parse_claim,
    parse_neighbor_advertisement, unsolicited_na_frame,
};

/// Ethernet header, then the IPv6 header, then the NA.
const ETHERNET: usize = 14;
const NA_AT: usize = ETHERNET + 40;

fuzz_target!(|data: &[u8]| {
    let _ = parse_arp(data);
    let _ = parse_neighbor_advertisement(data);
    if let Some(claim) = parse_claim(data) {
        match (claim.kind, claim.address) {
            (ClaimKind::ArpRequest | ClaimKind::ArpReply, IpAddr::V4(v4)) => assert!(!v4.is_unspecified()),
            (ClaimKind::NeighborAdvertisement, IpAddr::V6(_)) => {}
            (kind, address) => panic!("{kind:?} claims {address}"),
        }
    }

    // What we send reads back as our claim.
    let Some((head, rest)) = data.split_first_chunk::<38>() else { return };
    let mut mac_bytes = [0u8; 6];
    mac_bytes.copy_from_slice(&head[16..22]);
    let mac = MacAddr(mac_bytes);
    let v4 = Ipv4Addr::new(head[0], head[1], head[2], head[3]);
    let op = if head[4] & 1 == 0 { ArpOp::Request } else { ArpOp::Reply };
    let arp = parse_claim(&gratuitous_arp_frame(op, mac, v4));
    if v4.is_unspecified() {
        assert_eq!(arp, None);
    } else {
        let kind = if op == ArpOp::Request { ClaimKind::ArpRequest } else { ClaimKind::ArpReply };
        assert_eq!(arp, Some(Claim { address: IpAddr::V4(v4), mac, kind }));
    }

    let mut source = [0u8; 16];
    source.copy_from_slice(&head[..16]);
    let mut target = [0u8; 16];
    target.copy_from_slice(&head[22..38]);
    let (source, target) = (Ipv6Addr::from(source), Ipv6Addr::from(target));
    let mut frame = unsolicited_na_frame(source, mac, target).to_vec();
    let na = parse_claim(&frame);
    if target.is_multicast() {
        assert_eq!(na, None);
    } else {
        assert_eq!(na, Some(Claim { address: IpAddr::V6(target), mac, kind: ClaimKind::NeighborAdvertisement }));
    }

    // Arbitrary options after ours, with a correct length and checksum.
    frame.extend_from_slice(&rest[..rest.len().min(1024)]);
    let Ok(length) = u16::try_from(frame.len() - NA_AT) else { return };
    frame[ETHERNET + 4..ETHERNET + 6].copy_from_slice(&length.to_be_bytes());
    frame[NA_AT + 2..NA_AT + 4].copy_from_slice(&[0, 0]);
    let mut destination = [0u8; 16];
    destination.copy_from_slice(&frame[ETHERNET + 24..ETHERNET + 40]);
    let checksum = icmpv6_checksum(source, Ipv6Addr::from(destination), &frame[NA_AT..]);
    frame[NA_AT + 2..NA_AT + 4].copy_from_slice(&checksum.to_be_bytes());
    if let Some(claim) = parse_claim(&frame) {
        assert_eq!(claim.address, IpAddr::V6(target));
        assert_eq!(claim.kind, ClaimKind::NeighborAdvertisement);
    }
});
