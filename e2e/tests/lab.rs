//! The network-namespace lab, as root: `purelb-lab up`/`down` (time, leftovers of a crashed
//! run, idempotence), kubectl and RBAC against the lab, the data path (HTTP servers,
//! EndpointSlices, a hand-added Service address fetched from the client host), the handles
//! (kill, restart, partition, exec), cleanup after a panicking test, and the demo flow (with
//! stand-ins for `purelb` so every step runs, and with the real binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use purelb::{
    k8s_openapi::api::{
        core::v1::{Secret, Service},
        discovery::v1::EndpointSlice,
    },
    kube::{
        Api, Client,
        api::{ListParams, Patch, PatchParams},
    },
};
use purelb_e2e::{
    apiserver::{FailMode, write_kubeconfig},
    lab::{self, Backend, Lab, LabOptions, ProcessStatus, ServiceBackends, demo},
};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_purelb-lab");
/// Set for the child run of `lab_child_that_panics`: the prefix its lab must use.
const PANIC_ENV: &str = "PURELB_LAB_TEST_PANIC_PREFIX";

/// A prefix unique to this test process and test (namespace names, so parallel tests never
/// meet). Also removes the labs of earlier test processes that died without cleaning up (e.g.
/// interrupted with Ctrl-C, where no destructor runs).
fn prefix(tag: &str) -> String {
    remove_labs_of_dead_test_processes();
    format!("plt{}{tag}", std::process::id())
}

fn remove_labs_of_dead_test_processes() {
    for netns in lab::netns::list() {
        let Some((prefix, _)) = netns.split_once('-') else { continue };
        let Some(rest) = prefix.strip_prefix("plt") else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let tag = &rest[digits.len()..];
        if digits.is_empty() || tag.is_empty() || !tag.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        if !Path::new(&format!("/proc/{digits}")).exists() {
            let _ = lab::down(prefix, &dir_for(prefix), false);
        }
    }
}

fn dir_for(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("purelb-lab-{prefix}"))
}

/// The workspace's `purelb` binary, if built (`cargo build -p purelb --bin purelb`).
fn purelb_bin() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    let found = ["debug", "release"].iter().map(|p| target.join(p).join("purelb")).find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "note: the purelb binary is not built, so the lab starts no allocator or agents; \
             run `cargo build -p purelb --bin purelb` first"
        );
    }
    found
}

fn options(prefix: &str, nodes: usize) -> LabOptions {
    let mut options = LabOptions::new(prefix, nodes).lab_bin(LAB_BIN).ready_timeout(Duration::from_secs(5));
    options.purelb_bin = purelb_bin();
    options
}

/// Runs `purelb-lab args`, failing the test if it takes longer than `timeout`.
fn cli(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(LAB_BIN)
        .args(args)
        .env("PURELB_BIN", purelb_bin().unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("purelb-lab {args:?} took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out =
        Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("kubectl is installed");
    (out.status.success(), text(&out))
}

fn kubectl_installed() -> bool {
    Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success())
}

/// Everything of the lab `prefix` still on this machine: namespaces, root-namespace links,
/// processes (by command line or by the lab's environment marker).
fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.starts_with(&format!("{prefix}-")) {
            found.push(format!("namespace {line}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains(prefix) || line.contains("veth-n") || line.contains("veth-client") || line.contains(" lab0") {
            found.push(format!("link {line}"));
        }
    }
    let marker = format!("{}={prefix}", lab::processes::MEMBER_ENV);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let marked = environ.split(|b| *b == 0).any(|e| e == marker.as_bytes());
        if cmdline.contains(prefix) || marked {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    found
}

/// Runs `purelb-lab down` for a lab built with the CLI when the test ends, also on panic.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(LAB_BIN).args(["down", "--prefix", &self.0]).output();
    }
}

