//! Kernel tests of `core::announce` (run as root): gratuitous ARP and unsolicited NA sent through
//! real sockets on one end of a veth pair, captured on the other end with an `AF_PACKET`
//! `ETH_P_ALL` socket and checked field by field; the burst's count, spacing and stop on the
//! wire; conflict claims read from the kernel's own ARP replies and NAs. Every test runs in its
//! own network namespace with documentation addresses only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{ErrorKind, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use purelb::{
    core::announce::{
        ALL_NODES, ALL_NODES_MAC, AnnounceError, BurstConfig, Claim, ClaimKind, ETH_P_ALL, LinkInfo, MacAddr,
        SocketTransmitter, icmpv6_checksum, link_layer_sockaddr, open_packet_capture, parse_claim, send_gratuitous_arp,
        send_unsolicited_na, spawn_burst, try_send_unsolicited_na,
    },
    testing::{NetnsHandle, in_new_netns},
};

const SENDER: &str = "pl-a";
const PEER: &str = "pl-b";
const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PEER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

fn v6() -> Ipv6Addr {
    "2001:db8::10".parse().unwrap()
}

fn peer_v6() -> Ipv6Addr {
    "2001:db8::20".parse().unwrap()
}

/// The interface as the agent would read it with netlink; here from `ip -j`.
fn link_info(ns: &NetnsHandle, name: &str) -> LinkInfo {
    let links: serde_json::Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", name])).unwrap();
    let link = &links[0];
    let index = u32::try_from(link["ifindex"].as_u64().unwrap()).unwrap();
    let mac: MacAddr = link["address"].as_str().unwrap().parse().unwrap();
    LinkInfo { name: name.into(), index, mac, link_local: link_local(ns, name).map(|(address, _)| address) }
}

/// The link-local address of `name` and whether it is still tentative.
fn link_local(ns: &NetnsHandle, name: &str) -> Option<(Ipv6Addr, bool)> {
    let out = ns.ip(&["-j", "-6", "addr", "show", "dev", name, "scope", "link"]);
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let infos = parsed.get(0)?.get("addr_info")?.as_array()?;
    infos.iter().find_map(|info| {
        let address: Ipv6Addr = info.get("local")?.as_str()?.parse().ok()?;
        let tentative = info.get("tentative").and_then(serde_json::Value::as_bool).unwrap_or(false);
        Some((address, tentative))
    })
}

