//! The emulator as the real kube-rs client stack sees it, in-process and over HTTP: CRUD,
//! conflicts, the status subresource, server-side apply, selectors, pagination over 1,200
//! objects, reflectors with bookmarks, relists after 410 Gone, and recovery from every fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use purelb::{
    k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service},
    kube::{
        Api, Client, ResourceExt,
        api::{ListParams, Patch, PatchParams, PostParams},
        runtime::{WatchStreamExt, reflector, watcher},
    },
};
use purelb_e2e::apiserver::{Emulator, EmulatorOptions, FailMode, FailRule, FaultRequest, HttpServer, Injected};
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Transport {
    InProcess,
    Http,
}

struct Harness {
    emulator: Emulator,
    _http: Option<HttpServer>,
    url: Option<String>,
}

impl Harness {
    async fn new(transport: Transport) -> Self {
        let emulator = Emulator::start(EmulatorOptions {
            bookmark_interval: Duration::from_millis(200),
            ..EmulatorOptions::default()
        })
        .unwrap();
        let (http, url) = match transport {
            Transport::InProcess => (None, None),
            Transport::Http => {
                let server = emulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
                let url = server.url();
                (Some(server), Some(url))
            }
        };
        Self { emulator, _http: http, url }
    }

    async fn client(&self, token: Option<&str>) -> Client {
        match &self.url {
            None => self.emulator.client(token),
            Some(url) => {
                let dir = std::env::temp_dir().join(format!("purelb-kc-{}-{}", std::process::id(), rand_suffix()));
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join("kubeconfig");
                purelb_e2e::apiserver::write_kubeconfig(&path, url, token, "default").unwrap();
                let kubeconfig = purelb::kube::config::Kubeconfig::read_from(&path).unwrap();
                let config =
                    purelb::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
                let _ = std::fs::remove_dir_all(&dir);
                Client::try_from(config).unwrap()
            }
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn svc(name: &str) -> Service {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": "web", "idx": name}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
    )
    .unwrap()
}

async fn both<F, Fut>(body: F)
where
    F: Fn(Harness) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for transport in [Transport::InProcess, Transport::Http] {
        let harness = Harness::new(transport).await;
        tokio::time::timeout(Duration::from_secs(60), body(harness))
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: timed out"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_conflicts_status_and_generation() {
    both(|h| async move {
        let client = h.client(None).await;
        let api: Api<Service> = Api::namespaced(client, "default");
        let created = api.create(&PostParams::default(), &svc("web")).await.unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        let rv1 = created.resource_version().unwrap();

        let dup = api.create(&PostParams::default(), &svc("web")).await.unwrap_err();
        assert!(matches!(dup, purelb::kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"), "{dup:?}");

        // Update with the current version works; with a stale one it conflicts.
        let mut next = created.clone();
        next.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let updated = api.replace("web", &PostParams::default(), &next).await.unwrap();
        assert_eq!(updated.metadata.generation, Some(2), "spec change bumps generation");
        let stale = api.replace("web", &PostParams::default(), &next).await.unwrap_err();
        assert!(matches!(stale, purelb::kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"), "{stale:?}");
        assert_ne!(updated.resource_version().unwrap(), rv1);

        // Status subresource: only status changes; main writes keep status.
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.240"}]}}, "spec": {"type": "ClusterIP"}});
        let after = api.patch_status("web", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
        assert_eq!(after.spec.as_ref().unwrap().type_.as_deref(), Some("LoadBalancer"), "status write ignores spec");
        assert_eq!(after.metadata.generation, Some(2), "status write keeps generation");
        let main = json!({"metadata": {"annotations": {"a": "b"}}, "status": {"loadBalancer": {}}});
        let after = api.patch("web", &PatchParams::default(), &Patch::Merge(&main)).await.unwrap();
        let ingress = after.status.clone().unwrap().load_balancer.unwrap().ingress.unwrap();
        assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.240"), "main write keeps status");
        assert_eq!(after.metadata.generation, Some(2), "metadata change keeps generation");

        // A no-op patch does not bump the resourceVersion.
        let rv = after.resource_version();
        let same = api.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": {"a": "b"}}}))).await.unwrap();
        assert_eq!(same.resource_version(), rv);

        // Server-side apply creates and then merges the applied fields.
        let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa", "annotations": {"x": "1"}},
            "spec": {"ports": [{"port": 443}]}});
        let pp = PatchParams::apply("purelb-test").force();
        let first = api.patch("ssa", &pp, &Patch::Apply(&applied)).await.unwrap();
        assert_eq!(first.annotations().get("x").map(String::as_str), Some("1"));
        let second = api.patch("ssa", &pp, &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa", "annotations": {"y": "2"}}}))).await.unwrap();
        assert_eq!(second.annotations().len(), 2);
        let no_manager = api.patch("ssa", &PatchParams::default(), &Patch::Apply(&applied)).await;
        assert!(no_manager.is_err());

        // Selectors.
        let by_label = api.list(&ListParams::default().labels("app=web")).await.unwrap();
        assert_eq!(by_label.items.len(), 1);
        let by_set = api.list(&ListParams::default().labels("idx in (web,other),!missing")).await.unwrap();
        assert_eq!(by_set.items.len(), 1);
        let by_field = api.list(&ListParams::default().fields("metadata.name=ssa")).await.unwrap();
        assert_eq!(by_field.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["ssa"]);

        // Delete with a failing precondition conflicts; then deletes.
        let dp = purelb::kube::api::DeleteParams { preconditions: Some(purelb::kube::api::Preconditions { uid: Some("nope".into()), resource_version: None }), ..Default::default() };
        assert!(api.delete("web", &dp).await.is_err());
        api.delete("web", &Default::default()).await.unwrap();
        let gone = api.get("web").await.unwrap_err();
        assert!(matches!(gone, purelb::kube::Error::Api(ref s) if s.code == 404), "{gone:?}");

        // Namespaced create in a missing namespace is refused.
        let other: Api<Service> = Api::namespaced(h.client(None).await, "nowhere");
        assert!(other.create(&PostParams::default(), &svc("x")).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_one_consistent_snapshot() {
    both(|h| async move {
        let client = h.client(None).await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        for i in 0..1200 {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("cm-{i:04}")}, "data": {"i": i.to_string()}}),
            )
            .unwrap();
            api.create(&PostParams::default(), &cm).await.unwrap();
        }
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        let mut first_rv = None;
        loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = api.list(&lp).await.unwrap();
            pages += 1;
            first_rv.get_or_insert(page.metadata.resource_version.clone());
            assert_eq!(Some(page.metadata.resource_version.clone()), first_rv, "all pages at one revision");
            names.extend(page.items.iter().map(ResourceExt::name_any));
            if pages == 1 {
                // Writes between pages do not show up in later pages.
                let extra: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cm-zzzz"}})).unwrap();
                api.create(&PostParams::default(), &extra).await.unwrap();
                api.delete("cm-1199", &Default::default()).await.unwrap();
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(names.len(), 1200);
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 1200);
        assert!(names.contains(&"cm-1199".to_owned()) && !names.contains(&"cm-zzzz".to_owned()));
    })
    .await;
}

/// Runs a reflector on Services and waits until its store equals the server's list.
async fn converges(store: &reflector::Store<Service>, api: &Api<Service>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let truth: BTreeSet<(String, Option<String>)> = api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|s| (s.name_any(), s.resource_version())).collect())
            .unwrap_or_default();
        let seen: BTreeSet<(String, Option<String>)> =
            store.state().iter().map(|s| (s.name_any(), s.resource_version())).collect();
        if !truth.is_empty() && truth == seen {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector did not converge:\n truth {truth:?}\n seen  {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_reflector(client: Client) -> (reflector::Store<Service>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let api: Api<Service> = Api::namespaced(client, "default");
    let stream = reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let task = tokio::spawn(async move {
        stream.applied_objects().for_each(|_| async {}).await;
    });
    (reader, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_changes_and_relists_after_410() {
    both(|h| async move {
        let admin: Api<Service> = Api::namespaced(h.client(None).await, "default");
        for i in 0..5 {
            admin.create(&PostParams::default(), &svc(&format!("s{i}"))).await.unwrap();
        }
        let (store, task) = start_reflector(h.client(Some("watcher")).await);
        store.wait_until_ready().await.unwrap();
        converges(&store, &admin, Duration::from_secs(10)).await;
        admin.delete("s0", &Default::default()).await.unwrap();
        admin
            .patch("s1", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})))
            .await
            .unwrap();
        converges(&store, &admin, Duration::from_secs(10)).await;

        // History is compacted and the watch dropped: the watcher gets 410 and relists,
        // missing nothing and keeping no phantom.
        h.emulator.compact();
        h.emulator.faults().apply(FaultRequest::ExpireNextWatch { count: 1 });
        h.emulator.faults().apply(FaultRequest::CloseWatches { token: None });
        admin.delete("s2", &Default::default()).await.unwrap();
        admin.create(&PostParams::default(), &svc("s9")).await.unwrap();
        converges(&store, &admin, Duration::from_secs(20)).await;
        task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_bookmarks_and_resumes_from_them() {
    let h = Harness::new(Transport::Http).await;
    let url = h.url.clone().unwrap();
    let admin: Api<Service> = Api::namespaced(h.client(None).await, "default");
    admin.create(&PostParams::default(), &svc("a")).await.unwrap();
    let list = admin.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    // Raw watch: read lines until a BOOKMARK arrives.
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let addr = url.trim_start_matches("http://").to_owned();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "GET /api/v1/namespaces/default/services?watch=true&resourceVersion={rv}&allowWatchBookmarks=true HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reader = BufReader::new(stream);
        reader.lines().map_while(Result::ok).find(|l| l.contains("\"BOOKMARK\"")).unwrap_or_default()
    })
    .await
    .unwrap();
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["object"]["kind"], "Service");
    assert!(event["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap() >= 1);
}

async fn fault_recovery(fault: FaultRequest, settle: Duration) {
    fault_recovery_with(fault, settle, true).await;
}

/// With `writes_during`, another client changes objects while the fault lasts; otherwise
/// (the whole server is down) right after it clears, while the watcher is still backing off.
async fn fault_recovery_with(fault: FaultRequest, settle: Duration, writes_during: bool) {
    for transport in [Transport::InProcess, Transport::Http] {
        let h = Harness::new(transport).await;
        let admin: Api<Service> = Api::namespaced(h.client(None).await, "default");
        admin.create(&PostParams::default(), &svc("before")).await.unwrap();
        let (store, task) = start_reflector(h.client(Some("victim")).await);
        store.wait_until_ready().await.unwrap();
        converges(&store, &admin, Duration::from_secs(10)).await;
        // A change seen after the list proves the watch is open, so that a fault on open
        // watches meets one (on a loaded machine the watch request may still be on its way).
        admin.create(&PostParams::default(), &svc("probe")).await.unwrap();
        converges(&store, &admin, Duration::from_secs(10)).await;
        admin.delete("probe", &Default::default()).await.unwrap();
        converges(&store, &admin, Duration::from_secs(10)).await;
        h.emulator.faults().apply(fault_clone(&fault));
        if matches!(fault, FaultRequest::ExpireNextWatch { .. } | FaultRequest::Fail(_)) {
            // These strike the *next* watch: end the open one so that the client meets them.
            h.emulator.faults().apply(FaultRequest::CloseWatches { token: None });
        }
        // Changes made by another client while the fault lasts.
        let writer = h.emulator.client(None);
        let during: Api<Service> = Api::namespaced(writer, "default");
        if writes_during {
            during.create(&PostParams::default(), &svc("during")).await.unwrap();
            during.delete("before", &Default::default()).await.unwrap();
        }
        tokio::time::sleep(settle).await;
        h.emulator.faults().apply(FaultRequest::Clear);
        if !writes_during {
            during.create(&PostParams::default(), &svc("during")).await.unwrap();
            during.delete("before", &Default::default()).await.unwrap();
        }
        during.create(&PostParams::default(), &svc("after")).await.unwrap();
        converges(&store, &during, Duration::from_secs(45)).await;
        let names: BTreeSet<String> = store.state().iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["after", "during"].iter().map(|s| (*s).to_owned()).collect(), "{transport:?}");
        // The fault struck: recovering from a fault that never happened proves nothing.
        let injected = h.emulator.faults().injected();
        assert!(struck(&fault, &injected), "{transport:?}: {fault:?} did not strike: {injected:?}");
        task.abort();
    }
}

/// Whether the emulator counted `fault` striking at least once.
fn struck(fault: &FaultRequest, injected: &Injected) -> bool {
    match fault {
        FaultRequest::Unavailable { mode: FailMode::Refuse, .. } => injected.refused > 0,
        FaultRequest::Unavailable { mode: FailMode::Hang, .. } => injected.hung > 0,
        FaultRequest::Unavailable { mode: FailMode::Unavailable, .. } | FaultRequest::Fail(_) => injected.failed > 0,
        FaultRequest::Latency { .. } => injected.delayed > 0,
        FaultRequest::CloseWatches { .. } => injected.watches_closed > 0,
        FaultRequest::ExpireNextWatch { .. } => injected.expired > 0,
        // The cut ends the client's open watch, if one was open yet; its requests then meet the
        // fault either way.
        FaultRequest::CutClient { mode, .. } => match mode {
            FailMode::Refuse => injected.refused > 0,
            FailMode::Hang => injected.hung > 0,
            FailMode::Unavailable => injected.failed > 0,
        },
        FaultRequest::LateWrites { .. } => injected.delayed > 0,
        FaultRequest::RestoreClient { .. } | FaultRequest::Clear => true,
    }
}

fn fault_clone(f: &FaultRequest) -> FaultRequest {
    serde_json::from_value(match f {
        FaultRequest::Unavailable { seconds, mode } => {
            json!({"action": "unavailable", "seconds": seconds, "mode": mode_name(*mode)})
        }
        FaultRequest::Latency { millis } => json!({"action": "latency", "millis": millis}),
        FaultRequest::CloseWatches { token } => json!({"action": "closeWatches", "token": token}),
        FaultRequest::ExpireNextWatch { count } => json!({"action": "expireNextWatch", "count": count}),
        FaultRequest::Fail(FailRule { verb, resource, code, count, token }) => {
            json!({"action": "fail", "verb": verb, "resource": resource, "code": code, "count": count, "token": token})
        }
        FaultRequest::CutClient { token, mode, seconds } => {
            json!({"action": "cutClient", "token": token, "mode": mode_name(*mode), "seconds": seconds})
        }
        FaultRequest::RestoreClient { token } => json!({"action": "restoreClient", "token": token}),
        FaultRequest::LateWrites { token, millis } => json!({"action": "lateWrites", "token": token, "millis": millis}),
        FaultRequest::Clear => json!({"action": "clear"}),
    })
    .unwrap()
}

fn mode_name(m: FailMode) -> &'static str {
    match m {
        FailMode::Refuse => "refuse",
        FailMode::Unavailable => "unavailable",
        FailMode::Hang => "hang",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_server_unavailable_refused() {
    fault_recovery_with(
        FaultRequest::Unavailable { seconds: 2.0, mode: FailMode::Refuse },
        Duration::from_secs(2),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_server_unavailable_503() {
    fault_recovery_with(
        FaultRequest::Unavailable { seconds: 2.0, mode: FailMode::Unavailable },
        Duration::from_secs(2),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_latency() {
    fault_recovery(FaultRequest::Latency { millis: 300 }, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_closed_watches() {
    fault_recovery(FaultRequest::CloseWatches { token: None }, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_forced_410() {
    fault_recovery(FaultRequest::ExpireNextWatch { count: 2 }, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_failed_requests() {
    let rule =
        FailRule { verb: Some("watch".into()), resource: Some("services".into()), code: 500, count: 3, token: None };
    fault_recovery(FaultRequest::Fail(rule), Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_one_client_cut_off_while_others_work() {
    fault_recovery(
        FaultRequest::CutClient { token: "victim".into(), mode: FailMode::Unavailable, seconds: Some(3.0) },
        Duration::from_secs(3),
    )
    .await;
    fault_recovery(
        FaultRequest::CutClient { token: "victim".into(), mode: FailMode::Refuse, seconds: None },
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_owner_garbage_collection() {
    both(|h| async move {
        let client = h.client(None).await;
        let nsapi: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
        nsapi.create(&PostParams::default(), &ns).await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
        let owner = cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap()).await.unwrap();
        let dep: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "dep", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()}]}})).unwrap();
        cms.create(&PostParams::default(), &dep).await.unwrap();
        cms.delete("owner", &Default::default()).await.unwrap();
        assert!(cms.get_opt("dep").await.unwrap().is_none(), "dependent collected with its owner");
        cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "left"}})).unwrap()).await.unwrap();
        nsapi.delete("team", &Default::default()).await.unwrap();
        assert!(cms.get_opt("left").await.unwrap().is_none(), "namespace contents deleted with it");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allows_only_what_roles_grant() {
    for transport in [Transport::InProcess, Transport::Http] {
        let emulator = Emulator::start(EmulatorOptions { authorize: true, ..EmulatorOptions::default() }).unwrap();
        let http = match transport {
            Transport::Http => Some(emulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap()),
            Transport::InProcess => None,
        };
        let url = http.as_ref().map(HttpServer::url);
        let h = Harness { emulator, _http: http, url };
        h.emulator.add_token("reader-token", "system:serviceaccount:default:reader");
        let admin = h.client(None).await;
        let role_api: Api<purelb::k8s_openapi::api::rbac::v1::Role> = Api::namespaced(admin.clone(), "default");
        role_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "read-services"},
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}]}))
                .unwrap(),
            )
            .await
            .unwrap();
        let rb_api: Api<purelb::k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(admin.clone(), "default");
        rb_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-services"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}]}))
                .unwrap(),
            )
            .await
            .unwrap();
        Api::<Service>::namespaced(admin.clone(), "default").create(&PostParams::default(), &svc("web")).await.unwrap();

        let reader: Api<Service> = Api::namespaced(h.client(Some("reader-token")).await, "default");
        assert_eq!(reader.list(&ListParams::default()).await.unwrap().items.len(), 1, "{transport:?}: list allowed");
        let mut web = reader.get("web").await.unwrap();
        web.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        let denied = reader.replace("web", &PostParams::default(), &web).await.unwrap_err();
        match denied {
            purelb::kube::Error::Api(s) => {
                assert_eq!(s.code, 403, "{transport:?}");
                assert!(
                    s.message.contains("system:serviceaccount:default:reader")
                        && s.message.contains("cannot update resource \"services\""),
                    "{}",
                    s.message
                );
            }
            other => panic!("{other:?}"),
        }
        let status = reader
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&json!({"status": {}})))
            .await
            .unwrap_err();
        assert!(
            matches!(status, purelb::kube::Error::Api(ref s) if s.code == 403),
            "services/status is a separate resource"
        );
        let other_ns: Api<Service> = Api::namespaced(h.client(Some("reader-token")).await, "kube-system");
        assert!(
            matches!(other_ns.list(&ListParams::default()).await.unwrap_err(), purelb::kube::Error::Api(ref s) if s.code == 403)
        );
        let unknown: Api<Service> = Api::namespaced(h.client(Some("who-is-this")).await, "default");
        assert!(
            matches!(unknown.list(&ListParams::default()).await.unwrap_err(), purelb::kube::Error::Api(ref s) if s.code == 401)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_with_data_dir() {
    let dir = std::env::temp_dir().join(format!("purelb-emu-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = EmulatorOptions { data_dir: Some(dir.clone()), ..EmulatorOptions::default() };
    let rv_before = {
        let emulator = Emulator::start(options.clone()).unwrap();
        let client = emulator.client(None);
        let crds: Api<
            purelb::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = Api::all(client.clone());
        crds.create(&PostParams::default(), &<purelb::api::ServiceGroup as purelb::kube::CustomResourceExt>::crd())
            .await
            .unwrap();
        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        svcs.create(&PostParams::default(), &svc("kept")).await.unwrap();
        svcs.create(&PostParams::default(), &svc("deleted")).await.unwrap();
        svcs.delete("deleted", &Default::default()).await.unwrap();
        emulator.revision()
    };
    let emulator = Emulator::start(options).unwrap();
    assert!(emulator.revision() >= rv_before, "revision continues");
    let client = emulator.client(None);
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let names: Vec<String> =
        svcs.list(&ListParams::default()).await.unwrap().items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["kept"]);
    let created = svcs.create(&PostParams::default(), &svc("new")).await.unwrap();
    assert!(created.resource_version().unwrap().parse::<u64>().unwrap() > rv_before);
    let groups: Api<purelb::api::ServiceGroup> = Api::namespaced(client, "default");
    assert!(groups.list(&ListParams::default()).await.is_ok(), "CRD served again after restart");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Streaming lists (`sendInitialEvents`, client-go's WatchList, Helm 4's readiness watcher):
/// the current objects, an `InitDone` once the server's initial-events-end bookmark arrives,
/// then live changes; refused before 1.32, where the feature gate is off (clients list instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_send_the_state_then_changes_from_1_32() {
    let emulator = Emulator::start(EmulatorOptions::default()).unwrap();
    let api: Api<Service> = Api::namespaced(emulator.client(None), "default");
    api.create(&PostParams::default(), &svc("a")).await.unwrap();
    api.create(&PostParams::default(), &svc("b")).await.unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = BTreeSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => {
                initial.insert(s.name_any());
            }
            watcher::Event::InitDone => break,
            other => panic!("before InitDone: {other:?}"),
        }
    }
    assert_eq!(initial, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    api.create(&PostParams::default(), &svc("c")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(&next, watcher::Event::Apply(s) if s.name_any() == "c"), "{next:?}");

    let old = Emulator::start(EmulatorOptions { version: "v1.31.0".to_owned(), ..EmulatorOptions::default() }).unwrap();
    let api: Api<Service> = Api::namespaced(old.client(None), "default");
    let mut stream = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
    assert!(format!("{first:?}").contains("sendInitialEvents"), "1.31 refuses streaming lists: {first:?}");
}

/// `lateWrites` (issue 16 §3): a write is applied after the delay even when its client gave up
/// waiting, as a real server may apply a request it received before the client's timeout; the
/// client's other requests and other clients are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_lands_after_its_client_gave_up() {
    for transport in [Transport::InProcess, Transport::Http] {
        let h = Harness::new(transport).await;
        let admin: Api<Service> = Api::namespaced(h.client(None).await, "default");
        let victim: Api<Service> = Api::namespaced(h.client(Some("victim")).await, "default");
        h.emulator.faults().apply(fault_clone(&FaultRequest::LateWrites { token: "victim".into(), millis: 800 }));
        let started = std::time::Instant::now();
        let (pp, late) = (PostParams::default(), svc("late"));
        let create = tokio::time::timeout(Duration::from_millis(200), victim.create(&pp, &late)).await;
        assert!(create.is_err(), "{transport:?}: the client gave up");
        assert!(victim.get_opt("late").await.unwrap().is_none(), "{transport:?}: reads are served at once");
        admin.create(&PostParams::default(), &svc("other")).await.unwrap();
        let landed = async {
            while admin.get_opt("late").await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            started.elapsed()
        };
        let at = tokio::time::timeout(Duration::from_secs(5), landed).await.expect("the late write never landed");
        assert!(at >= Duration::from_millis(800), "{transport:?}: landed after {at:?}");
        assert!(h.emulator.faults().injected().delayed > 0);
    }
}