/// Whether `pid` has ended (waits up to 2 s: an orphan is reaped by init a little later).
fn ended(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if stat.is_empty() || zombie {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_clean(prefix: &str) {
    let left = leftovers(prefix);
    assert!(left.is_empty(), "lab {prefix} left things behind:\n{}", left.join("\n"));
}

#[test]
fn up_and_down_take_under_15_seconds_and_leave_nothing() {
    let p = prefix("up");
    let dir = dir_for(&p);
    let _down = DownOnDrop(p.clone());
    let started = Instant::now();
    let up = cli(&["up", "--nodes", "3", "--prefix", &p], Duration::from_secs(60));
    let up_time = started.elapsed();
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let up_text = text(&up);
    assert!(up_text.contains(&format!("lab {p} is up")), "{up_text}");
    for name in ["net", "client", "n1", "n2", "n3"] {
        assert!(lab::netns::list().contains(&format!("{p}-{name}")), "{p}-{name} missing");
    }
    // Every node has eth0 with its address, a default route and kube-lb0 (a bridge).
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        let ns = format!("{p}-{node}");
        let addr = lab::netns::exec(&ns, "ip", &["-br", "addr", "show", "eth0"]).unwrap();
        assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("192.0.2.{}/24", 11 + i)));
        let route = lab::netns::exec(&ns, "ip", &["route", "show", "default"]).unwrap();
        assert!(String::from_utf8_lossy(&route.stdout).contains("default via 192.0.2.1 dev eth0"));
        let dummy = lab::netns::exec(&ns, "ip", &["-d", "link", "show", "kube-lb0"]).unwrap();
        assert!(String::from_utf8_lossy(&dummy.stdout).contains("bridge"));
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(lab::STATE_FILE)).unwrap()).unwrap();
    assert_eq!(state["prefix"], p.as_str());
    let kubectl_started = Instant::now();
    {
        assert!(
            kubectl_installed(),
            "kubectl is not installed: apt-get install kubernetes-client (or run bash scripts/test.sh)"
        );
        let kubeconfig = dir.join("kubeconfig");
        let (ok, out) = kubectl(&kubeconfig, &["get", "nodes"]);
        assert!(ok && out.contains("n1") && out.contains("n3"), "{out}");
        let (ok, out) = kubectl(&kubeconfig, &["get", "svc"]);
        assert!(ok, "{out}");
        let (ok, out) = kubectl(&kubeconfig, &["get", "clusterrolebinding", "purelb-agent", "-o", "name"]);
        assert!(ok && out.contains("purelb-agent"), "RBAC installed: {out}");
        let (ok, out) = kubectl(&kubeconfig, &["get", "crd", "servicegroups.purelb.io", "-o", "name"]);
        assert!(ok, "CRDs installed: {out}");
    }
    let kubectl_time = kubectl_started.elapsed();

    let started = Instant::now();
    let down = cli(&["down", "--prefix", &p], Duration::from_secs(60));
    let down_time = started.elapsed();
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_clean(&p);
    assert!(!dir.exists(), "down removes the lab files");
    let total = up_time + down_time;
    eprintln!(
        "measured: up --nodes 3 {up_time:?}, down {down_time:?}, total {total:?} (kubectl checks {kubectl_time:?})"
    );
    assert!(total < Duration::from_secs(15), "up + down took {total:?}");
}

