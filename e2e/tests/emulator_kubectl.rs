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
            .expect("kubectl is installed");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }
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
