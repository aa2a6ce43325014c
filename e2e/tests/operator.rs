//! The operator tools (issue 18) against the lab, with the real `purelb` binary as a user runs
//! it: `purelb explain service` predicts the node that holds each address, compared with what
//! the nodes' kernels hold (after a create, after a SIGKILL failover, with
//! `externalTrafficPolicy: Local` endpoints moving, with sharing); `purelb status` turns
//! WARNING when a Service is announced by nobody and FAIL when the allocator is down;
//! `kubectl purelb status` through kubectl's plugin mechanism; `kubectl wait
//! --for=condition=purelb.io/Announced` returns once an agent holds the address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use purelb::{core::election, k8s_openapi::api::core::v1::Service, kube::Api};
use purelb_e2e::lab::{self, Backend, Lab, LabOptions, ServiceBackends, wait_for};
use serde_json::Value;

const LAB_BIN: &str = env!("CARGO_BIN_EXE_purelb-lab");

fn purelb_bin() -> PathBuf {
    lab::built_binary("purelb", &["debug", "release"])
        .expect("build the purelb binary first: cargo build -p purelb --bin purelb")
}

async fn start(tag: &str) -> Lab {
    let mut options = LabOptions::new(&lab::test_prefix("plo", tag), 3)
        .lab_bin(LAB_BIN)
        .purelb_bin(purelb_bin())
        .ready_timeout(Duration::from_secs(30));
    options.agent_args = ["--lease-duration=2s", "--renew-interval=500ms", "--orphan-sweep-interval=2s"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    options.allocator_args = ["--lease-duration=4s", "--renew-interval=1s"].iter().map(|s| (*s).to_owned()).collect();
    let lab = Lab::start(options).await.unwrap();
    for (name, status) in lab.process_status() {
        assert!(
            status.is_running(),
            "{name} is not running: {status:?}\n{}",
            lab.log_tail(&name, 30).unwrap_or_default()
        );
    }
    lab
}

const LOCAL_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: default, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.240/29}
";

/// A local group on a subnet no node has: its addresses have no candidate.
const NOWHERE_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: nowhere, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 203.0.113.0/24, pool: 203.0.113.240/29}
";

fn service_yaml(name: &str, annotations: &str, policy: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{{annotations}}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {policy}
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: {port}, targetPort: 80}}
"
    )
}

async fn address_of(lab: &Lab, name: &str) -> IpAddr {
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    wait_for(Duration::from_secs(20), || async {
        let svc = services.get(name).await.ok()?;
        svc.status?.load_balancer?.ingress?.iter().find_map(|i| i.ip.as_deref()?.parse().ok())
    })
    .await
    .unwrap_or_else(|| panic!("the allocator gave {name} no address"))
}

