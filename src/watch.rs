//! Watch caches for the controllers: a kube reflector whose events are handed to a callback
//! (which usually queues work), restarted with backoff on errors. Entry points:
//! [`spawn_reflector`], [`watch_restartable`], [`restart_quiet_since`], [`with_backoff`],
//! [`WatchBackoff`].

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use kube::{
    Api,
    runtime::{
        reflector::{self, Store},
        utils::Backoff,
        watcher,
    },
};

/// First delay before a failed watch is started again.
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest delay (before jitter) between attempts to start a failed watch.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// The retry delays of the watch caches: [`WATCH_BACKOFF_MIN`] doubling up to
/// [`WATCH_BACKOFF_MAX`], each with up to a quarter added at random (so that many agents do not
/// reconnect in step), back to the minimum after any successful event.
///
/// Not kube-rs's default (client-go's 800 ms doubling to 30 s): after an API outage of half a
/// minute a cache could then stay stale for up to another 30 s while its controller, whose Lease
/// renews fine, keeps acting on it (the chaos soak, issue 9, saw agents keep deleted Services'
/// addresses and miss new ones for 6–16 s after outages). A bounded delay keeps every cache at
/// most about 5 s behind a recovered API.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
    state: u64,
}

impl WatchBackoff {
    /// A backoff starting at [`WATCH_BACKOFF_MIN`], with its own jitter sequence.
    #[must_use]
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
        Self { next: WATCH_BACKOFF_MIN, state: seed | 1 }
    }

    /// Uniform in `[0, 1)` (xorshift64*).
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        Some(base + base.mul_f64(self.unit() / 4.0))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

/// The API server and the identity this process uses, for error lines (set once at start).
static TARGET: OnceLock<String> = OnceLock::new();

/// Names the API server (`https://...`) and the identity (a service account, a kubeconfig
/// user) in every line about an unreachable server or refused credentials.
pub fn set_api_target(server: &str, identity: &str) {
    let _ = TARGET.set(format!("the API server {server} (as {identity})"));
}

fn target() -> &'static str {
    TARGET.get().map_or("the API server", String::as_str)
}

/// One line for the client errors an operator fixes outside PureLB, naming the server and the
/// identity: the server unreachable, the credentials refused (401), a permission missing
/// (403). `None` for other errors. `doing` says what was tried ("watching services").
#[must_use]
pub fn explain_client_error(doing: &str, error: &kube::Error) -> Option<String> {
    let target = target();
    match error {
        kube::Error::Api(status) if status.code == 401 => Some(format!(
            "{target} refused the credentials (401 Unauthorized) while {doing}: check the service account token or the kubeconfig; retrying with backoff"
        )),
        kube::Error::Api(status) if status.code == 403 => Some(format!(
            "{target} forbids {doing} ({}): apply PureLB's RBAC (manifests/rbac.yaml or the chart); retrying with backoff",
            status.message
        )),
        kube::Error::Api(_) => None,
        other => Some(format!("cannot reach {target} while {doing} ({other}); retrying with backoff")),
    }
}

/// One line that says what is wrong with a watch of `resource` (`plural.group`, e.g.
/// `servicegroups.purelb.io`) and how to fix it, for the failures an operator can fix: the
/// PureLB CRDs not installed (404), credentials refused (401), RBAC missing (403), the API
/// server unreachable (these name the server and the identity, [`explain_client_error`]).
/// Anything else is the error itself.
#[must_use]
pub fn explain(resource: &str, error: &watcher::Error) -> String {
    let doing = format!("watching {resource}");
    let status = match error {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            match e {
                kube::Error::Api(status) if status.code == 404 && resource.ends_with(".purelb.io") => Some(404),
                other => {
                    if let Some(line) = explain_client_error(&doing, other) {
                        return line;
                    }
                    None
                }
            }
        }
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    };
    match status {
        Some(404) if resource.ends_with(".purelb.io") => format!(
            "the CustomResourceDefinition {resource} is not installed: kubectl apply --server-side -f manifests/crds.yaml (or install the chart); retrying"
        ),
        Some(code @ (401 | 403)) => format!(
            "{} answered {code} while {doing}: check the credentials and PureLB's RBAC (manifests/rbac.yaml or the chart); retrying",
            target()
        ),
        _ => format!("watch of {resource} failed: {error}; retrying"),
    }
}

/// Logs a watch's errors once per distinct explanation (not on every retry), and its recovery.
#[derive(Debug, Default)]
pub struct ErrorLog {
    last: Option<String>,
}

