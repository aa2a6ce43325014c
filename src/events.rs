//! Publishing Kubernetes Events for the controllers: in order, in the background, with a
//! timeout, never holding up a worker (Events are best effort). Entry point: [`Publisher`].
//!
//! One background task sends the Events one after another, as client-go's broadcaster does:
//! a burst of allocations does not turn into a burst of concurrent Event writes competing with
//! the Service writes that matter more, and the Events of one object stay in order. The queue
//! is bounded ([`QUEUE`]); when it is full, further Events are dropped with a warning (and
//! counted in the log), never blocking a worker.
//!
//! Events are `events.k8s.io/v1` Events. A repeat of an Event (same type, reason, action and
//! object) within [`SERIES_WINDOW`] of the last one is counted in its series
//! (`series.count`, `series.lastObservedTime`) instead of becoming a new object, as client-go
//! and kube's `Recorder` do. kube-runtime 5's `Recorder` is not used: it scans every Event it
//! sent in the last six minutes on each publish and keeps a copy of each, which made a burst
//! of 50,000 allocations quadratic (5 % of the allocator's CPU at 50,000 Services) and held
//! 50,000 Events in memory. Here forgetting is in time order (amortised O(1) per Event) and at
//! most [`SERIES_KEPT`] series are remembered.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
pub use kube::runtime::events::{EventType, Reporter};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};

/// One Event to publish: type, reason, message.
pub type EventSpec = (EventType, &'static str, String);

/// Events waiting to be sent before new ones are dropped.
pub const QUEUE: usize = 20_000;

/// How long after its last occurrence a repeated Event joins its series (client-go's and
/// kube's six minutes).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Series remembered at most; beyond, the oldest are forgotten (a repeat of one of them
/// starts a new Event object).
pub const SERIES_KEPT: usize = 4_096;

/// One series: the Event object that counts the repeats.
#[derive(Debug)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// The series of the last [`SERIES_WINDOW`], by what makes two Events the same, with the order
/// in which they were last seen (a key appears once per occurrence; only its newest entry
/// counts).
#[derive(Debug, Default)]
struct SeriesCache {
    series: HashMap<String, Series>,
    seen: VecDeque<(Instant, String)>,
}

impl SeriesCache {
    /// Forgets the series not seen for [`SERIES_WINDOW`], and the oldest beyond
    /// [`SERIES_KEPT`] occurrences.
    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.seen.front() {
            let expired = now.saturating_duration_since(*at) >= SERIES_WINDOW;
            if !expired && self.seen.len() <= SERIES_KEPT {
                break;
            }
            let Some((at, key)) = self.seen.pop_front() else { break };
            if self.series.get(&key).is_some_and(|s| s.last == at) {
                self.series.remove(&key);
            }
        }
    }

    /// Records an occurrence of `key` at `now` in the series `namespace`/`name`.
    fn record(&mut self, key: String, namespace: String, name: String, count: i32, now: Instant) {
        self.seen.push_back((now, key.clone()));
        self.series.insert(key, Series { namespace, name, count, last: now });
    }
}

/// Writes Events as one reporter, with series for repeats.
struct Writer {
    client: Client,
    reporter: Reporter,
    cache: SeriesCache,
}

impl Writer {
    /// What makes two Events the same (client-go's and kube's key without the note: the
    /// action carries the message).
    fn key(type_: EventType, reason: &str, action: &str, reference: &ObjectReference) -> String {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        format!(
            "{type_:?}\0{reason}\0{action}\0{}\0{}\0{}\0{}\0{}",
            text(&reference.api_version),
            text(&reference.kind),
            text(&reference.namespace),
            text(&reference.name),
            text(&reference.uid)
        )
    }

