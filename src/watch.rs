//! Watch caches for the controllers: a kube reflector whose events are handed to a callback
//! (which usually queues work), restarted with backoff on errors. Entry point:
//! [`spawn_reflector`].

use futures::StreamExt;
use kube::{
    Api,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};

/// Starts a reflector on `api` in the background and returns its cache; every watch event is
/// passed to `on_event` after the cache has applied it. Errors are logged and retried.
pub fn spawn_reflector<K, F>(api: Api<K>, config: watcher::Config, name: &'static str, mut on_event: F) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => on_event(&event),
                Err(error) => tracing::warn!(watch = name, %error, "watch error; retrying"),
            }
        }
        tracing::error!(watch = name, "watch stream ended");
    });
    reader
}