/// A veth pair `pl-a` (192.0.2.10/24, 2001:db8::10/64) – `pl-b`, both up. With `dad` false,
/// DAD is off on both ends so the link-local addresses are usable at once.
fn veth_pair(ns: &NetnsHandle, dad: bool) -> (LinkInfo, LinkInfo) {
    let _ = ns.ip(&["link", "add", SENDER, "type", "veth", "peer", "name", PEER]);
    if !dad {
        for name in [SENDER, PEER] {
            let _ = ns.run("sysctl", &["-qw", &format!("net.ipv6.conf.{name}.accept_dad=0")]);
        }
    }
    let _ = ns.ip(&["addr", "add", "192.0.2.10/24", "dev", SENDER]);
    let _ = ns.ip(&["addr", "add", "2001:db8::10/64", "dev", SENDER, "nodad"]);
    for name in [SENDER, PEER] {
        let _ = ns.ip(&["link", "set", name, "up"]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_local(ns, SENDER).is_none() || link_local(ns, PEER).is_none() {
        assert!(Instant::now() < deadline, "no link-local address after 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (link_info(ns, SENDER), link_info(ns, PEER))
}

/// Every frame seen on one interface, with the time it was read.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Vec<u8>)>>,
}

impl Capture {
    fn start(link: &LinkInfo) -> Self {
        let socket = open_packet_capture(link, ETH_P_ALL).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                match (&socket).read(&mut buf) {
                    Ok(n) => frames.push((Instant::now(), buf[..n].to_vec())),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => panic!("capture failed: {e}"),
                }
            }
            frames
        });
        Self { stop, thread }
    }

    /// Keeps capturing for `time`, then returns every frame seen since the start.
    async fn finish_after(self, time: Duration) -> Vec<(Instant, Vec<u8>)> {
        tokio::time::sleep(time).await;
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// ARP frames from `mac`.
fn arp_from(frames: &[(Instant, Vec<u8>)], mac: MacAddr) -> Vec<(Instant, Vec<u8>)> {
    frames
        .iter()
        .filter(|(_, f)| f.len() >= 42 && ethertype(f) == 0x0806 && f[6..12] == mac.octets())
        .cloned()
        .collect()
}

/// Neighbour advertisements (ICMPv6 type 136) from `mac` for `target`.
fn na_from(frames: &[(Instant, Vec<u8>)], mac: MacAddr, target: Ipv6Addr) -> Vec<(Instant, Vec<u8>)> {
    frames
        .iter()
        .filter(|(_, f)| {
            f.len() >= 78
                && ethertype(f) == 0x86dd
                && f[6..12] == mac.octets()
                && f[20] == 58
                && f[54] == 136
                && f[62..78] == target.octets()
        })
        .cloned()
        .collect()
}

/// Checks every field of a gratuitous ARP frame.
fn assert_gratuitous_arp(frame: &[u8], mac: MacAddr, address: Ipv4Addr, opcode: u16) {
    assert_eq!(frame[0..6], [0xff; 6], "Ethernet destination: broadcast");
    assert_eq!(frame[6..12], mac.octets(), "Ethernet source: the interface");
    assert_eq!(ethertype(frame), 0x0806);
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Arp(arp)) = packet.net else { panic!("not ARP: {frame:02x?}") };
    assert_eq!(arp.hw_addr_type(), etherparse::ArpHardwareId::ETHERNET);
    assert_eq!(arp.proto_addr_type(), etherparse::EtherType::IPV4);
    assert_eq!((arp.hw_addr_size(), arp.proto_addr_size()), (6, 4));
    assert_eq!(arp.operation().0, opcode);
    assert_eq!(arp.sender_hw_addr(), mac.octets());
    assert_eq!(arp.sender_protocol_addr(), address.octets());
    assert_eq!(arp.target_hw_addr(), [0xff; 6], "target MAC: broadcast, as Go PureLB/MetalLB");
    assert_eq!(arp.target_protocol_addr(), address.octets());
}

/// Checks every field of an unsolicited NA frame.
fn assert_unsolicited_na(frame: &[u8], link: &LinkInfo, target: Ipv6Addr) {
    assert_eq!(frame[0..6], ALL_NODES_MAC.octets(), "Ethernet destination: 33:33:00:00:00:01");
    assert_eq!(frame[6..12], link.mac.octets());
    assert_eq!(ethertype(frame), 0x86dd);
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &packet.net else { panic!("not IPv6") };
    let header = ip.header();
    assert_eq!(header.hop_limit(), 255);
    assert_eq!(header.next_header(), etherparse::IpNumber::IPV6_ICMP);
    assert_eq!(header.source_addr(), link.link_local.unwrap(), "from the link-local address");
    assert_eq!(header.destination_addr(), ALL_NODES);
    assert_eq!(header.payload_length(), 32);
    let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else { panic!("not ICMPv6") };
    assert!(icmp.is_checksum_valid(header.source(), header.destination()), "ICMPv6 checksum");
    let message = &frame[54..];
    assert_eq!(icmpv6_checksum(header.source_addr(), ALL_NODES, message), u16::from_be_bytes([message[2], message[3]]));
    let etherparse::Icmpv6Type::NeighborAdvertisement(flags) = icmp.header().icmp_type else { panic!("not an NA") };
    assert!(!flags.router && !flags.solicited && flags.r#override, "R=0 S=0 O=1: {flags:?}");
    assert_eq!(message[1], 0, "code 0");
    assert_eq!(message[8..24], target.octets(), "target");
    assert_eq!(message[24..26], [2, 1], "Target Link-Layer Address option, 8 bytes");
    assert_eq!(message[26..32], link.mac.octets(), "TLLA = the interface's MAC");
}

#[test]
fn gratuitous_arp_request_and_reply_reach_the_peer() {
    in_new_netns(|ns| async move {
        let (sender, peer) = veth_pair(&ns, false);
        let capture = Capture::start(&peer);
        send_gratuitous_arp(&sender, V4).unwrap();
        let frames = arp_from(&capture.finish_after(Duration::from_millis(300)).await, sender.mac);
        assert_eq!(frames.len(), 2, "a request and a reply");
        assert_gratuitous_arp(&frames[0].1, sender.mac, V4, 1);
        assert_gratuitous_arp(&frames[1].1, sender.mac, V4, 2);
        for (kind, (_, frame)) in [ClaimKind::ArpRequest, ClaimKind::ArpReply].into_iter().zip(&frames) {
            assert_eq!(parse_claim(frame), Some(Claim { address: IpAddr::V4(V4), mac: sender.mac, kind }));
        }
    });
}

/// Closing the `AF_PACKET` socket waits for an RCU grace period in the kernel (10–15 ms in the
/// lab); a gratuitous ARP sent from a runtime worker must not wait for it: that close stalled the
/// agent's watch events behind it (docs/scale.md, "The tail"). Each send is a few system calls;
/// the median of 15 is well under the kernel's grace period.
#[test]
fn a_gratuitous_arp_does_not_wait_for_the_kernel_to_release_its_socket() {
    in_new_netns(|ns| async move {
        let (sender, _peer) = veth_pair(&ns, false);
        let mut took: Vec<Duration> = (0..15)
            .map(|_| {
                let start = Instant::now();
                send_gratuitous_arp(&sender, V4).unwrap();
                start.elapsed()
            })
            .collect();
        took.sort();
        assert!(took[7] < Duration::from_millis(2), "median send took {:?} (all: {took:?})", took[7]);
    });
}

#[test]
fn unsolicited_na_waits_for_the_link_local_address_and_reaches_the_peer() {
    in_new_netns(|ns| async move {
        // DAD on: the link-local address starts tentative and the kernel refuses it as a source.
        let (sender, peer) = veth_pair(&ns, true);
        let tentative = link_local(&ns, SENDER).unwrap().1;
        let capture = Capture::start(&peer);
        // DAD takes a second or more (kernel defaults in a new namespace), so the address is
        // still tentative right after the link came up.
        assert!(tentative, "the link-local address should start tentative");
        match try_send_unsolicited_na(&sender, v6()) {
            Err(AnnounceError::Bind { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EADDRNOTAVAIL)),
            other => panic!("expected EADDRNOTAVAIL while tentative, got {other:?}"),
        }
        let started = Instant::now();
        send_unsolicited_na(&sender, v6(), Duration::from_secs(10), Duration::from_millis(50)).await.unwrap();
        let waited = started.elapsed();
        assert!(!link_local(&ns, SENDER).unwrap().1, "sent only once the address was usable");
        let frames = na_from(&capture.finish_after(Duration::from_millis(300)).await, sender.mac, v6());
        assert_eq!(frames.len(), 1, "one NA (sent after {waited:?})");
        assert_unsolicited_na(&frames[0].1, &sender, v6());
        assert_eq!(
            parse_claim(&frames[0].1),
            Some(Claim { address: IpAddr::V6(v6()), mac: sender.mac, kind: ClaimKind::NeighborAdvertisement })
        );
    });
}

#[test]
fn na_reports_a_link_local_that_never_becomes_usable() {
    in_new_netns(|ns| async move {
        let (mut sender, _peer) = veth_pair(&ns, false);
        // A link-local address the interface does not have: EADDRNOTAVAIL until the wait ends.
        sender.link_local = Some("fe80::dead:beef".parse().unwrap());
        let error = send_unsolicited_na(&sender, v6(), Duration::from_millis(200), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(error, AnnounceError::Tentative { .. }), "{error}");
        assert_eq!(error.raw_os_error(), Some(libc::EADDRNOTAVAIL));
        assert!(error.to_string().contains(SENDER), "{error}");
    });
}

#[test]
fn sending_on_a_missing_interface_fails_with_context() {
    in_new_netns(|ns| async move {
        let (mut sender, _peer) = veth_pair(&ns, false);
        sender.index = 999;
        let error = send_gratuitous_arp(&sender, V4).unwrap_err();
        assert!(matches!(error, AnnounceError::Send { .. }), "{error}");
        assert!(error.raw_os_error().is_some());
        let text = error.to_string();
        assert!(text.contains(SENDER) && text.contains("192.0.2.10"), "{text}");
    });
}

#[test]
fn burst_count_and_spacing_on_the_wire() {
    in_new_netns(|ns| async move {
        let (sender, peer) = veth_pair(&ns, false);
        let capture = Capture::start(&peer);
        let config = BurstConfig {
            count: 3,
            interval: Duration::from_millis(200),
            initial_delay: Duration::from_millis(100),
            refresh_interval: None,
        };
        let start = Instant::now();
        let handle = spawn_burst(Arc::new(SocketTransmitter::default()), sender.clone(), IpAddr::V4(V4), config);
        let report = tokio::time::timeout(Duration::from_secs(5), handle.wait()).await.unwrap().unwrap();
        assert_eq!((report.sent, report.errors, report.stopped), (3, 0, false), "{:?}", report.last_error);
        let frames = arp_from(&capture.finish_after(Duration::from_millis(200)).await, sender.mac);
        assert_eq!(frames.len(), 6, "3 × (request + reply)");
        let requests: Vec<Instant> = frames.iter().step_by(2).map(|(t, _)| *t).collect();
        for (i, pair) in frames.chunks(2).enumerate() {
            assert_gratuitous_arp(&pair[0].1, sender.mac, V4, 1);
            assert_gratuitous_arp(&pair[1].1, sender.mac, V4, 2);
            assert!(pair[1].0 - pair[0].0 < Duration::from_millis(100), "pair {i} goes out together");
        }
        let first = requests[0] - start;
        assert!(first >= Duration::from_millis(80) && first < Duration::from_millis(1000), "initial delay {first:?}");
        for gap in requests.windows(2).map(|w| w[1] - w[0]) {
            assert!(gap >= Duration::from_millis(150) && gap < Duration::from_millis(1000), "interval {gap:?}");
        }
    });
}

#[test]
fn burst_stops_on_the_wire_when_ownership_is_lost() {
    in_new_netns(|ns| async move {
        let (sender, peer) = veth_pair(&ns, false);
        let capture = Capture::start(&peer);
        let config = BurstConfig {
            count: 10,
            interval: Duration::from_millis(200),
            initial_delay: Duration::ZERO,
            refresh_interval: Some(Duration::from_millis(200)),
        };
        let handle = spawn_burst(Arc::new(SocketTransmitter::default()), sender.clone(), IpAddr::V6(v6()), config);
        tokio::time::sleep(Duration::from_millis(500)).await; // sends at 0, 200, 400 ms
        let lost_at = Instant::now();
        let report = tokio::time::timeout(Duration::from_secs(1), handle.stop_and_wait()).await.unwrap().unwrap();
        assert!(report.stopped);
        assert_eq!(report.errors, 0, "{:?}", report.last_error);
        assert!((2..=4).contains(&report.sent), "sent {} before the stop", report.sent);
        // Wait for what would have been several more announcements.
        let frames = na_from(&capture.finish_after(Duration::from_millis(800)).await, sender.mac, v6());
        assert_eq!(frames.len() as u32, report.sent, "every sent NA arrived, nothing after the stop");
        // (The count above is the real check; read times lag the wire a little on a busy machine.)
        assert!(frames.iter().all(|(t, _)| *t < lost_at + Duration::from_millis(150)), "a frame after the stop");
        for (_, frame) in &frames {
            assert_unsolicited_na(frame, &sender, v6());
        }
    });
}

/// Sends a raw Ethernet frame on `link` (as another host would put it on the wire).
fn send_frame(link: &LinkInfo, frame: &[u8]) {
    let socket = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None).unwrap();
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let destination = MacAddr(frame[0..6].try_into().unwrap());
    socket.send_to(frame, &link_layer_sockaddr(link.index, ethertype, destination).unwrap()).unwrap();
}

#[test]
fn claims_are_read_from_the_kernels_own_answers() {
    in_new_netns(|ns| async move {
        let (sender, peer) = veth_pair(&ns, false);
        let _ = ns.ip(&["addr", "add", "192.0.2.20/24", "dev", PEER]);
        let _ = ns.ip(&["addr", "add", "2001:db8::20/64", "dev", PEER, "nodad"]);
        let capture = Capture::start(&sender);
        // A host at 192.0.2.30 / 2001:db8::30 behind pl-a asks for pl-b's addresses; pl-b's kernel
        // answers with an ARP reply and a solicited NA, which is what a conflicting host sends.
        // (The asker's addresses are not configured anywhere, or the kernel would drop the
        // questions as coming from itself.)
        let asker_v4 = Ipv4Addr::new(192, 0, 2, 30);
        let mut arp_request = vec![0xff; 6];
        arp_request.extend_from_slice(&sender.mac.octets());
        arp_request.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
        arp_request.extend_from_slice(&sender.mac.octets());
        arp_request.extend_from_slice(&asker_v4.octets());
        arp_request.extend_from_slice(&[0; 6]);
        arp_request.extend_from_slice(&PEER_V4.octets());
        send_frame(&sender, &arp_request);

        let asker_v6: Ipv6Addr = "2001:db8::30".parse().unwrap();
        let solicited_node: Ipv6Addr = "ff02::1:ff00:20".parse().unwrap();
        let mut solicitation = vec![0x87, 0, 0, 0, 0, 0, 0, 0];
        solicitation.extend_from_slice(&peer_v6().octets());
        solicitation.extend_from_slice(&[1, 1]); // Source Link-Layer Address option
        solicitation.extend_from_slice(&sender.mac.octets());
        let checksum = icmpv6_checksum(asker_v6, solicited_node, &solicitation);
        solicitation[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut ns_frame = MacAddr::ipv6_multicast(solicited_node).octets().to_vec();
        ns_frame.extend_from_slice(&sender.mac.octets());
        ns_frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
        ns_frame.extend_from_slice(&asker_v6.octets());
        ns_frame.extend_from_slice(&solicited_node.octets());
        ns_frame.extend_from_slice(&solicitation);
        send_frame(&sender, &ns_frame);

        let frames = capture.finish_after(Duration::from_millis(500)).await;
        let claims: Vec<Claim> = frames.iter().filter_map(|(_, f)| parse_claim(f)).collect();
        assert!(
            claims.contains(&Claim { address: IpAddr::V4(PEER_V4), mac: peer.mac, kind: ClaimKind::ArpReply }),
            "{claims:?}"
        );
        assert!(
            claims.contains(&Claim {
                address: IpAddr::V6(peer_v6()),
                mac: peer.mac,
                kind: ClaimKind::NeighborAdvertisement
            }),
            "{claims:?}"
        );
        // The question itself, outgoing on pl-a, claims the asker's address for pl-a's MAC.
        assert!(
            claims.contains(&Claim { address: IpAddr::V4(asker_v4), mac: sender.mac, kind: ClaimKind::ArpRequest }),
            "{claims:?}"
        );
    });
}