impl ErrorLog {
    /// A watch error of `resource`: logged when its explanation differs from the last one.
    pub fn error(&mut self, name: &str, resource: &str, error: &watcher::Error) {
        let line = explain(resource, error);
        if self.last.as_deref() == Some(line.as_str()) {
            tracing::debug!(watch = name, %error, "watch error; retrying");
        } else {
            tracing::warn!(watch = name, "{line}");
            self.last = Some(line);
        }
    }

    /// A successful event: logs the recovery after errors. `Init` (the start of a relist,
    /// which may still fail) is not a recovery.
    pub fn ok<K>(&mut self, name: &str, event: &watcher::Event<K>) {
        if matches!(event, watcher::Event::Init) {
            return;
        }
        if self.last.take().is_some() {
            tracing::info!(watch = name, "watch works again");
        }
    }
}

/// `event` with its object (if any) made into a `C` by `map`.
fn map_event<K, C>(event: watcher::Event<K>, map: fn(K) -> C) -> watcher::Event<C> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(map(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(map(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(map(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// `plural.group` of `K` (`services` for the core group).
fn resource_name<K: kube::Resource>() -> String
where
    K::DynamicType: Default,
{
    let dt = K::DynamicType::default();
    let (plural, group) = (K::plural(&dt), K::group(&dt));
    if group.is_empty() { plural.into_owned() } else { format!("{plural}.{group}") }
}

/// Starts a reflector on `api` in the background and returns its cache; every watch event is
/// passed to `on_event` after the cache has applied it. Errors are logged (once per distinct
/// explanation, [`explain`]) and retried.
pub fn spawn_reflector<K, F>(api: Api<K>, config: watcher::Config, name: &'static str, on_event: F) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    spawn_mapped_reflector(api, config, name, std::convert::identity, on_event)
}

/// [`spawn_reflector`] whose cache keeps each object as `map` makes it: the fields the process
/// never reads removed, or a smaller type of its own, so that they take no memory.
pub fn spawn_mapped_reflector<K, C, F>(
    api: Api<K>,
    config: watcher::Config,
    name: &'static str,
    map: fn(K) -> C,
    mut on_event: F,
) -> Store<C>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    C::DynamicType: Default + Eq + std::hash::Hash + Clone,
    F: FnMut(&watcher::Event<C>) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watch_restartable(api, config).map_ok(move |event| map_event(event, map)));
    let resource = resource_name::<K>();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut log = ErrorLog::default();
        let received = metrics::counter!(crate::telemetry::catalog::WATCH_EVENTS, "watch" => name);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                        received.increment(1);
                    }
                    log.ok(name, &event);
                    on_event(&event);
                }
                Err(error) => log.error(name, &resource, &error),
            }
        }
        tracing::error!(watch = name, "watch stream ended");
    });
    reader
}

/// Whether `error` is an expired watch (a 410 Gone / `Expired` event in the watch stream): the
/// watcher has already dropped its position and lists afresh on its next poll. Not a 410 answer
/// to the watch request itself: after that kube's watcher retries the same resource version, so
/// retrying at once would only hammer the API server.
fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// `stream` (a kube watcher) with [`WatchBackoff`] between attempts after an error, except after
/// an expired watch (410): that one lists again at once.
///
/// kube's own `.backoff()` waits after every error, so a cache whose watch expired stayed up to
/// 312 ms behind the caches of other nodes whose watches did not. An agent that had lost an
/// election then kept the address that long after the new winner added it (the chaos soak saw a
/// 236 ms overlap, over the 200 ms bound). An expired watch is normal operation (the API server
/// compacted its history), not a failure to back off from.
pub fn with_backoff<K: Send + 'static>(
    stream: BoxStream<'static, watcher::Result<watcher::Event<K>>>,
) -> BoxStream<'static, watcher::Result<watcher::Event<K>>> {
    futures::stream::unfold((stream, WatchBackoff::new(), None), |(mut stream, mut backoff, delay)| async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let item = stream.next().await?;
        let delay = match &item {
            // Any event resets the backoff, also the `Init` of a relist that then fails: backing
            // off across such relists kept a cache seconds behind a recovered API server (the
            // chaos soak saw a node cut off for 7.6 s keep an address 226 ms too long). A list
            // that keeps failing (a missing CRD) is logged once instead ([`ErrorLog`]).
            Ok(_) => {
                backoff.reset();
                None
            }
            Err(error) if is_expired(error) => None,
            Err(_) => backoff.next(),
        };
        Some((item, (stream, backoff, delay)))
    })
    .boxed()
}

