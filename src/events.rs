//! Publishing Kubernetes Events for the controllers: in order, in the background, with a
//! timeout, never holding up a worker (Events are best effort). Entry point:
//! [`publish_in_background`].

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// One Event to publish: type, reason, message.
pub type EventSpec = (EventType, &'static str, String);

/// Publishes `events` about `reference` one after another in a background task. One task per
/// object keeps them ordered and apart (kube names Events by timestamp).
pub fn publish_in_background(
    recorder: &Recorder,
    reference: ObjectReference,
    events: Vec<EventSpec>,
    timeout: Duration,
) {
    if events.is_empty() {
        return;
    }
    let recorder = recorder.clone();
    tokio::spawn(async move {
        for (type_, reason, note) in events {
            // kube's Recorder folds Events with the same type, reason and action into one series
            // that keeps the first note, so the action carries the message to keep different
            // messages apart.
            let action: String = format!("{reason}: {note}").chars().take(128).collect();
            let event = Event {
                type_,
                reason: reason.to_owned(),
                note: Some(note.chars().take(1000).collect()),
                action,
                secondary: None,
            };
            match tokio::time::timeout(timeout, recorder.publish(&event, &reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, reason, "cannot publish Event"),
                Err(_) => tracing::warn!(reason, "publishing an Event timed out"),
            }
        }
    });
}
