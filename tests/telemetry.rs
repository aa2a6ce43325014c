//! The telemetry HTTP server: `/metrics` in Prometheus text with `# HELP` lines and
//! `purelb_build_info`, `/healthz` always 200, `/readyz` 503 until ready and 200 after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use purelb::telemetry::{MetricsServer, Readiness, catalog, install_recorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let handle = install_recorder(catalog::Component::Agent).unwrap();
    metrics::counter!(catalog::GARP_SENT, "family" => "IPv4").increment(2);
    let readiness = Readiness::new();
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), handle, readiness.clone()).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "not ready before caches sync: {body}");
    readiness.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    readiness.set_ready(false);
    assert_eq!(get(addr, "/readyz").await.0, 503);

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains(&format!("purelb_build_info{{version=\"{}\"}} 1", purelb::VERSION)), "{body}");
    assert!(body.contains("# HELP purelb_build_info"), "{body}");
    assert!(body.contains("# HELP purelb_garp_sent_total"), "{body}");
    assert!(body.contains("purelb_garp_sent_total{family=\"IPv4\"} 2"), "{body}");
    // Counters whose labels are known at start exist at 0 before their first event.
    for zero in [
        "purelb_garp_sent_total{family=\"IPv6\"} 0",
        "purelb_garp_errors_total 0",
        "purelb_orphaned_ips_removed_total 0",
        "purelb_address_drift_repairs_total 0",
        "purelb_address_conflicts_total 0",
        "purelb_election_winner_changes_total 0",
        "purelb_endpointslice_sync_total 0",
        "purelb_endpointslice_sync_errors_total 0",
    ] {
        assert!(body.lines().any(|l| l == zero), "{zero} missing:\n{body}");
    }
    for line in body.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(body.contains(&format!("# HELP {name} ")), "{name} has no HELP line");
    }
    assert_eq!(get(addr, "/nothing").await.0, 404);
}