/// Runs `purelb ARGS --kubeconfig <lab>`; (exit code, stdout, stderr).
fn purelb(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(purelb_bin()).args(args).arg("--kubeconfig").arg(lab.kubeconfig()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn explain(lab: &Lab, service: &str) -> Value {
    let (code, out, err) = purelb(lab, &["explain", "service", &format!("default/{service}"), "-o", "json"]);
    assert_eq!(code, 0, "explain failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain -o json is not JSON ({e}): {out}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or(&Vec::new()).iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

/// The kernel holders of `ip`, leaving out `dead` (a SIGKILLed agent's node keeps what it had).
fn kernel(lab: &Lab, ip: IpAddr, dead: &[&str]) -> Vec<String> {
    lab.holders(ip).unwrap().into_iter().filter(|n| !dead.contains(&n.as_str())).collect()
}

/// Waits until the kernel holders (minus `dead`) are `want` and `explain` predicts exactly them,
/// agreeing with the Leases and without findings; returns the address's explanation.
async fn explained(lab: &Lab, service: &str, ip: IpAddr, want: &[&str], dead: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = kernel(lab, ip, dead);
        let report = explain(lab, service);
        let address = report["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["address"] == ip.to_string()))
            .cloned()
            .unwrap_or(Value::Null);
        let predicted = strings(&address["predicted"]);
        if held == want && predicted == want && address["agrees"] == true && strings(&report["findings"]).is_empty() {
            // Read again after the explanation: the kernel did not change under it.
            assert_eq!(kernel(lab, ip, dead), want);
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "{service} {ip}: kernel {held:?}, want {want:?}; explain predicted {predicted:?}:\n{}",
            serde_json::to_string_pretty(&report).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn endpoints(lab: &Lab, name: &str, backends: &[Backend]) {
    let mut b = ServiceBackends::new("default", name).port_name("http");
    for backend in backends {
        b = b.backend(backend.clone());
    }
    lab.set_endpoints(&b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_predicts_the_kernel_holder_after_create_failover_moving_endpoints_and_sharing() {
    let lab = start("exp").await;
    let names = lab.node_names();
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();

    // After a create.
    lab.apply_yaml(&service_yaml("web", "", "Cluster", 80)).await.unwrap();
    let ip = address_of(&lab, "web").await;
    let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
    let report = explained(&lab, "web", ip, &[winner.as_str()], &[]).await;
    assert_eq!(report["allocation"]["group"], "default");
    assert!(report["allocation"]["why"].as_str().unwrap().contains("the group named \"default\""), "{report}");
    let nodes = report["addresses"][0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let first = nodes.iter().find(|n| n["rank"] == 1).unwrap();
    assert_eq!(first["node"], winner.as_str());
    assert!(report["addresses"][0]["rule"].as_str().unwrap().contains("lowest hash"), "{report}");
    // The text form says the same.
    let (code, text, _) = purelb(&lab, &["explain", "service", "default/web"]);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("Held by:    {winner} (eth0) (as predicted)")), "{text}");

    // Sharing: two Services pinned to one address with one sharing key and other ports.
    let shared_ip = "192.0.2.245";
    let annotations = format!("purelb.io/addresses: \"{shared_ip}\", purelb.io/allow-shared-ip: team");
    lab.apply_yaml(&service_yaml("shared-a", &annotations, "Cluster", 80)).await.unwrap();
    lab.apply_yaml(&service_yaml("shared-b", &annotations, "Cluster", 8080)).await.unwrap();
    let sip: IpAddr = shared_ip.parse().unwrap();
    assert_eq!(address_of(&lab, "shared-b").await, sip);
    let swinner = election::elect(names.iter().map(String::as_str), sip).unwrap().to_owned();
    let report = explained(&lab, "shared-a", sip, &[swinner.as_str()], &[]).await;
    assert_eq!(report["allocation"]["sharingKey"], "team");
    assert_eq!(strings(&report["allocation"]["sharedWith"]), ["default/shared-b"]);
    assert!(report["allocation"]["why"].as_str().unwrap().contains("pinned"), "{report}");

    // externalTrafficPolicy: Local, the endpoint moving from n3 to n1.
    endpoints(&lab, "loc", &[Backend::ready("n3")]).await;
    lab.apply_yaml(&service_yaml("loc", "", "Local", 80)).await.unwrap();
    let lip = address_of(&lab, "loc").await;
    let report = explained(&lab, "loc", lip, &["n3"], &[]).await;
    let usable: Vec<String> = report["addresses"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["usableEndpoint"] == true)
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(usable, ["n3"]);
    endpoints(&lab, "loc", &[Backend::ready("n1")]).await;
    explained(&lab, "loc", lip, &["n1"], &[]).await;

    // SIGKILL the holder of web: explain follows the failover and shows the node not live.
    let rest: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != winner).collect();
    let successor = election::elect(rest.iter().copied(), ip).unwrap().to_owned();
    let killed = Instant::now();
    lab.kill_agent(&winner).unwrap();
    let report = explained(&lab, "web", ip, &[successor.as_str()], &[winner.as_str()]).await;
    let dead =
        report["addresses"][0]["nodes"].as_array().unwrap().iter().find(|n| n["node"] == winner.as_str()).cloned();
    assert_eq!(dead.unwrap()["live"], false, "{report}");
    eprintln!("MEASURE agent SIGKILL -> explain predicts and the kernel shows {successor}: {:?}", killed.elapsed());
}

/// `purelb status -o json`: (exit code, report).
fn status(lab: &Lab) -> (i32, Value) {
    let (code, out, err) = purelb(lab, &["status", "-o", "json"]);
    let report =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status -o json is not JSON ({e}): {out}\n{err}"));
    (code, report)
}

fn kubectl_installed() {
    let ok = Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "kubectl is not installed: apt-get install kubernetes-client (or run bash scripts/test.sh)");
}

/// A directory holding `kubectl-purelb`, a link to the purelb binary, as a user installs it.
fn plugin_dir(lab: &Lab) -> PathBuf {
    let dir = lab.scratch_dir().unwrap().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-purelb");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(purelb_bin(), &link).unwrap();
    dir
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_warns_fails_and_runs_as_a_kubectl_plugin_and_kubectl_waits_for_announced() {
    kubectl_installed();
    let lab = start("sta").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    lab.apply_yaml(NOWHERE_GROUP).await.unwrap();

    // kubectl wait returns once the address is announced, and by then a node holds it.
    lab.apply_yaml(&service_yaml("web", "", "Cluster", 80)).await.unwrap();
    let waited = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(["wait", "--for=condition=purelb.io/Announced", "service/web", "-n", "default", "--timeout=60s"])
        .output()
        .unwrap();
    let ip = address_of(&lab, "web").await;
    let held = lab.holders(ip).unwrap();
    assert!(waited.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&waited.stderr));
    assert_eq!(held.len(), 1, "kubectl wait returned while the kernels hold {ip} on {held:?}");

    // Everything fine: OK, exit 0.
    let ok = wait_for(Duration::from_secs(20), || async {
        let (code, report) = status(&lab);
        (code == 0).then_some(report)
    })
    .await;
    let report = ok.unwrap_or_else(|| panic!("status never OK: {}", status(&lab).1));
    assert_eq!(report["verdict"], "OK");
    assert_eq!(report["agents"].as_array().unwrap().len(), 3);
    assert!(report["allocator"]["live"].as_bool().unwrap());

    // A Service nobody can announce: WARNING, exit 1, the reason names it and why.
    lab.apply_yaml(&service_yaml("stranded", "purelb.io/service-group: nowhere", "Cluster", 80)).await.unwrap();
    let warned = wait_for(Duration::from_secs(20), || async {
        let (code, report) = status(&lab);
        (code == 1).then_some(report)
    })
    .await
    .unwrap_or_else(|| panic!("status never WARNING: {}", status(&lab).1));
    assert_eq!(warned["verdict"], "WARNING");
    let reasons = strings(&warned["reasons"]);
    assert!(
        reasons.iter().any(|r| r.contains("default/stranded")
            && r.contains("announced by nobody")
            && r.contains("NoCandidateNode")),
        "{reasons:?}"
    );

    // kubectl purelb status, through kubectl's plugin lookup on PATH.
    let dir = plugin_dir(&lab);
    // kubectl hands plugins no flags of its own: the kubeconfig comes from $KUBECONFIG.
    let out = Command::new("kubectl")
        .env("PATH", path_with(&dir))
        .env("KUBECONFIG", lab.kubeconfig())
        .args(["purelb", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("PureLB in namespace purelb-system: WARNING"), "{text}");
    assert!(text.contains("default/stranded"), "{text}");
    let plugins = Command::new("kubectl").env("PATH", path_with(&dir)).args(["plugin", "list"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&plugins.stdout).contains("kubectl-purelb"),
        "kubectl plugin list does not show it"
    );

    // The allocator down (SIGKILL, its Lease expires): FAIL, exit 2, with the reason.
    let killed = Instant::now();
    for name in lab.allocator_names() {
        lab.kill(&name).unwrap();
    }
    let failed = wait_for(Duration::from_secs(20), || async {
        let (code, report) = status(&lab);
        (code == 2).then_some(report)
    })
    .await
    .unwrap_or_else(|| panic!("status never FAIL: {}", status(&lab).1));
    eprintln!("MEASURE allocator SIGKILL -> status FAIL: {:?}", killed.elapsed());
    assert_eq!(failed["verdict"], "FAIL");
    assert!(!failed["allocator"]["live"].as_bool().unwrap());
    assert!(strings(&failed["reasons"]).iter().any(|r| r.contains("the allocator is down")), "{failed}");
}

/// The operator commands with read-only credentials: a user in the group the shipped
/// `manifests/rbac-viewer.yaml` binds can run status, explain and validate; without it the
/// error says which permission is missing and where the manifest is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_credentials_from_rbac_viewer_yaml_suffice() {
    use purelb::kube::CustomResourceExt;
    use purelb_e2e::apiserver::{Emulator, EmulatorOptions, write_kubeconfig};

    let emulator = Emulator::start(EmulatorOptions { authorize: true, ..EmulatorOptions::default() }).unwrap();
    let server = emulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin = emulator.client(None);
    let mut crds = String::new();
    for crd in [purelb::api::ServiceGroup::crd(), purelb::api::LBNodeAgent::crd(), purelb::api::BGPPeer::crd()] {
        crds.push_str("---\n");
        crds.push_str(&serde_yaml_ng::to_string(&crd).unwrap());
    }
    lab::cluster::apply_yaml(&admin, &crds).await.unwrap();
    lab::cluster::apply_yaml(&admin, "apiVersion: v1\nkind: Namespace\nmetadata: {name: purelb-system}\n")
        .await
        .unwrap();
    lab::cluster::apply_yaml(&admin, LOCAL_GROUP).await.unwrap();
    lab::cluster::apply_yaml(&admin, &service_yaml("web", "", "Cluster", 80)).await.unwrap();
    let viewer =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/rbac-viewer.yaml")).unwrap();
    lab::cluster::apply_yaml(&admin, &viewer).await.unwrap();
    emulator.add_token_in_groups("viewer-token", "jane", &["purelb-viewers"]);
    emulator.add_token("stranger-token", "joe");

    let dir = std::env::temp_dir().join(format!("purelb-viewer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |token: &str, args: &[&str]| {
        let kubeconfig = dir.join(format!("{token}.kubeconfig"));
        write_kubeconfig(&kubeconfig, &server.url(), Some(token), "default").unwrap();
        let out = Command::new(purelb_bin()).args(args).arg("--kubeconfig").arg(&kubeconfig).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // No allocator runs: status reads everything and says FAIL (exit 2), not "forbidden".
    let (code, out) = run("viewer-token", &["status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the allocator is down"), "{out}");
    let (code, out) = run("viewer-token", &["explain", "service", "default/web"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Service default/web"), "{out}");
    let (code, out) = run("viewer-token", &["validate"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS  ServiceGroup purelb-system/default"), "{out}");
    // --watch prints the report again when something changes, and only then.
    let kubeconfig = dir.join("viewer-token.kubeconfig");
    let mut child = Command::new(purelb_bin())
        .args(["status", "--watch", "--interval", "200ms", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for doc in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            let Ok(doc) = doc else { break };
            if tx.send(doc).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("a first report");
    assert_eq!(first["services"].as_array().unwrap().len(), 1, "{first}");
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err(), "printed again without a change");
    lab::cluster::apply_yaml(&admin, &service_yaml("second", "", "Cluster", 80)).await.unwrap();
    let second = rx.recv_timeout(Duration::from_secs(10)).expect("a report after the change");
    assert_eq!(second["services"].as_array().unwrap().len(), 2, "{second}");
    let _ = child.kill();
    let _ = child.wait();

    // Someone without the binding: told what is missing and what to apply.
    let (code, out) = run("stranger-token", &["status"]);
    assert_eq!(code, 2, "a status that cannot read the cluster is a FAIL: {out}");
    assert!(out.contains("403") && out.contains("manifests/rbac-viewer.yaml"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