#[test]
fn up_removes_leftovers_of_a_crashed_run_and_down_is_idempotent() {
    let p = prefix("crash");
    let dir = dir_for(&p);
    let _down = DownOnDrop(p.clone());
    let first = cli(&["up", "--nodes", "2", "--prefix", &p], Duration::from_secs(60));
    assert!(first.status.success(), "{}", text(&first));
    let old_api: Vec<u32> = lab::processes::find_lab_processes(&p, &[])
        .into_iter()
        .filter(|f| f.command.contains(" apiserver "))
        .map(|f| f.pid)
        .collect();
    assert_eq!(old_api.len(), 1, "one emulator runs");
    // What a crash leaves: a namespace from a bigger run, a stray process in a node, a
    // marked process, the state file of the crashed run.
    assert!(Command::new("ip").args(["netns", "add", &format!("{p}-n7")]).status().unwrap().success());
    let mut stray = Command::new("ip").args(["netns", "exec", &format!("{p}-n2"), "sleep", "600"]).spawn().unwrap();
    let mut marked = Command::new("sleep").arg("601").env(lab::processes::MEMBER_ENV, &p).spawn().unwrap();

    let second = cli(&["up", "--nodes", "2", "--prefix", &p], Duration::from_secs(60));
    assert!(second.status.success(), "{}", text(&second));
    let _ = stray.wait();
    let _ = marked.wait();
    assert!(ended(old_api[0]), "the old emulator is gone");
    let mut names: Vec<String> = lab::netns::lab_namespaces(&p);
    names.sort();
    let mut expected: Vec<String> = ["client", "n1", "n2", "net"].iter().map(|n| format!("{p}-{n}")).collect();
    expected.sort();
    assert_eq!(names, expected, "only the new lab's namespaces");
    let apis =
        lab::processes::find_lab_processes(&p, &[]).into_iter().filter(|f| f.command.contains(" apiserver ")).count();
    assert_eq!(apis, 1, "exactly one emulator after the second up");
    if kubectl_installed() {
        let (ok, out) = kubectl(&dir.join("kubeconfig"), &["get", "nodes", "-o", "name"]);
        assert!(ok && out.contains("node/n2") && !out.contains("node/n3"), "{out}");
    }

    // `serve` on the running lab: servers inside the nodes, EndpointSlices in the API.
    let served = cli(
        &["serve", "--prefix", &p, "--nodes", "n1,n2", "--service", "default/web", "--terminating", "n2"],
        Duration::from_secs(60),
    );
    assert!(served.status.success(), "{}", text(&served));
    let reply =
        lab::http::get_blocking(&format!("{p}-client"), "192.0.2.12:80".parse().unwrap(), "/", Duration::from_secs(3))
            .unwrap();
    assert_eq!(reply.node.as_deref(), Some("n2"), "{reply:?}");
    if kubectl_installed() {
        let (ok, out) = kubectl(&dir.join("kubeconfig"), &["get", "endpointslice", "web-lab-ipv4", "-o", "json"]);
        assert!(ok, "{out}");
        let slice: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(slice["endpoints"][1]["nodeName"], "n2");
        assert_eq!(slice["endpoints"][1]["conditions"]["terminating"], true);
    }
    let servers =
        lab::processes::find_lab_processes(&p, &[]).into_iter().filter(|f| f.command.contains("serve-node")).count();
    assert_eq!(servers, 2, "serve leaves its servers running");

    for round in 0..3 {
        let down = cli(&["down", "--prefix", &p], Duration::from_secs(60));
        assert!(down.status.success(), "down #{round}: {}", text(&down));
        if round > 0 {
            assert!(text(&down).contains("nothing to remove"), "{}", text(&down));
        }
        assert_clean(&p);
    }
}

