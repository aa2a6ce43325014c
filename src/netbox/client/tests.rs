#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn ip_object(id: u64, address: &str, status: &str, description: &str) -> Value {
    json!({
        "id": id, "url": format!("http://netbox/api/ipam/ip-addresses/{id}/"), "display": address,
        "family": {"value": 4, "label": "IPv4"}, "address": address, "vrf": null,
        "tenant": {"id": 7, "url": "http://netbox/api/tenancy/tenants/7/", "display": "Kubernetes", "name": "Kubernetes", "slug": "kubernetes", "description": ""},
        "status": {"value": status, "label": status}, "role": null, "assigned_object_type": null,
        "dns_name": "", "description": description, "comments": "", "tags": [], "custom_fields": {},
        "created": "2026-01-01T00:00:00Z", "last_updated": "2026-01-01T00:00:00Z"
    })
}

#[test]
fn base_urls() {
    let b = Base::parse("https://netbox.example.com").unwrap();
    assert_eq!((b.prefix.as_str(), b.shown.as_str()), ("", "https://netbox.example.com"));
    assert_eq!(
        b.uri("/api/ipam/ip-addresses/?limit=1").unwrap().to_string(),
        "https://netbox.example.com/api/ipam/ip-addresses/?limit=1"
    );
    let b = Base::parse("http://192.0.2.5:8080/netbox/").unwrap();
    assert_eq!(b.prefix, "/netbox");
    assert_eq!(Base::parse("http://h/netbox/api/").unwrap().prefix, "/netbox");
    for bad in ["ftp://h", "netbox.example.com", "http://user:pw@h/", "http://h/?x=1", "", "http://"] {
        assert!(Base::parse(bad).is_err(), "{bad}");
    }
    let e = Base::parse("http://user:secret@h/").unwrap_err().to_string();
    assert!(e.contains("tokenSecretRef"), "{e}");
}

#[test]
fn filters_are_encoded() {
    let f = Filter {
        tenant: Some("k8s prod&x".into()),
        status: Some("reserved".into()),
        family: Some(Family::V6),
        description: Some("purelb:web/a b".into()),
        address: Some("2001:db8::1".parse().unwrap()),
    };
    assert_eq!(
        f.query(50),
        "tenant=k8s%20prod%26x&status=reserved&family=6&description=purelb%3Aweb%2Fa%20b&address=2001%3Adb8%3A%3A1&limit=50"
    );
    assert_eq!(Filter::default().query(1), "limit=1");
}

#[test]
fn objects_are_read_leniently_and_hostile_ones_skipped() {
    let o = IpAddressObject::from_value(ip_object(3, "192.0.2.10/24", "reserved", "")).unwrap();
    assert_eq!((o.id, o.ip.to_string(), o.prefix_len, o.status.as_str()), (3, "192.0.2.10".into(), 24, "reserved"));
    assert_eq!(o.tenant_slug(), Some("kubernetes"));
    let o = IpAddressObject::from_value(
        json!({"id": 1, "address": "2001:db8::5/64", "status": "active", "tenant": null, "description": null}),
    )
    .unwrap();
    assert_eq!((o.prefix_len, o.status.as_str(), o.tenant, o.description.as_str()), (64, "active", None, ""));
    for hostile in [
        json!({"id": 1, "address": "not-an-ip/24", "status": {"value": "reserved"}}),
        json!({"id": 1, "address": "192.0.2.1/33", "status": {"value": "reserved"}}),
        json!({"id": -1, "address": "192.0.2.1/24", "status": {"value": "reserved"}}),
        json!({"address": "192.0.2.1/24", "status": {"value": "reserved"}}),
        json!({"id": 1, "address": "192.0.2.1/24"}),
        json!({"id": 1, "address": 5, "status": {"value": "reserved"}}),
        json!({"id": 1, "address": "192.0.2.1/24", "status": {"value": 3}}),
        json!("a string"),
        json!(null),
    ] {
        assert!(IpAddressObject::from_value(hostile.clone()).is_none(), "{hostile}");
    }
}

