//! The real `purelb allocator` process in the lab: leader election on, RBAC enforced by the
//! emulator with exactly `manifests/rbac.yaml`, its own service-account token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, time::Duration};

use purelb::{k8s_openapi::api::core::v1::Service, kube::Api};
use purelb_e2e::lab::{Lab, LabOptions, ProcessStatus};

fn purelb_bin() -> std::path::PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("purelb"))
        .find(|p| p.is_file())
        .expect("build the purelb binary first: cargo build -p purelb --bin purelb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_process_allocates_under_the_shipped_rbac() {
    let prefix = format!("plal{}", std::process::id());
    let options = LabOptions::new(&prefix, 2)
        .purelb_bin(purelb_bin())
        .lab_bin(env!("CARGO_BIN_EXE_purelb-lab"))
        .purelb(true, false)
        .ready_timeout(Duration::from_secs(20));
    let lab = Lab::start(options).await.unwrap();
    lab.apply_yaml(
        "apiVersion: purelb.io/v2\nkind: ServiceGroup\nmetadata: {name: default, namespace: purelb-system}\n\
         spec:\n  local:\n    v4pool: {pool: 192.0.2.240/29, subnet: 192.0.2.0/24}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
         spec:\n  type: LoadBalancer\n  ports: [{port: 80}]\n",
    )
    .await
    .unwrap();
    let api: Api<Service> = Api::namespaced(lab.client(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ip = loop {
        let svc = api.get("web").await.unwrap();
        if let Some(ip) = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|x| x.ip.clone()))
        {
            break ip;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no address; allocator log:\n{}",
            lab.log_tail("allocator", 40).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ip, "192.0.2.240");
    assert!(
        matches!(lab.status_of("allocator").unwrap(), ProcessStatus::Running { .. }),
        "{:?}",
        lab.status_of("allocator")
    );
    let log = lab.log_tail("allocator", 200).unwrap_or_default();
    assert!(!log.contains("forbidden") && !log.contains("403"), "the shipped RBAC is sufficient:\n{log}");
}