async fn client_with_token(lab: &Lab, process: &str) -> Client {
    let path = lab.dir().join(format!("test-{process}.kubeconfig"));
    write_kubeconfig(&path, lab.api_url(), lab.token(process), "purelb-system").unwrap();
    let client = lab::cluster::connect(&path).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    client
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, purelb::kube::Error>) -> bool {
    matches!(result, Err(purelb::kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_rbac_work_against_the_lab() {
    let lab = Lab::start(options(&prefix("rbac"), 2)).await.unwrap();
    let kubeconfig = lab.kubeconfig().to_owned();
    if kubectl_installed() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/samples/servicegroup-local-dualstack.yaml");
        let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", sample.to_str().unwrap()]);
        assert!(ok, "{out}");
        let (ok, out) = kubectl(&kubeconfig, &["get", "sg", "-n", "purelb-system"]);
        assert!(ok && out.contains("default"), "{out}");
        let (ok, out) = kubectl(&kubeconfig, &["get", "nodes"]);
        assert!(ok && out.contains("n1") && out.contains("n2"), "{out}");
    }

    // The emulator enforces RBAC for the processes' tokens; token-less requests are admin.
    let state: serde_json::Value = serde_json::from_str(
        &lab.client().request_text(http::Request::get("/_emulator/state").body(Vec::new()).unwrap()).await.unwrap(),
    )
    .unwrap();
    assert_eq!(state["authorize"], true);
    let agent = client_with_token(&lab, "agent-n1").await;
    let services: Api<Service> = Api::all(agent.clone());
    services.list(&ListParams::default()).await.expect("agents may list Services");
    let secrets: Api<Secret> = Api::all(agent.clone());
    assert!(forbidden(secrets.list(&ListParams::default()).await), "agents may not list Secrets");
    let default_services: Api<Service> = Api::namespaced(agent.clone(), "default");
    let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.240"}]}}});
    assert!(
        forbidden(default_services.patch_status("kubernetes", &PatchParams::default(), &Patch::Merge(&status)).await),
        "agents may not write Service status"
    );
    let allocator = client_with_token(&lab, "allocator").await;
    let secrets: Api<Secret> = Api::all(allocator.clone());
    assert!(forbidden(secrets.list(&ListParams::default()).await), "the allocator may not list Secrets");
    let services: Api<Service> = Api::all(allocator);
    services.list(&ListParams::default()).await.expect("the allocator may list Services");

    // The agent's own kubeconfig works from inside its node (server 192.0.2.1:6443).
    let agent_kubeconfig = lab.dir().join("agent-n1.kubeconfig");
    let config = std::fs::read_to_string(&agent_kubeconfig).unwrap();
    assert!(config.contains("server: http://192.0.2.1:6443") && config.contains("token: "), "{config}");
    let token = lab.token("agent-n1").unwrap().to_owned();
    let auth = format!("Authorization: Bearer {token}");
    let out = lab
        .exec("n1", "curl", &["-s", "-H", &auth, "http://192.0.2.1:6443/api/v1/secrets"])
        .expect("curl runs in the node (apt-get install curl, or bash scripts/test.sh)");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && body.contains("Forbidden") && body.contains("purelb-agent"), "{body}");
    let out = lab.exec_ok("n1", "curl", &["-sf", "-H", &auth, "http://192.0.2.1:6443/api/v1/nodes"]).unwrap();
    assert!(out.contains("\"n2\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_endpoints_and_a_hand_added_address_carry_traffic() {
    let lab = Lab::start(options(&prefix("data"), 2).dual_stack(true).purelb(false, false)).await.unwrap();
    lab.serve("n1", 80).await.unwrap();
    lab.serve("n2", 80).await.unwrap();

    // EndpointSlices with nodeName and conditions the test flips.
    let backends = ServiceBackends::new("default", "web")
        .port_name("http")
        .backend(Backend::ready("n1"))
        .backend(Backend::terminating("n2"));
    lab.set_endpoints(&backends).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client(), "default");
    let listed = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap();
    assert_eq!(listed.items.len(), 2, "an IPv4 and an IPv6 slice");
    let v4 = slices.get("web-lab-ipv4").await.unwrap();
    assert_eq!(v4.endpoints[0].node_name.as_deref(), Some("n1"));
    assert_eq!(v4.endpoints[0].addresses, ["192.0.2.11"]);
    let n2 = v4.endpoints[1].conditions.clone().unwrap();
    assert_eq!((n2.ready, n2.serving, n2.terminating), (Some(false), Some(true), Some(true)));
    let v6 = slices.get("web-lab-ipv6").await.unwrap();
    assert_eq!(v6.endpoints[1].addresses, ["2001:db8::12"]);
    let flipped = ServiceBackends::new("default", "web").port_name("http").backend(Backend::not_ready("n1"));
    lab.set_endpoints(&flipped).await.unwrap();
    let v4 = slices.get("web-lab-ipv4").await.unwrap();
    assert_eq!(v4.endpoints.len(), 1);
    assert_eq!(v4.endpoints[0].conditions.clone().unwrap().ready, Some(false));
    lab.delete_endpoints("default", "web").await.unwrap();
    assert!(slices.list(&ListParams::default()).await.unwrap().items.is_empty());

    // The data path the agent will use: a Service address on node 1's eth0, fetched from the
    // client host over the bridge (ARP/NDP answered by node 1's kernel).
    lab.exec_ok("n1", "ip", &["addr", "add", "192.0.2.240/24", "dev", "eth0"]).unwrap();
    lab.exec_ok("n1", "ip", &["addr", "add", "2001:db8::f0/64", "dev", "eth0", "nodad"]).unwrap();
    assert_eq!(lab.holders("192.0.2.240".parse().unwrap()).unwrap(), ["n1"]);
    let reply = lab.http_get("client", "192.0.2.240:80".parse().unwrap(), "/").await.unwrap();
    assert_eq!((reply.status, reply.node.as_deref()), (200, Some("n1")), "{reply:?}");
    assert!(reply.body.contains("at 192.0.2.240:80"), "{}", reply.body);
    let reply = lab.http_get("client", "[2001:db8::f0]:80".parse().unwrap(), "/").await.unwrap();
    assert_eq!((reply.status, reply.node.as_deref()), (200, Some("n1")), "{reply:?}");
    // Node 2 answers on its own address; the client reaches every node.
    let reply = lab.http_get("client", "192.0.2.12:80".parse().unwrap(), "/x").await.unwrap();
    assert_eq!(reply.node.as_deref(), Some("n2"));
    // Nothing of the lab is in the root namespace.
    let root = Command::new("ip").args(["addr"]).output().unwrap();
    let root = String::from_utf8_lossy(&root.stdout);
    for lab_address in ["192.0.2.240", "192.0.2.1/", "192.0.2.11/", "192.0.2.100/", "2001:db8:"] {
        assert!(!root.contains(lab_address), "{lab_address} in the root namespace:\n{root}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_kill_restart_partition_and_exec() {
    let lab = Lab::start(options(&prefix("hdl"), 1)).await.unwrap();
    let statuses = lab.process_status();
    let names: Vec<&str> = statuses.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["agent-n1", "allocator", "apiserver"]);
    assert!(lab.status_of("apiserver").unwrap().is_running());
    for (name, status) in &statuses {
        eprintln!("{name}: {status}");
    }
    for (name, log) in lab.log_paths() {
        if !matches!(lab.status_of(&name).unwrap(), ProcessStatus::NotStarted { .. }) {
            assert!(log.exists(), "{name} logs to {}", log.display());
        }
    }

    // Kill / restart (on the HTTP server, which runs whatever the state of purelb).
    lab.serve("n1", 8080).await.unwrap();
    let target: SocketAddr = "192.0.2.11:8080".parse().unwrap();
    assert_eq!(lab.http_get("client", target, "/").await.unwrap().status, 200);
    let status = lab.kill("serve-n1").unwrap();
    assert!(matches!(status, ProcessStatus::Exited { signal: Some(9), .. }), "{status}");
    assert!(lab.http_get("client", target, "/").await.is_err());
    lab.restart("serve-n1").unwrap();
    let mut answered = false;
    for _ in 0..100 {
        if lab.http_get("client", target, "/").await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the restarted server answers");
    let status = lab.terminate("serve-n1", Duration::from_secs(2)).unwrap();
    assert!(!status.is_running(), "{status}");

    // Agent and allocator handles work whatever the binaries do today.
    if !matches!(lab.status_of("agent-n1").unwrap(), ProcessStatus::NotStarted { .. }) {
        lab.restart_agent("n1").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = std::fs::read_to_string(lab.dir().join("agent-n1.log")).unwrap();
        assert_eq!(log.matches("purelb-lab: starting agent-n1").count(), 2, "{log}");
        assert!(!lab.kill_agent("n1").unwrap().is_running());
        lab.restart_allocator().unwrap();
        assert!(!lab.terminate_allocator(Duration::from_secs(2)).unwrap().is_running());
    }
    assert!(lab.kill_agent("n9").is_err());

    // Partition: the agent's token is cut off the API, then reconnected.
    let agent = client_with_token(&lab, "agent-n1").await;
    let nodes: Api<purelb::k8s_openapi::api::core::v1::Node> = Api::all(agent);
    nodes.list(&ListParams::default()).await.unwrap();
    lab.partition_agent("n1", FailMode::Unavailable).await.unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(20), nodes.list(&ListParams::default())).await;
    assert!(matches!(cut, Ok(Err(purelb::kube::Error::Api(ref s))) if s.code == 503), "{cut:?}");
    let admin: Api<purelb::k8s_openapi::api::core::v1::Node> = Api::all(lab.client());
    admin.list(&ListParams::default()).await.expect("others are not cut off");
    lab.heal_agent("n1").await.unwrap();
    nodes.list(&ListParams::default()).await.unwrap();

    // After a "refuse" outage the emulator listens again, also on its address inside the lab.
    let outage = serde_json::json!({"action": "unavailable", "seconds": 1.5, "mode": "refuse"}).to_string();
    let request = http::Request::post("/_emulator/faults").body(outage.into_bytes()).unwrap();
    lab.client().request_text(request).await.unwrap();
    let api_in_lab: SocketAddr = "192.0.2.1:6443".parse().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(lab.http_get("n1", api_in_lab, "/version").await.is_err(), "the listener is closed during the outage");
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if lab.http_get("n1", api_in_lab, "/version").await.is_ok_and(|r| r.status == 200) {
            back = true;
            break;
        }
    }
    assert!(back, "the in-lab listener is re-bound after the outage");
    admin.list(&ListParams::default()).await.expect("the root-namespace listener is back too");

    // Commands in a host.
    let out = lab.exec_ok("client", "ip", &["-br", "addr", "show", "eth0"]).unwrap();
    assert!(out.contains("192.0.2.100/24"), "{out}");
    assert!(lab.exec_ok("n1", "false", &[]).is_err());
    assert!(lab.exec("n7", "true", &[]).is_err());

    let p = lab.prefix().to_owned();
    let report = lab.shutdown().unwrap();
    assert_eq!(report.namespaces.len(), 3, "{report:?}");
    assert_clean(&p);
}

/// The child half of `a_panicking_test_leaves_nothing_behind`: does nothing unless that test
/// runs it with `PURELB_LAB_TEST_PANIC_PREFIX` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_child_that_panics() {
    let Ok(p) = std::env::var(PANIC_ENV) else { return };
    let lab = Lab::start(options(&p, 2)).await.unwrap();
    lab.serve("n1", 80).await.unwrap();
    lab.exec_ok("n2", "ip", &["addr", "add", "192.0.2.241/24", "dev", "eth0"]).unwrap();
    assert!(lab.status_of("serve-n1").unwrap().is_running());
    panic!("deliberate panic with lab {p} running");
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let p = prefix("panic");
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lab_child_that_panics", "--nocapture", "--test-threads=1"])
        .env(PANIC_ENV, &p)
        .output()
        .unwrap();
    let out = text(&output);
    assert!(!output.status.success(), "the child test must fail:\n{out}");
    assert!(out.contains("deliberate panic"), "{out}");
    assert!(out.contains(&format!("lab {p} torn down after a panic")), "{out}");
    assert_clean(&p);
    // The logs are kept after a panic, for the post-mortem; nothing else.
    let dir = dir_for(&p);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        assert!(name.ends_with(".log"), "only logs are kept, found {name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stand-ins for `purelb allocator` and `purelb agent`, just enough for the demo: the
/// allocator gives every LoadBalancer Service 192.0.2.240; the agents elect the lowest live
/// node (heartbeat files), which adds the address with a 2 s lifetime it keeps renewing and
/// sends one gratuitous ARP. Both answer /readyz.
const STAND_IN: &str = r#"#!/usr/bin/env python3
import http.server, json, os, re, socket, struct, subprocess, sys, threading, time, urllib.request

ADDRESS = "192.0.2.240"

def arg(name, default=None):
    for i, a in enumerate(sys.argv):
        if a == name and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

host, port = arg("--metrics-addr", "0.0.0.0:7472").rsplit(":", 1)
server = http.server.ThreadingHTTPServer((host, int(port)), Ready)
threading.Thread(target=server.serve_forever, daemon=True).start()
kubeconfig = open(arg("--kubeconfig")).read()
url = re.search(r"server: (\S+)", kubeconfig).group(1)
token = re.search(r"token: (\S+)", kubeconfig).group(1)

def call(method, path, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, method=method, data=data)
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)

def allocator():
    while True:
        try:
            for s in call("GET", "/api/v1/services")["items"]:
                lb = s.get("status", {}).get("loadBalancer", {})
                if s["spec"].get("type") == "LoadBalancer" and not lb.get("ingress"):
                    m = s["metadata"]
                    patch = {"status": {"loadBalancer": {"ingress": [{"ip": ADDRESS}]}}}
                    call("PATCH", "/api/v1/namespaces/%s/services/%s/status" % (m["namespace"], m["name"]),
                         patch, "application/merge-patch+json")
        except Exception as e:
            print("stand-in allocator:", e, flush=True)
        time.sleep(0.05)

def garp(ip):
    hw = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
    addr = socket.inet_aton(ip)
    frame = b"\xff" * 6 + hw + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + b"\x00" * 6 + addr
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("eth0", 0))
        s.send(frame)

def agent():
    node = arg("--node-name")
    beats = os.path.join(os.path.dirname(arg("--kubeconfig")), "stand-in-heartbeats")
    os.makedirs(beats, exist_ok=True)
    held = False
    while True:
        open(os.path.join(beats, node), "w").close()
        now = time.time()
        live = sorted(n for n in os.listdir(beats) if now - os.path.getmtime(os.path.join(beats, n)) < 1.0)
        if live and live[0] == node:
            subprocess.run(["ip", "addr", "replace", ADDRESS + "/24", "dev", "eth0",
                            "valid_lft", "2", "preferred_lft", "2"], check=False)
            if not held:
                garp(ADDRESS)
                held = True
                print("stand-in agent: took", ADDRESS, flush=True)
        elif held:
            subprocess.run(["ip", "addr", "del", ADDRESS + "/24", "dev", "eth0"], check=False)
            held = False
        time.sleep(0.2)

{"allocator": allocator, "agent": agent}[sys.argv[1]]()
"#;

fn python_available() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_every_step_with_stand_ins_for_purelb() {
    assert!(python_available(), "python3 is not installed: apt-get install python3");
    let p = prefix("demo");
    let work = std::env::temp_dir().join(format!("purelb-lab-test-{p}"));
    std::fs::create_dir_all(&work).unwrap();
    let stand_in = work.join("purelb");
    std::fs::write(&stand_in, STAND_IN).unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = dir_for(&p);
    let options = LabOptions::new(&p, 3).dual_stack(true).lab_bin(LAB_BIN).purelb_bin(&stand_in).dir(&dir);
    let mut out = Vec::new();
    let report = demo::run(options, demo::DemoTimeouts::default(), &mut out).await;
    let printed = String::from_utf8_lossy(&out).into_owned();
    eprintln!("{printed}");
    assert_eq!(report.exit_code(), 0, "{printed}");
    for needle in [
        "the allocator assigned 192.0.2.240 to default/web",
        "EXTERNAL-IP",
        "n1 holds 192.0.2.240",
        "client fetched http://192.0.2.240:80/: served by n1",
        "192.0.2.240 moved from n1 to n2",
        "client fetched again: served by n2",
        "failover, from the kill",
        "demo: every step worked",
    ] {
        assert!(printed.contains(needle), "missing {needle:?} in:\n{printed}");
    }
    assert_clean(&p);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::remove_dir_all(&work).unwrap();
}

/// A process that crashes during the demo fails it, even when every step still works (the
/// stand-in agent of n3, which never holds the address, exits 1 after 0.8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fails_when_a_process_crashes() {
    assert!(python_available(), "python3 is not installed: apt-get install python3");
    let p = prefix("crash");
    let work = std::env::temp_dir().join(format!("purelb-lab-test-{p}"));
    std::fs::create_dir_all(&work).unwrap();
    let stand_in = work.join("purelb");
    let crashing = STAND_IN.replace(
        "    while True:\n        open(os.path.join(beats, node), \"w\").close()",
        "    start = time.time()\n    while True:\n        if node == \"n3\" and time.time() - start > 0.8:\n            sys.exit(1)\n        open(os.path.join(beats, node), \"w\").close()",
    );
    assert_ne!(crashing, STAND_IN, "the crash was patched into the stand-in");
    std::fs::write(&stand_in, crashing).unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = dir_for(&p);
    let options = LabOptions::new(&p, 3).lab_bin(LAB_BIN).purelb_bin(&stand_in).dir(&dir);
    let mut out = Vec::new();
    let report = demo::run(options, demo::DemoTimeouts::default(), &mut out).await;
    let printed = String::from_utf8_lossy(&out).into_owned();
    eprintln!("{printed}");
    assert_eq!(report.exit_code(), 1, "{printed}");
    assert!(
        printed.contains("FAIL  no purelb process crashed") && printed.contains("agent-n3 is not running"),
        "{printed}"
    );
    assert!(printed.contains("demo: FAILED"), "{printed}");
    assert_clean(&p);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn cli_demo_with_the_real_purelb_runs_every_step() {
    let p = prefix("rdemo");
    let _down = DownOnDrop(p.clone());
    let out = cli(&["demo", "--nodes", "2", "--prefix", &p], Duration::from_secs(180));
    let printed = text(&out);
    eprintln!("{printed}");
    // Every subcommand is built: the demo must run every step, with no process crashed.
    assert_eq!(out.status.code(), Some(0), "the demo failed:\n{printed}");
    assert!(
        printed.contains("demo: every step worked") && printed.contains("ok    no purelb process crashed"),
        "{printed}"
    );
    // The operator tools ran as steps (the real binary has them).
    for step in ["ok    purelb explain service default/web", "ok    purelb status"] {
        assert!(printed.contains(step), "{step:?} missing:\n{printed}");
    }
    assert_clean(&p);
    let _ = std::fs::remove_dir_all(dir_for(&p));
}

/// `purelb-lab demo --bgp` (issue 17): FRR on the router, BIRD on the nodes; every step works:
/// sessions, the ECMP route, connections over every node, the BFD failover.
#[test]
fn cli_demo_with_bgp_runs_every_step() {
    let p = prefix("bdemo");
    let _down = DownOnDrop(p.clone());
    let out = cli(&["demo", "--bgp", "--nodes", "2", "--prefix", &p], Duration::from_secs(180));
    let printed = text(&out);
    eprintln!("{printed}");
    assert_eq!(out.status.code(), Some(0), "the demo failed:\n{printed}");
    for step in [
        "ok    the router's FIB sends",
        "through the router: n1:",
        "ok    BFD (3 × 300 ms) took n1's route out",
        "demo: every step worked",
    ] {
        assert!(printed.contains(step), "{step:?} missing:\n{printed}");
    }
    assert_clean(&p);
    let _ = std::fs::remove_dir_all(dir_for(&p));
}