#[test]
fn error_details_are_short_and_clean() {
    assert_eq!(detail_of(br#"{"detail": "Invalid token"}"#), "Invalid token");
    assert_eq!(
        detail_of(br#"{"tenant": ["Select a valid choice. x is not one of the available choices."]}"#),
        "tenant: Select a valid choice. x is not one of the available choices."
    );
    assert_eq!(detail_of(b"<html><h1>Server Error (500)</h1></html>"), "an HTML page");
    assert_eq!(detail_of(b""), "no details");
    let long = format!("{{\"detail\": \"{}\\n\\u0007evil\"}}", "a".repeat(1000));
    let d = detail_of(long.as_bytes());
    assert!(d.len() <= 200 && !d.contains('\n') && !d.contains('\u{7}'), "{d}");
}

#[test]
fn transient_errors() {
    let url = String::new();
    assert!(NetboxError::Unreachable { url: url.clone(), detail: String::new() }.is_transient());
    assert!(NetboxError::Timeout { url: url.clone(), method: "GET", timeout: Duration::from_secs(1) }.is_transient());
    assert!(NetboxError::Server { url: url.clone(), status: 502, detail: String::new() }.is_transient());
    assert!(NetboxError::Malformed { url: url.clone(), what: String::new() }.is_transient());
    assert!(!NetboxError::Auth { url: url.clone(), status: 403, detail: String::new() }.is_transient());
    assert!(!NetboxError::BadRequest { url, detail: String::new() }.is_transient());
}

/// Answers each connection with the next canned response (raw HTTP text) and records the
/// request heads.
struct Canned {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn canned(responses: Vec<Vec<u8>>) -> Canned {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for response in responses {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            seen.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
            if response.is_empty() {
                // Hang: never answer (the client must time out).
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        }
    });
    Canned { url, heads }
}

fn ok_json(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn status(code: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn client(url: &str, timeout: Duration) -> Client {
    Client::new(&Http::new(timeout), url, Token::new("t0ken"), timeout).unwrap()
}

#[tokio::test]
async fn pagination_follows_next_on_the_configured_host_and_sends_the_token() {
    let page1 = json!({"count": 3, "next": "http://wrong-host.internal/api/ipam/ip-addresses/?limit=2&offset=2&tenant=kubernetes",
        "previous": null, "results": [ip_object(1, "192.0.2.10/24", "reserved", ""), ip_object(2, "bogus", "reserved", "")]});
    let page2 = json!({"count": 3, "next": null, "previous": "http://x/api/ipam/ip-addresses/?limit=2&tenant=kubernetes",
        "results": [ip_object(3, "192.0.2.12/24", "reserved", "")]});
    let server = canned(vec![ok_json(&page1), ok_json(&page2)]).await;
    let c = client(&server.url, Duration::from_secs(10)).with_page_size(2);
    let filter = Filter { tenant: Some("kubernetes".into()), ..Filter::default() };
    let first = c.list_first(&filter).await.unwrap();
    assert_eq!((first.count, first.results.len(), first.skipped, first.has_next()), (3, 1, 1, true));
    let second = c.list_next(&first).await.unwrap().unwrap();
    assert_eq!(second.results[0].id, 3);
    assert!(c.list_next(&second).await.unwrap().is_none());
    let heads = server.heads.lock().unwrap().clone();
    assert!(heads[0].starts_with("GET /api/ipam/ip-addresses/?tenant=kubernetes&limit=2 HTTP/1.1"), "{}", heads[0]);
    assert!(
        heads[1].starts_with("GET /api/ipam/ip-addresses/?limit=2&offset=2&tenant=kubernetes HTTP/1.1"),
        "{}",
        heads[1]
    );
    assert!(heads.iter().all(|h| h.to_ascii_lowercase().contains("authorization: token t0ken")), "{heads:?}");
}

#[tokio::test]
async fn a_next_link_to_the_same_page_is_refused() {
    let page =
        json!({"count": 9, "next": "http://h/api/ipam/ip-addresses/?limit=200", "previous": null, "results": []});
    let server = canned(vec![ok_json(&page)]).await;
    let c = client(&server.url, Duration::from_secs(10));
    let e = c.list_first(&Filter::default()).await.unwrap_err();
    assert!(e.to_string().contains("same page"), "{e}");
}

#[tokio::test]
async fn bad_answers_are_errors_not_panics() {
    let truncated = {
        let body = json!({"count": 1, "next": null, "previous": null, "results": [ip_object(1, "192.0.2.10/24", "reserved", "")]}).to_string();
        let half = &body[..body.len() / 2];
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{half}", half.len())
            .into_bytes()
    };
    let cut_short = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"count\": 1,".to_vec();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (truncated, "malformed answer"),
        (cut_short, "failed"),
        (ok_json(&json!([1, 2])), "not an object"),
        (ok_json(&json!({"count": 1, "results": "x"})), "without results"),
        (ok_json(&json!({"results": []})), "without count"),
        (status(403, r#"{"detail": "Invalid token"}"#), "refused the API token (HTTP 403: Invalid token)"),
        (status(401, r#"{"detail": "Authentication credentials were not provided."}"#), "HTTP 401"),
        (
            status(400, r#"{"tenant": ["Select a valid choice. nope is not one of the available choices."]}"#),
            "HTTP 400: tenant: Select",
        ),
        (status(500, "<h1>Server Error (500)</h1>"), "HTTP 500: an HTML page"),
        (
            b"HTTP/1.1 301 Moved\r\nLocation: https://netbox/api/\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "redirect to https://netbox/api/",
        ),
        (b"garbage\r\n\r\n".to_vec(), "failed"),
    ];
    for (response, want) in cases {
        let server = canned(vec![response]).await;
        let c = client(&server.url, Duration::from_secs(10));
        let e = c.list_first(&Filter::default()).await.unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?} in {e:?}");
        assert!(!e.contains("t0ken"), "{e}");
    }
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_closed_port_is_unreachable() {
    let server = canned(vec![Vec::new()]).await;
    let c = client(&server.url, Duration::from_millis(300));
    let e = c.get(1).await.unwrap_err();
    assert!(matches!(e, NetboxError::Timeout { method: "GET", .. }), "{e}");
    assert!(e.is_transient());

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5));
    let e = c.get(1).await.unwrap_err();
    assert!(matches!(e, NetboxError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn patch_sends_json_and_if_match_and_reads_the_saved_object() {
    let saved = ip_object(5, "192.0.2.10/24", "active", "purelb:web/a");
    let body = saved.to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"2026-01-01T00:00:01Z\"\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let server = canned(vec![response.into_bytes()]).await;
    let c = client(&server.url, Duration::from_secs(10));
    let patch = IpAddressPatch { status: "active".into(), description: owner_description("web", "a") };
    let o = c.patch(5, &patch, Some("\"2026-01-01T00:00:00Z\"")).await.unwrap();
    assert_eq!((o.status.as_str(), o.description.as_str()), ("active", "purelb:web/a"));
    assert_eq!(o.etag.as_deref(), Some("\"2026-01-01T00:00:01Z\""));
    let head = server.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("patch /api/ipam/ip-addresses/5/ http/1.1"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("if-match: \"2026-01-01t00:00:00z\""), "{head}");
}

#[tokio::test]
async fn https_without_a_server_is_an_error_with_a_reason() {
    let c = Client::new(
        &Http::new(Duration::from_millis(500)),
        "https://127.0.0.1:1",
        Token::new("t"),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = c.get(1).await.unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:1"), "{e}");
}

/// Runs alone in its process under nextest (the recorder is global); under `cargo test` another
/// test may have installed one first, and then the numbers are not checked.
#[tokio::test]
async fn every_request_is_counted_and_timed() {
    let Ok(handle) = crate::telemetry::install_recorder(crate::telemetry::catalog::Component::Allocator) else {
        return;
    };
    let page = json!({"count": 0, "next": null, "previous": null, "results": []});
    let server = canned(vec![ok_json(&page), status(403, r#"{"detail": "Invalid token"}"#), Vec::new()]).await;
    let c = client(&server.url, Duration::from_millis(300));
    c.list_first(&Filter::default()).await.unwrap();
    c.list_first(&Filter::default()).await.unwrap_err();
    c.get(1).await.unwrap_err();
    let text = handle.render();
    for want in [
        "# HELP purelb_netbox_requests_total",
        "# HELP purelb_netbox_request_duration_seconds",
        "purelb_netbox_requests_total{method=\"GET\",code=\"200\"} 1",
        "purelb_netbox_requests_total{method=\"GET\",code=\"403\"} 1",
        "purelb_netbox_requests_total{method=\"GET\",code=\"timeout\"} 1",
        "purelb_netbox_request_duration_seconds_count{method=\"GET\"} 3",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}