    async fn publish(
        &mut self,
        type_: EventType,
        reason: &str,
        note: String,
        action: String,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Instant::now();
        self.cache.forget_old(now);
        let key = Self::key(type_, reason, &action, reference);
        let stamp = Timestamp::now();
        if let Some(series) = self.cache.series.get(&key) {
            let (namespace, name, count) = (series.namespace.clone(), series.name.clone(), series.count + 1);
            let api: Api<PartialObjectMeta<K8sEvent>> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(stamp)}});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.cache.record(key, namespace, name, count, now);
                    return Ok(());
                }
                // The Event expired on the server (its TTL) or was deleted: a new one.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.cache.series.remove(&key);
                }
                Err(error) => return Err(error),
            }
        }
        let namespace = reference.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_owned());
        let name =
            format!("{}.{:x}", reference.name.as_deref().unwrap_or(&self.reporter.controller), stamp.as_nanosecond());
        let event = K8sEvent {
            action: Some(action),
            reason: Some(reason.to_owned()),
            event_time: Some(MicroTime(stamp)),
            regarding: Some(reference.clone()),
            note: Some(note),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..K8sEvent::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        self.cache.record(key, namespace, name, 1, now);
        Ok(())
    }
}

/// Sends Events in the background, one at a time, in the order they were queued.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<(ObjectReference, EventSpec)>,
}

impl Publisher {
    /// Starts the background task (needs a Tokio runtime). It ends when every clone of the
    /// publisher is dropped and the queue is drained.
    #[must_use]
    pub fn start(client: Client, reporter: Reporter, timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, EventSpec)>(QUEUE);
        let mut writer = Writer { client, reporter, cache: SeriesCache::default() };
        tokio::spawn(async move {
            while let Some((reference, (type_, reason, note))) = rx.recv().await {
                // A series keeps its first note, and Events with the same type, reason and
                // action are one series: the action carries the message to keep different
                // messages apart.
                let action: String = format!("{reason}: {note}").chars().take(128).collect();
                let note: String = note.chars().take(1000).collect();
                match tokio::time::timeout(timeout, writer.publish(type_, reason, note, action, &reference)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, reason, "cannot publish Event"),
                    Err(_) => tracing::warn!(reason, "publishing an Event timed out"),
                }
            }
        });
        Self { tx }
    }

    /// Queues `events` about `reference`; returns at once.
    pub fn publish(&self, reference: &ObjectReference, events: Vec<EventSpec>) {
        for event in events {
            let reason = event.1;
            if let Err(error) = self.tx.try_send((reference.clone(), event)) {
                tracing::warn!(reason, object = ?reference.name, %error, "Event dropped: the Event queue is full or closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen_at(cache: &mut SeriesCache, key: &str, at: Instant) {
        cache.forget_old(at);
        let count = cache.series.get(key).map_or(1, |s| s.count + 1);
        cache.record(key.to_owned(), "ns".to_owned(), format!("{key}.1"), count, at);
    }

    #[test]
    fn a_series_is_forgotten_a_window_after_its_last_occurrence() {
        let t0 = Instant::now();
        let mut cache = SeriesCache::default();
        seen_at(&mut cache, "a", t0);
        seen_at(&mut cache, "b", t0);
        // "a" again after five minutes: its window starts again.
        seen_at(&mut cache, "a", t0 + Duration::from_secs(300));
        assert_eq!(cache.series["a"].count, 2);
        cache.forget_old(t0 + SERIES_WINDOW - Duration::from_millis(1));
        assert!(cache.series.contains_key("b"), "forgotten before its window ended");
        cache.forget_old(t0 + SERIES_WINDOW);
        assert!(!cache.series.contains_key("b"), "kept after its window");
        assert_eq!(cache.series["a"].count, 2, "a repeat keeps its series for a window after it");
        cache.forget_old(t0 + Duration::from_secs(300) + SERIES_WINDOW);
        assert!(cache.series.is_empty() && cache.seen.is_empty());
    }

    /// A burst of distinct Events (one per allocated Service) keeps at most `SERIES_KEPT`
    /// series, and forgetting costs nothing per Event that grows with the burst.
    #[test]
    fn a_burst_keeps_a_bounded_number_of_series() {
        let t0 = Instant::now();
        let mut cache = SeriesCache::default();
        for i in 0..50_000 {
            seen_at(&mut cache, &format!("svc-{i}"), t0);
        }
        assert!(cache.series.len() <= SERIES_KEPT + 1, "{} series kept", cache.series.len());
        assert!(cache.seen.len() <= SERIES_KEPT + 1, "{} occurrences kept", cache.seen.len());
        assert!(cache.series.contains_key("svc-49999"), "the newest is kept");
        assert!(!cache.series.contains_key("svc-0"), "the oldest is forgotten first");
    }
}
