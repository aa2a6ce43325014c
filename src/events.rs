//! Publishing Kubernetes Events for the controllers: in order, in the background, with a
//! timeout, never holding up a worker (Events are best effort). Entry point: [`Publisher`].
//!
//! One background task sends the Events one after another, as client-go's broadcaster does:
//! a burst of allocations does not turn into a burst of concurrent Event writes competing with
//! the Service writes that matter more, and the Events of one object stay in order. The queue
//! is bounded ([`QUEUE`]); when it is full, further Events are dropped with a warning (and
//! counted in the log), never blocking a worker.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::mpsc;

/// One Event to publish: type, reason, message.
pub type EventSpec = (EventType, &'static str, String);

/// Events waiting to be sent before new ones are dropped.
pub const QUEUE: usize = 20_000;

/// Sends Events in the background, one at a time, in the order they were queued.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<(ObjectReference, EventSpec)>,
}

impl Publisher {
    /// Starts the background task (needs a Tokio runtime). It ends when every clone of the
    /// publisher is dropped and the queue is drained.
    #[must_use]
    pub fn start(recorder: Recorder, timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, EventSpec)>(QUEUE);
        tokio::spawn(async move {
            while let Some((reference, (type_, reason, note))) = rx.recv().await {
                // kube's Recorder folds Events with the same type, reason and action into one
                // series that keeps the first note, so the action carries the message to keep
                // different messages apart.
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
