//! The standalone emulator (`purelb-lab apiserver`) driven by the real `kubectl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

struct ApiServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ApiServer {
    fn start() -> Self {
        Self::start_with("plain", &[])
    }

    fn start_with(tag: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("purelb-kubectl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_purelb-lab"))
            .args(["apiserver", "--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(dir.join("kubeconfig"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.join("kubeconfig").exists() {
            assert!(Instant::now() < deadline, "emulator did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl runs (install it: apt-get install kubernetes-client, or bash scripts/test.sh)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }
}

impl ApiServer {
    /// `kubectl` with extra environment variables (e.g. `EDITOR`).
    fn ok_env(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("kubectl runs (install it: apt-get install kubernetes-client, or bash scripts/test.sh)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubectl {args:?} failed:\n{text}");
        text
    }

    /// `kubectl` started in the background (stdout captured).
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs (install it: apt-get install kubernetes-client, or bash scripts/test.sh)")
    }

    /// `GET /_emulator/state`.
    fn state(&self) -> serde_json::Value {
        let kubeconfig = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_owned();
        let out = Command::new("curl")
            .args(["-sf", &format!("{server}/_emulator/state")])
            .output()
            .expect("curl runs (install it: apt-get install curl, or bash scripts/test.sh)");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `scripts/helm-emulator.py ACTION` (Helm's Go SDK) against this server: the release as JSON.
    fn helm(&self, action: &str, values: &str) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/helm-emulator.py");
        let out = Command::new("python3")
            .arg(script)
            .args([action, "--kubeconfig"])
            .arg(self.kubeconfig())
            .args(["--set-json", values])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "helm {action} failed (helm-python-sdk missing? python3 -m pip install helm-python-sdk==0.2.2):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn kubectl_works_against_the_standalone_emulator() {
    let api = ApiServer::start();
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds/purelb.yaml");
    let out = api.ok(&["apply", "-f", path(&crds)]);
    assert!(out.contains("servicegroups.purelb.io created"), "{out}");
    let ns = api.write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: purelb-system\n");
    api.ok(&["apply", "-f", path(&ns)]);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/samples/servicegroup-local-dualstack.yaml");
    let out = api.ok(&["apply", "-f", path(&sample)]);
    assert!(out.contains("servicegroup.purelb.io/default created"), "{out}");
    let out = api.ok(&["get", "sg", "-n", "purelb-system"]);
    assert!(out.contains("ALLOCATED-V4") && out.contains("default"), "printer columns: {out}");
    let out = api.ok(&["get", "sg", "default", "-n", "purelb-system", "-o", "yaml"]);
    assert!(out.contains("pool: 192.0.2.240/28"), "{out}");

    // An invalid group is rejected with a message naming the field.
    let bad = api.write("bad.yaml", "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata:\n  name: bad\n  namespace: purelb-system\nspec:\n  local:\n    v4pool:\n      pool: 192.0.2.0/28\n      subnet: 192.0.2.0/24\n      aggregation: \"32\"\n");
    let (ok, out) = api.kubectl(&["apply", "-f", path(&bad)]);
    assert!(!ok && out.contains("spec.local.v4pool.aggregation") && out.contains("\"32\""), "{out}");
    let both = api.write("both.yaml", "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata:\n  name: both\n  namespace: purelb-system\nspec:\n  namespaceDefault: true\n  remote:\n    v4pool: {pool: 198.51.100.1/32, subnet: 198.51.100.0/24}\n");
    let (ok, out) = api.kubectl(&["apply", "-f", path(&both)]);
    assert!(!ok && out.contains("spec.namespaceDefault requires a non-empty spec.namespaces"), "{out}");

    // Services: apply, server-side apply, annotate, label, patch, describe, watch, delete.
    let svc = api.write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports:\n  - port: 80\n    name: http\n");
    api.ok(&["apply", "-f", path(&svc)]);
    let out = api.ok(&["get", "svc", "web"]);
    assert!(out.contains("EXTERNAL-IP") && out.contains("<pending>"), "{out}");
    let ssa = api.write("ssa.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 443\n");
    let out = api.ok(&["apply", "--server-side", "-f", path(&ssa)]);
    assert!(out.contains("serverside-applied"), "{out}");
    api.ok(&["annotate", "svc", "web", "purelb.io/service-group=default"]);
    api.ok(&["label", "svc", "web", "tier=front"]);
    api.ok(&["patch", "svc", "web", "--type", "merge", "-p", r#"{"spec":{"externalTrafficPolicy":"Local"}}"#]);
    let out = api.ok(&["get", "svc", "web", "-o", "yaml"]);
    assert!(
        out.contains("purelb.io/service-group: default")
            && out.contains("tier: front")
            && out.contains("externalTrafficPolicy: Local"),
        "{out}"
    );

    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["get", "svc", "web", "-w", "--request-timeout=20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    api.ok(&[
        "patch",
        "svc",
        "web",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.240"}]}}}"#,
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = watch.kill();
    let output = watch.wait_with_output().unwrap();
    let watched = String::from_utf8_lossy(&output.stdout);
    assert!(
        watched.contains("<pending>") && watched.contains("192.0.2.240"),
        "kubectl get -w shows the later change:\n{watched}"
    );

    let out = api.ok(&["describe", "service", "web"]);
    assert!(
        out.contains("LoadBalancer Ingress:")
            && out.contains("192.0.2.240")
            && out.contains("Port:")
            && out.contains("80/TCP"),
        "{out}"
    );
    let out = api.ok(&["delete", "svc", "web"]);
    assert!(out.contains("deleted"), "{out}");
    let (ok, out) = api.kubectl(&["get", "svc", "web"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
}

/// `GET`/`PUT` with a bearer token (kubectl sends none over plain HTTP); returns the status code.
fn raw_request(api: &ApiServer, token: &str, method: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: http://")).unwrap().to_owned();
    let mut stream = std::net::TcpStream::connect(&server).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn rendered_install_manifests_apply_and_their_rbac_is_enforced() {
    let api = ApiServer::start_with(
        "rbac",
        &[
            "--authorize",
            "rbac",
            "--token",
            "agent-token=system:serviceaccount:purelb-system:purelb-agent",
            "--token",
            "alloc-token=system:serviceaccount:purelb-system:purelb-allocator",
        ],
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = api.ok(&["apply", "--server-side", "-f", path(&root.join("manifests/crds.yaml"))]);
    assert!(out.contains("servicegroups.purelb.io serverside-applied"), "{out}");
    let out = api.ok(&["apply", "-f", path(&root.join("manifests/install.yaml"))]);
    for object in [
        "namespace/purelb-system",
        "daemonset.apps/purelb-agent",
        "deployment.apps/purelb-allocator",
        "poddisruptionbudget.policy/purelb-allocator",
        "lbnodeagent.purelb.io/default",
    ] {
        assert!(out.contains(object), "{object} not created:\n{out}");
    }
    let svc = api.write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n");
    api.ok(&["apply", "-f", path(&svc)]);
    // The agent reads Services and its Leases, and nothing more.
    assert_eq!(raw_request(&api, "agent-token", "GET", "/api/v1/services", ""), 200);
    assert_eq!(
        raw_request(&api, "agent-token", "GET", "/apis/coordination.k8s.io/v1/namespaces/purelb-system/leases", ""),
        200
    );
    assert_eq!(raw_request(&api, "agent-token", "GET", "/api/v1/namespaces/purelb-system/secrets", ""), 403);
    assert_eq!(
        raw_request(&api, "agent-token", "PATCH", "/api/v1/namespaces/default/services/web/status", "{}"),
        403,
        "the agent never writes Services"
    );
    assert_eq!(
        raw_request(&api, "agent-token", "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases", ""),
        403,
        "Leases only in the install namespace"
    );
    // The allocator writes Service status but cannot read Secrets.
    assert_eq!(raw_request(&api, "alloc-token", "GET", "/api/v1/namespaces/default/services/web", ""), 200);
    assert_eq!(raw_request(&api, "alloc-token", "GET", "/api/v1/namespaces/purelb-system/secrets", ""), 403);
}

/// kubectl's generators send built-in kinds as protobuf; `replace`, `edit`, `delete --wait`,
/// `wait`, `events` and `get -w -o json` work as against a real server (issue 15).
#[test]
fn kubectl_generators_edit_wait_events_and_watch_work() {
    let api = ApiServer::start_with("generators", &[]);
    let before = api.state()["protobufBodies"].as_u64().unwrap();
    assert!(api.ok(&["create", "namespace", "x"]).contains("namespace/x created"));
    api.ok(&["create", "service", "loadbalancer", "web", "--tcp=80:8080", "-n", "x"]);
    api.ok(&["create", "configmap", "cm", "--from-literal=a=b", "-n", "x"]);
    api.ok(&["create", "secret", "generic", "s", "--from-literal=p=q", "-n", "x"]);
    let after = api.state()["protobufBodies"].as_u64().unwrap();
    assert!(after >= before + 4, "kubectl sent its generators' objects as protobuf ({before} -> {after})");

    let svc: serde_json::Value =
        serde_json::from_str(&api.ok(&["get", "svc", "web", "-n", "x", "-o", "json"])).unwrap();
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() >= 30000, "a node port is allocated: {svc}");
    assert_eq!(svc["spec"]["selector"]["app"], "web");
    assert!(svc["spec"].get("loadBalancerIP").is_none(), "empty strings are left out: {svc}");
    assert_eq!(api.ok(&["get", "secret", "s", "-n", "x", "-o", "jsonpath={.data.p}"]), "cQ==");

    // replace: the whole object, read back changed.
    let mut edited = svc.clone();
    edited["spec"]["selector"]["app"] = "web2".into();
    let file = api.write("svc.json", &edited.to_string());
    api.ok(&["replace", "-f", path(&file)]);
    assert_eq!(api.ok(&["get", "svc", "web", "-n", "x", "-o", "jsonpath={.spec.selector.app}"]), "web2");
    // edit, with a scripted editor.
    api.ok_env(&[("EDITOR", "sed -i s/a:\\ b/a:\\ c/")], &["edit", "configmap", "cm", "-n", "x"]);
    assert_eq!(api.ok(&["get", "cm", "cm", "-n", "x", "-o", "jsonpath={.data.a}"]), "c");

    // wait (jsonpath and condition) and get -w -o json, all started before the change.
    let wait_ip = api.spawn(&[
        "wait",
        "-n",
        "x",
        "--for=jsonpath={.status.loadBalancer.ingress[0].ip}=192.0.2.5",
        "svc/web",
        "--timeout=30s",
    ]);
    let wait_condition =
        api.spawn(&["wait", "-n", "x", "--for=condition=purelb.io/Allocated", "svc/web", "--timeout=30s"]);
    let watch = api.spawn(&["get", "svc", "web", "-n", "x", "-w", "-o", "json", "--request-timeout=8s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, _) = api.kubectl(&["wait", "-n", "x", "--for=condition=purelb.io/Allocated", "svc/web", "--timeout=1s"]);
    assert!(!ok, "the condition is not there yet");
    api.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "x",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.5","ipMode":"VIP"}]},"conditions":[{"type":"purelb.io/Allocated","status":"True","reason":"Allocated","message":"192.0.2.5 from default","lastTransitionTime":"2026-12-02T00:00:00Z"}]}}"#,
    ]);
    let (ok, out) = finish(wait_ip);
    assert!(ok && out.contains("condition met"), "{out}");
    let (ok, out) = finish(wait_condition);
    assert!(ok && out.contains("condition met"), "{out}");
    let (_, watched) = finish(watch);
    assert!(watched.matches("\"kind\": \"Service\"").count() >= 2 && watched.contains("192.0.2.5"), "{watched}");

    // events: a core/v1 Event, listed by kubectl events.
    let event = api.write(
        "event.yaml",
        "apiVersion: v1\nkind: Event\nmetadata: {name: web.1, namespace: x}\ninvolvedObject: {kind: Service, name: web, namespace: x, apiVersion: v1}\nreason: AddressAssigned\nmessage: assigned 192.0.2.5\ntype: Normal\nsource: {component: purelb-allocator}\nfirstTimestamp: \"2026-12-02T00:00:00Z\"\nlastTimestamp: \"2026-12-02T00:00:00Z\"\ncount: 1\n",
    );
    api.ok(&["create", "-f", path(&event)]);
    let out = api.ok(&["events", "-n", "x"]);
    assert!(out.contains("AddressAssigned") && out.contains("Service/web"), "{out}");

    // delete --wait: the namespace and what is in it are gone when kubectl returns.
    api.ok(&["delete", "namespace", "x", "--wait", "--timeout=30s"]);
    let (ok, out) = api.kubectl(&["get", "namespace", "x"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
    let (ok, out) = api.kubectl(&["get", "svc", "web", "-n", "x"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
}

/// Helm's own engine installs, upgrades and uninstalls the chart in the emulator (issue 15).
#[test]
fn helm_installs_upgrades_and_uninstalls_the_chart() {
    let api = ApiServer::start_with("helm", &[]);
    let release = api.helm("install", "{}");
    assert_eq!(release["status"], "deployed", "{release}");
    assert_eq!(release["revision"], 1);
    assert!(api.state()["protobufBodies"].as_u64().unwrap() > 0, "Helm stores its release as a protobuf Secret");
    // Every object of the rendered manifest exists.
    let manifest = release["manifest"].as_str().unwrap();
    let mut checked = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
        let object: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if object.is_null() {
            continue;
        }
        let kind = object["kind"].as_str().unwrap();
        let group = object["apiVersion"].as_str().unwrap().rsplit_once('/').map_or("", |(g, _)| g);
        let resource = if group.is_empty() { kind.to_lowercase() } else { format!("{}.{group}", kind.to_lowercase()) };
        let name = object["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", &resource, name, "-o", "name"];
        if let Some(ns) = object["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        api.ok(&args);
        checked += 1;
    }
    assert!(checked >= 10, "{checked} objects in the manifest");
    // The post-install hook (the default LBNodeAgent) too, and Helm's release record.
    api.ok(&["get", "lbnodeagent", "default", "-n", "purelb-system"]);
    let out = api.ok(&["get", "secrets", "-n", "purelb-system", "-l", "owner=helm", "-o", "name"]);
    assert!(out.contains("sh.helm.release.v1.purelb.v1"), "{out}");

    let release = api.helm("upgrade", r#"{"agent": {"settleTime": "3s"}}"#);
    assert_eq!((release["status"].as_str(), release["revision"].as_u64()), (Some("deployed"), Some(2)), "{release}");
    let env = api.ok(&[
        "get",
        "ds",
        "purelb-agent",
        "-n",
        "purelb-system",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]);
    assert!(env.contains(r#""name":"PURELB_SETTLE_TIME","value":"3s""#), "{env}");
    assert_eq!(api.helm("status", "{}")["revision"], 2);

    let release = api.helm("uninstall", "{}");
    assert_eq!(release["status"], "uninstalled", "{release}");
    let (ok, out) = api.kubectl(&["get", "deployment", "purelb-allocator", "-n", "purelb-system"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
    // The CRDs stay (helm.sh/resource-policy: keep), as Helm reports.
    assert!(release["kept"].as_str().unwrap().contains("servicegroups.purelb.io"), "{release}");
    api.ok(&["get", "crd", "servicegroups.purelb.io"]);
}

/// `--version` changes what the server says and keeps (issue 15): `/version`, unknown fields
/// of built-in kinds refused under kubectl's Strict validation and dropped otherwise, `ipMode`
/// dropped before 1.30, Service conditions validated as on a real server.
#[test]
fn the_emulated_version_decides_fields_and_validation() {
    let api = ApiServer::start_with("v128", &["--version", "v1.28.0"]);
    let version: serde_json::Value = serde_json::from_str(&api.ok(&["version", "-o", "json"])).unwrap();
    assert_eq!(version["serverVersion"]["minor"], "28", "{version}");
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.28.0");

    let svc = api.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: LoadBalancer\n  bogus: 1\n  ports: [{port: 80, extra: x}]\n",
    );
    let (ok, out) = api.kubectl(&["create", "-f", path(&svc)]);
    assert!(
        !ok && out.contains(r#"unknown field "spec.bogus""#) && out.contains(r#"unknown field "spec.ports[0].extra""#),
        "{out}"
    );
    api.ok(&["create", "--validate=false", "-f", path(&svc)]);
    let stored: serde_json::Value = serde_json::from_str(&api.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    assert!(stored["spec"].get("bogus").is_none() && stored["spec"]["ports"][0].get("extra").is_none(), "{stored}");

    api.ok(&[
        "patch",
        "svc",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.5","ipMode":"VIP"}]}}}"#,
    ]);
    let ingress = api.ok(&["get", "svc", "web", "-o", "jsonpath={.status.loadBalancer.ingress}"]);
    assert_eq!(ingress, r#"[{"ip":"192.0.2.5"}]"#, "1.28 has no ipMode");

    let (ok, out) = api.kubectl(&[
        "patch",
        "svc",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"purelb.io/Allocated","status":"Yes","reason":"Allocated","message":"","lastTransitionTime":"2026-12-02T00:00:00Z"}]}}"#,
    ]);
    assert!(
        !ok && out.contains("is invalid") && out.contains(r#"status.conditions[0].status: Unsupported value: "Yes""#),
        "{out}"
    );

    let api33 = ApiServer::start_with("v133", &[]);
    let file = api33.write("svc.yaml", &std::fs::read_to_string(&svc).unwrap());
    api33.ok(&["create", "--validate=false", "-f", path(&file)]);
    api33.ok(&[
        "patch",
        "svc",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.5","ipMode":"VIP"}]}}}"#,
    ]);
    let ingress = api33.ok(&["get", "svc", "web", "-o", "jsonpath={.status.loadBalancer.ingress}"]);
    assert_eq!(ingress, r#"[{"ip":"192.0.2.5","ipMode":"VIP"}]"#);
}

/// `purelb allocator` against a cluster without the PureLB CRDs: one clear line that says what
/// to install (not a raw 404 dump on every retry), `/readyz` false (issue 16 §5).
#[test]
fn without_the_crds_the_allocator_says_what_to_install_and_is_not_ready() {
    let api = ApiServer::start_with("nocrds", &[]);
    api.ok(&["create", "namespace", "purelb-system"]);
    let purelb = purelb_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(&purelb)
        .args(["allocator", "--leader-elect=false", "--kubeconfig"])
        .arg(api.kubeconfig())
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let ready = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/readyz")])
        .output()
        .expect("curl runs (apt-get install curl)");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "503", "not ready without the CRDs:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("is not installed")).collect();
    assert!(
        lines.iter().any(|l| l.contains("servicegroups.purelb.io")
            && l.contains("kubectl apply --server-side -f manifests/crds.yaml")),
        "{log}"
    );
    // Once per watch, not once per retry (several retries happen in 4 s).
    assert!(lines.len() <= 2, "{} lines:\n{log}", lines.len());
    assert!(!log.contains("ApiError"), "{log}");
}

/// The `purelb` binary the tests run (`PURELB_BIN`, else the debug build).
fn purelb_bin() -> PathBuf {
    let purelb = std::env::var_os("PURELB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/purelb"));
    assert!(purelb.exists(), "{} is missing: cargo build -p purelb --bin purelb", purelb.display());
    purelb
}

/// Runs `purelb allocator` with `kubeconfig` for `secs` seconds; its log.
fn allocator_log(kubeconfig: &Path, secs: u64) -> String {
    let purelb = purelb_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(&purelb)
        .args(["allocator", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(secs));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Issue 16 §5: credentials the API server refuses (401) and a server that cannot be reached
/// each give one clear line per watch naming the server and the identity, not a line per retry.
#[test]
fn refused_credentials_and_an_unreachable_server_name_the_server_and_the_identity() {
    use base64::Engine as _;
    let api = ApiServer::start_with("unauth", &["--authorize", "rbac"]);
    let config = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let server = config.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_owned();
    // A service-account-shaped token the server does not know.
    let claims = r#"{"sub":"system:serviceaccount:purelb-system:purelb-allocator"}"#;
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let token = format!("{}.{}.c2lnbmF0dXJl", encode(r#"{"alg":"RS256"}"#), encode(claims));
    let refused = api.dir.join("refused.kubeconfig");
    purelb_e2e::apiserver::write_kubeconfig(&refused, &server, Some(&token), "default").unwrap();
    let log = allocator_log(&refused, 5);
    // Match the status, not any "401" (a port number in another line may contain it).
    let lines: Vec<&str> =
        log.lines().filter(|l| l.contains("answered 401") || l.contains("(401 Unauthorized)")).collect();
    assert!(!lines.is_empty(), "{log}");
    for line in &lines {
        assert!(line.contains(&server), "the server is not named: {line}");
        assert!(
            line.contains("system:serviceaccount:purelb-system:purelb-allocator"),
            "the identity is not named: {line}"
        );
    }
    // One per watch and one for the election at most, although each retries every few seconds.
    assert!(lines.len() <= 6, "{} lines about 401 in 5 s:\n{log}", lines.len());
    assert!(lines.iter().any(|l| l.contains("leader election")), "{log}");

    // Nothing listens: "cannot reach" with the server and the kubeconfig user.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = api.dir.join("unreachable.kubeconfig");
    purelb_e2e::apiserver::write_kubeconfig(&unreachable, &format!("http://{closed}"), None, "default").unwrap();
    let log = allocator_log(&unreachable, 5);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("cannot reach the API server")).collect();
    assert!(!lines.is_empty(), "{log}");
    for line in &lines {
        assert!(line.contains(&format!("http://{closed}")) && line.contains("kubeconfig user lab"), "{line}");
    }
    assert!(lines.len() <= 6, "{} lines in 5 s:\n{log}", lines.len());
}
