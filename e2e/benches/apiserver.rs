//! Emulator throughput on loopback: 10,000 objects created over HTTP (request latency
//! p50/p99), listed, then 100 concurrent watchers receiving 1,000 further writes (fan-out
//! latency: from the write's response to each watcher's receipt, p50/p99).
//!
//! Run: `cargo bench -p purelb-e2e --bench apiserver`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss)]

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use purelb_e2e::apiserver::{Emulator, EmulatorOptions};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    (code, rest)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let emulator = Emulator::start(EmulatorOptions::default()).unwrap();
    let server = runtime.block_on(emulator.serve("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = server.addr().to_string();

    // 10,000 creates, one client, new connection per request (worst case for latency).
    let n = 10_000;
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let body = format!(r#"{{"metadata":{{"name":"cm-{i}"}},"data":{{"k":"{i}"}}}}"#);
        let t = Instant::now();
        let (code, _) = request(&addr, "POST", "/api/v1/namespaces/default/configmaps", &body);
        latencies.push(t.elapsed());
        assert_eq!(code, 201);
    }
    let total = start.elapsed();
    latencies.sort();
    println!(
        "apiserver: {n} creates over HTTP: {:.2} s = {:.0} req/s; latency p50 {:?} p99 {:?}",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let t = Instant::now();
    let (code, body) = request(&addr, "GET", "/api/v1/namespaces/default/configmaps", "");
    assert_eq!(code, 200);
    println!("apiserver: list of {n} objects: {:?} ({} KiB)", t.elapsed(), body.len() / 1024);

    // 100 watchers; 1,000 writes; fan-out latency per (write, watcher).
    let watchers = 100;
    let writes = 1000;
    let (_, list) = request(&addr, "GET", "/api/v1/namespaces/default/configmaps?limit=1", "");
    let rv: u64 = serde_json::from_str::<serde_json::Value>(list.lines().last().unwrap_or("{}"))
        .ok()
        .and_then(|v| v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; writes]));
    let receipts: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let addr = addr.clone();
        let sent = sent.clone();
        let receipts = receipts.clone();
        handles.push(std::thread::spawn(move || {
            let mut stream = TcpStream::connect(&addr).unwrap();
            write!(
                stream,
                "GET /api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv} HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let reader = BufReader::new(stream);
            let mut got = 0;
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Some(pos) = line.find("\"w-") else { continue };
                let idx: usize = line[pos + 3..].split('"').next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
                let now = Instant::now();
                if let Some(Some(at)) = sent.lock().unwrap().get(idx).copied() {
                    receipts.lock().unwrap().push(now.saturating_duration_since(at));
                }
                got += 1;
                if got == writes {
                    break;
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for i in 0..writes {
        let body = format!(r#"{{"metadata":{{"name":"w-{i}"}}}}"#);
        sent.lock().unwrap()[i] = Some(Instant::now());
        let (code, _) = request(&addr, "POST", "/api/v1/namespaces/default/configmaps", &body);
        assert_eq!(code, 201);
    }
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    let mut r = receipts.lock().unwrap().clone();
    r.sort();
    println!(
        "apiserver: {watchers} watchers x {writes} writes = {} deliveries in {:.2} s; fan-out latency (write sent -> watcher received) p50 {:?} p99 {:?}",
        r.len(),
        elapsed.as_secs_f64(),
        percentile(&r, 0.5),
        percentile(&r, 0.99)
    );
    assert_eq!(r.len(), watchers * writes, "every watcher saw every write");
    drop(server);
}
