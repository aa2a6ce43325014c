//! The lab's HTTP backend and client. [`serve`] is the server `purelb-lab serve` runs inside
//! a node's namespace: it listens on every address of the node (so a Service address added
//! later is served too) and answers `served by <node> at <address>`. [`get`] fetches a page
//! from inside any lab namespace (the client host, usually), without curl.

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{LabError, netns::in_netns};

/// Header naming the node that answered.
pub const NODE_HEADER: &str = "x-purelb-lab-node";

/// Serves HTTP on `port` of every address of the current namespace until the process ends.
///
/// # Errors
///
/// The port cannot be bound.
pub async fn serve(node: String, port: u16) -> std::io::Result<()> {
    // `[::]` accepts IPv4 too (net.ipv6.bindv6only is 0 in a new namespace).
    let listener = match std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(l) => l,
        Err(_) => std::net::TcpListener::bind(("0.0.0.0", port))?,
    };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let local = stream.local_addr().map(unmapped).ok();
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let at = local.map_or_else(|| "?".to_owned(), |a| a.to_string());
                let body = format!("served by {node} at {at} ({} {})\n", req.method(), req.uri().path());
                let response = http::Response::builder()
                    .header(NODE_HEADER, node.as_str())
                    .header(http::header::CONTENT_TYPE, "text/plain")
                    .body(Full::new(Bytes::from(body)));
                async move { Ok::<_, Infallible>(response.unwrap_or_default()) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `::ffff:a.b.c.d` shown as `a.b.c.d`.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// The node named by [`NODE_HEADER`], if any.
    pub node: Option<String>,
    /// The body.
    pub body: String,
    /// Time from connecting to the last byte.
    pub elapsed: Duration,
}

fn parse_reply(raw: &[u8], elapsed: Duration) -> std::io::Result<HttpReply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP answer: {head:?}"))
        })?;
    let node = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case(NODE_HEADER).then(|| value.trim().to_owned())
    });
    Ok(HttpReply { status, node, body: body.to_owned(), elapsed })
}

/// Fetches `http://<target><path>` from inside `netns` (blocking; runs on its own thread).
///
/// # Errors
///
/// The namespace cannot be entered, or the connection or request fails or times out.
pub fn get_blocking(netns: &str, target: SocketAddr, path: &str, timeout: Duration) -> Result<HttpReply, LabError> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: purelb-lab\r\nConnection: close\r\n\r\n");
    in_netns(netns, move || {
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_reply(&raw, start.elapsed())
    })
    .map_err(|e| LabError::Http {
        netns: netns.to_owned(),
        target: format!("http://{target}{path}"),
        detail: e.to_string(),
    })
}

/// One HTTP/1.1 connection kept open (a websocket, a gRPC stream, a database session stand-in):
/// opened inside a namespace, then used from any thread, one request after another.
#[derive(Debug)]
pub struct KeepAlive {
    stream: TcpStream,
    target: SocketAddr,
}

impl KeepAlive {
    /// Connects to `target` from inside `netns`.
    ///
    /// # Errors
    ///
    /// The namespace cannot be entered or the connection fails.
    pub fn connect(netns: &str, target: SocketAddr, timeout: Duration) -> Result<Self, LabError> {
        let stream = in_netns(netns, move || {
            let stream = TcpStream::connect_timeout(&target, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })?;
        Ok(Self { stream, target })
    }

    /// The local port of the connection (it identifies the connection on the server's node).
    ///
    /// # Errors
    ///
    /// The socket is closed.
    pub fn local_port(&self) -> std::io::Result<u16> {
        Ok(self.stream.local_addr()?.port())
    }

    /// One request on the open connection; any failure means the connection is broken.
    ///
    /// # Errors
    ///
    /// The connection was reset or closed, or the answer did not come within the timeout.
    pub fn get(&mut self, path: &str) -> std::io::Result<HttpReply> {
        let start = Instant::now();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: purelb-lab\r\n\r\n", self.target);
        self.stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no content-length"))?;
                if raw.len() >= end + 4 + length {
                    return parse_reply(&raw[..end + 4 + length], start.elapsed());
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Fetches `http://<target><path>` from inside `netns`.
///
/// # Errors
///
/// As [`get_blocking`].
pub async fn get(netns: &str, target: SocketAddr, path: &str, timeout: Duration) -> Result<HttpReply, LabError> {
    let (netns, path) = (netns.to_owned(), path.to_owned());
    let what = format!("http://{target}{path}");
    let ns = netns.clone();
    tokio::task::spawn_blocking(move || get_blocking(&ns, target, &path, timeout))
        .await
        .map_err(|e| LabError::Http { netns, target: what, detail: e.to_string() })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-PureLB-Lab-Node: n2\r\n\r\nserved by n2\n";
        let reply = parse_reply(raw, Duration::from_millis(3)).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.node.as_deref(), Some("n2"));
        assert_eq!(reply.body, "served by n2\n");
        assert!(parse_reply(b"garbage", Duration::ZERO).is_err());
    }

    #[test]
    fn mapped_addresses_are_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.240]:80".parse().unwrap();
        assert_eq!(unmapped(mapped).to_string(), "192.0.2.240:80");
        let v6: SocketAddr = "[2001:db8::f0]:80".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }
}