/// The last restart asked for: the instant before which a watch must have delivered its last
/// item to be started again (see [`restart_quiet_since`]). Every send notifies, also of the same
/// instant.
type RestartSignal = std::time::Instant;

/// Every restartable watch of this process listens here (see [`restart_quiet_since`]).
fn restarts() -> &'static tokio::sync::watch::Sender<RestartSignal> {
    static RESTARTS: std::sync::OnceLock<tokio::sync::watch::Sender<RestartSignal>> = std::sync::OnceLock::new();
    RESTARTS.get_or_init(|| tokio::sync::watch::channel(std::time::Instant::now()).0)
}

/// Starts again, with a fresh list (the caches are replaced, not cleared), every watch of this
/// process that has delivered nothing since `since`. For a controller that has just found its API
/// connection working again after an outage: a watch whose connection silently hung through it
/// would otherwise stay stale until the client's read timeout (minutes) while the controller acts
/// on it (found by the chaos soak).
///
/// A watch that delivered an event or an error after `since` is evidently connected (or already
/// reconnecting) and is left alone: restarting every watch relisted every Service and
/// EndpointSlice of the cluster whenever a loaded API server answered one renewal late, 184 full
/// Service lists per agent while 50,000 Services were created (issue 20).
pub fn restart_quiet_since(since: std::time::Instant) {
    restarts().send_replace(since);
}

/// A watcher (with [`WatchBackoff`]) that starts again on [`restart_quiet_since`].
pub fn watch_restartable<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, watcher::Result<watcher::Event<K>>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    restartable(move || with_backoff(watcher::watcher(api.clone(), config.clone()).boxed()), restarts().subscribe())
}

/// The stream `make` returns, made again whenever `restart` asks for the restart of watches that
/// have been quiet since an instant and this one has (nothing delivered since then).
fn restartable<T: Send + 'static>(
    make: impl Fn() -> BoxStream<'static, T> + Send + 'static,
    mut restart: tokio::sync::watch::Receiver<RestartSignal>,
) -> BoxStream<'static, T> {
    restart.mark_unchanged();
    let first = make();
    let last_item = std::time::Instant::now();
    futures::stream::unfold(
        (first, restart, make, last_item),
        |(mut stream, mut restart, make, mut last_item)| async move {
            loop {
                tokio::select! {
                    item = stream.next() => {
                        last_item = std::time::Instant::now();
                        return item.map(|item| (item, (stream, restart, make, last_item)));
                    }
                    changed = restart.changed() => {
                        if changed.is_err() {
                            // Cannot happen (the sender is static or outlives the test); never spin on it.
                            return None;
                        }
                        let since = *restart.borrow_and_update();
                        if last_item < since {
                            tracing::info!("starting a watch again after the API connection recovered");
                            stream = make();
                            last_item = std::time::Instant::now();
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of `()` that yields one item every `every` (never when `None`), counting in
    /// `made` how often it was made.
    fn counted(
        made: &std::sync::Arc<AtomicU64>,
        every: Option<Duration>,
    ) -> impl Fn() -> BoxStream<'static, ()> + Send + 'static {
        let made = made.clone();
        move || {
            made.fetch_add(1, Ordering::SeqCst);
            match every {
                Some(every) => futures::stream::repeat(()).then(move |()| tokio::time::sleep(every)).boxed(),
                None => futures::stream::pending().boxed(),
            }
        }
    }

    #[tokio::test]
    async fn after_an_outage_only_the_watches_that_delivered_nothing_since_start_again() {
        let (signal, receiver) = tokio::sync::watch::channel(std::time::Instant::now());
        let (busy_made, quiet_made) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicU64::new(0)));
        let busy = restartable(counted(&busy_made, Some(Duration::from_millis(5))), receiver.clone());
        let quiet = restartable(counted(&quiet_made, None), receiver);
        let tasks = [busy, quiet].map(|mut stream| tokio::spawn(async move { while stream.next().await.is_some() {} }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let since = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        signal.send_replace(since);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            busy_made.load(Ordering::SeqCst),
            1,
            "a watch that delivered after the gap began kept its connection"
        );
        assert_eq!(quiet_made.load(Ordering::SeqCst), 2, "a watch quiet since then started again");
        // An instant nobody delivered after: every watch starts again.
        signal.send_replace(std::time::Instant::now() + Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((busy_made.load(Ordering::SeqCst), quiet_made.load(Ordering::SeqCst)), (2, 3));
        for task in tasks {
            task.abort();
        }
    }

    #[test]
    fn watch_retries_are_bounded_jittered_and_reset() {
        let mut backoff = WatchBackoff::new();
        let delays: Vec<Duration> = backoff.by_ref().take(10).collect();
        for (delay, base) in delays.iter().zip([250, 500, 1000, 2000, 4000, 4000, 4000, 4000, 4000, 4000]) {
            let base = Duration::from_millis(base);
            assert!(*delay >= base && *delay <= base + base / 4, "{delay:?} for {base:?}");
        }
        backoff.reset();
        assert!(backoff.next().is_some_and(|d| d < Duration::from_millis(320)));
        // Two backoffs do not jitter in step.
        let (a, b): (Vec<Duration>, Vec<Duration>) =
            (WatchBackoff::new().take(5).collect(), WatchBackoff::new().take(5).collect());
        assert_ne!(a, b);
    }

    fn watch_error(code: u16) -> watcher::Error {
        let mut status =
            kube::core::Status::failure("watch failed", if code == 410 { "Expired" } else { "InternalError" });
        status.code = code;
        watcher::Error::WatchError(Box::new(status))
    }

    #[test]
    fn watch_errors_say_what_to_fix() {
        let api = |code: u16| {
            let mut status =
                kube::core::Status::failure("the server could not find the requested resource", "NotFound");
            status.code = code;
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
        };
        let missing = explain("servicegroups.purelb.io", &api(404));
        assert!(missing.contains("CustomResourceDefinition servicegroups.purelb.io is not installed"), "{missing}");
        assert!(missing.contains("kubectl apply --server-side -f manifests/crds.yaml"), "{missing}");
        assert!(explain("services", &api(401)).contains("refused the credentials"));
        assert!(explain("services", &api(403)).contains("apply PureLB's RBAC"));
        assert!(!explain("services", &api(404)).contains("CustomResourceDefinition"));
        assert!(explain("services", &watch_error(500)).contains("watch of services failed"));
        // The server and the identity are named once they are known.
        set_api_target("https://192.0.2.1:6443", "system:serviceaccount:purelb-system:purelb-agent");
        for code in [401, 403] {
            let line = explain("services", &api(code));
            assert!(
                line.contains("https://192.0.2.1:6443")
                    && line.contains("system:serviceaccount:purelb-system:purelb-agent"),
                "{line}"
            );
        }
        let unreachable = kube::Error::Service("connection refused".into());
        let line = explain_client_error("renewing the Lease", &unreachable).unwrap();
        assert!(
            line.starts_with("cannot reach the API server https://192.0.2.1:6443 (as system:serviceaccount"),
            "{line}"
        );
        assert!(line.contains("renewing the Lease"), "{line}");
    }

    /// The time each item of `items` (through [`with_backoff`]) arrived after the one before.
    async fn gaps(items: Vec<watcher::Result<watcher::Event<()>>>) -> Vec<Duration> {
        let mut stream = with_backoff(futures::stream::iter(items).boxed());
        let mut gaps = Vec::new();
        let mut last = tokio::time::Instant::now();
        while stream.next().await.is_some() {
            gaps.push(last.elapsed());
            last = tokio::time::Instant::now();
        }
        gaps
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_watch_lists_again_at_once_and_other_errors_back_off() {
        let gaps = gaps(vec![
            Err(watch_error(410)),
            Ok(watcher::Event::Init),
            Err(watch_error(500)),
            Ok(watcher::Event::InitDone),
            Err(watch_error(410)),
            Err(watch_error(500)),
            Err(watch_error(500)),
            Ok(watcher::Event::Init),
        ])
        .await;
        let ms = |d: &Duration| d.as_millis();
        assert_eq!(gaps.len(), 8);
        // After the 410: nothing waited.
        assert_eq!(ms(&gaps[1]), 0, "{gaps:?}");
        assert_eq!(ms(&gaps[5]), 0, "{gaps:?}");
        // After another error: the backoff, growing while errors repeat.
        assert!((250..=313).contains(&ms(&gaps[3])), "{gaps:?}");
        assert!((250..=313).contains(&ms(&gaps[6])), "{gaps:?}");
        assert!((500..=625).contains(&ms(&gaps[7])), "{gaps:?}");
    }
}
