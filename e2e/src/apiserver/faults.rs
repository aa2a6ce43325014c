//! Fault injection: make the server unavailable, slow, drop its watches, expire the next
//! watch, fail chosen requests, or cut one client off. Set from the Rust library
//! ([`Faults`]) or over `POST /_emulator/faults` with a JSON body (see `e2e/README.md`).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::watch;

/// How an unavailable server or a cut-off client fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Connections are refused (the listener is closed) / the request errors at once.
    #[default]
    Refuse,
    /// Every request is answered 503 Service Unavailable.
    Unavailable,
    /// Requests are never answered (the client's own timeout must fire).
    Hang,
}

/// A rule failing the next `count` requests that match.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct FailRule {
    /// Verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`), or absent for any.
    #[serde(default)]
    pub verb: Option<String>,
    /// Resource plural (`services`, `services/status`, `leases`), or absent for any.
    #[serde(default)]
    pub resource: Option<String>,
    /// HTTP status to answer.
    pub code: u16,
    /// How many requests to fail.
    pub count: u32,
    /// Only requests with this bearer token, or absent for any client.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    unavailable_until: Option<(Instant, FailMode)>,
    latency: Duration,
    expire_next_watches: u32,
    fail_rules: Vec<FailRule>,
    cut: Vec<(String, FailMode, Option<Instant>)>,
    /// Writes of one client held this long before they are applied (token, delay).
    late_writes: Vec<(String, Duration)>,
}

/// How often each fault actually struck a request (not just how often it was switched on), so
/// that a fault-injection test can assert that its fault happened. `/_emulator/state` shows it
/// as `injected`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Injected {
    /// Requests answered with an injected error code (fail rules, 503 unavailability or cut-off).
    pub failed: u64,
    /// In-process requests refused, plus times the HTTP listener was closed.
    pub refused: u64,
    /// Requests left without an answer.
    pub hung: u64,
    /// Requests served after an injected latency.
    pub delayed: u64,
    /// Watches answered 410 Gone on purpose.
    pub expired: u64,
    /// Open watches ended on purpose.
    pub watches_closed: u64,
}

/// The fault switches of one emulator.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    injected: Mutex<Injected>,
    /// Bumped to end every open watch (all, or those of one token).
    watch_epoch: watch::Sender<(u64, Option<String>)>,
}

/// A JSON request to `/_emulator/faults`.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum FaultRequest {
    /// `{"action":"unavailable","seconds":30,"mode":"refuse|unavailable|hang"}`
    Unavailable {
        seconds: f64,
        #[serde(default)]
        mode: FailMode,
    },
    /// `{"action":"latency","millis":200}` (0 clears)
    Latency { millis: u64 },
    /// `{"action":"closeWatches"}`, or `{"action":"closeWatches","token":"..."}` for one client's
    CloseWatches {
        #[serde(default)]
        token: Option<String>,
    },
    /// `{"action":"expireNextWatch","count":1}`
    ExpireNextWatch {
        #[serde(default = "one")]
        count: u32,
    },
    /// `{"action":"fail","verb":"update","resource":"services/status","code":500,"count":3}`
    Fail(FailRule),
    /// `{"action":"cutClient","token":"...","mode":"hang","seconds":20}` (no seconds: until restored)
    CutClient {
        token: String,
        #[serde(default)]
        mode: FailMode,
        #[serde(default)]
        seconds: Option<f64>,
    },
    /// `{"action":"restoreClient","token":"..."}`
    RestoreClient { token: String },
    /// `{"action":"lateWrites","token":"...","millis":20000}` (0 clears): every create, update,
    /// patch and delete of that client is applied only after `millis`, also when the client
    /// gave up waiting meanwhile (a real server may apply a request it received before the
    /// client's timeout fired).
    LateWrites { token: String, millis: u64 },
    /// `{"action":"clear"}`: everything back to normal.
    Clear,
}

fn one() -> u32 {
    1
}

/// What the server must do with a request given the current faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it (after `latency`).
    Serve { latency: Duration },
    /// Answer this status code.
    Fail(u16),
    /// Drop the connection without an answer.
    Refuse,
    /// Never answer.
    Hang,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            injected: Mutex::new(Injected::default()),
            watch_epoch: watch::channel((0, None)).0,
        }
    }
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the faults did so far.
    #[must_use]
    pub fn injected(&self) -> Injected {
        *self.injected.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one fault that struck.
    pub fn count(&self, what: impl FnOnce(&mut Injected)) {
        what(&mut self.injected.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Applies a fault request.
    pub fn apply(&self, request: FaultRequest) {
        let now = Instant::now();
        match request {
            FaultRequest::Unavailable { seconds, mode } => {
                self.lock().unavailable_until = Some((now + Duration::from_secs_f64(seconds.max(0.0)), mode));
                self.close_watches(None);
            }
            FaultRequest::Latency { millis } => self.lock().latency = Duration::from_millis(millis),
            FaultRequest::CloseWatches { token } => self.close_watches(token),
            FaultRequest::ExpireNextWatch { count } => self.lock().expire_next_watches += count,
            FaultRequest::Fail(rule) => self.lock().fail_rules.push(rule),
            FaultRequest::CutClient { token, mode, seconds } => {
                let until = seconds.map(|s| now + Duration::from_secs_f64(s.max(0.0)));
                {
                    let mut state = self.lock();
                    state.cut.retain(|(t, _, _)| *t != token);
                    state.cut.push((token.clone(), mode, until));
                }
                self.close_watches(Some(token));
            }
            FaultRequest::RestoreClient { token } => self.lock().cut.retain(|(t, _, _)| *t != token),
            FaultRequest::LateWrites { token, millis } => {
                let mut state = self.lock();
                state.late_writes.retain(|(t, _)| *t != token);
                if millis > 0 {
                    state.late_writes.push((token, Duration::from_millis(millis)));
                }
            }
            FaultRequest::Clear => *self.lock() = State::default(),
        }
    }

    /// Ends open watches (all, or those of one token).
    pub fn close_watches(&self, token: Option<String>) {
        self.watch_epoch.send_modify(|(epoch, who)| {
            *epoch += 1;
            *who = token;
        });
    }

    /// A receiver that changes when watches must close.
    #[must_use]
    pub fn watch_closer(&self) -> watch::Receiver<(u64, Option<String>)> {
        self.watch_epoch.subscribe()
    }

    /// Whether the server as a whole refuses connections right now.
    #[must_use]
    pub fn refusing_until(&self) -> Option<Instant> {
        let state = self.lock();
        match state.unavailable_until {
            Some((until, FailMode::Refuse)) if until > Instant::now() => Some(until),
            _ => None,
        }
    }

    /// Whether the next watch must get 410 Gone (consumes one).
    pub fn take_expire(&self) -> bool {
        let mut state = self.lock();
        if state.expire_next_watches > 0 {
            state.expire_next_watches -= 1;
            drop(state);
            self.count(|i| i.expired += 1);
            true
        } else {
            false
        }
    }

    /// How long a write (`verb`) of `token` is held before it is applied, if at all.
    #[must_use]
    pub fn late_write(&self, verb: &str, token: Option<&str>) -> Option<Duration> {
        let state = self.lock();
        if state.late_writes.is_empty() || !["create", "update", "patch", "delete"].contains(&verb) {
            return None;
        }
        let token = token?;
        state.late_writes.iter().find(|(t, _)| t == token).map(|(_, d)| *d)
    }

    /// What to do with a request of `verb` on `resource` from `token` (counted in [`Injected`]).
    pub fn verdict(&self, verb: &str, resource: &str, token: Option<&str>) -> Verdict {
        let verdict = self.decide(verb, resource, token);
        match verdict {
            Verdict::Serve { latency } if latency.is_zero() => {}
            Verdict::Serve { .. } => self.count(|i| i.delayed += 1),
            Verdict::Fail(_) => self.count(|i| i.failed += 1),
            Verdict::Refuse => self.count(|i| i.refused += 1),
            Verdict::Hang => self.count(|i| i.hung += 1),
        }
        verdict
    }

    fn decide(&self, verb: &str, resource: &str, token: Option<&str>) -> Verdict {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some((until, mode)) = state.unavailable_until {
            if until > now {
                return match mode {
                    FailMode::Refuse => Verdict::Refuse,
                    FailMode::Unavailable => Verdict::Fail(503),
                    FailMode::Hang => Verdict::Hang,
                };
            }
            state.unavailable_until = None;
        }
        state.cut.retain(|(_, _, until)| until.is_none_or(|u| u > now));
        if let Some(token) = token
            && let Some((_, mode, _)) = state.cut.iter().find(|(t, _, _)| t == token)
        {
            return match mode {
                FailMode::Refuse => Verdict::Refuse,
                FailMode::Unavailable => Verdict::Fail(503),
                FailMode::Hang => Verdict::Hang,
            };
        }
        if let Some(rule) = state.fail_rules.iter_mut().find(|r| {
            r.count > 0
                && r.verb.as_deref().is_none_or(|v| v == verb)
                && r.resource.as_deref().is_none_or(|res| res == resource)
                && r.token.as_deref().is_none_or(|t| Some(t) == token)
        }) {
            rule.count -= 1;
            let code = rule.code;
            state.fail_rules.retain(|r| r.count > 0);
            return Verdict::Fail(code);
        }
        Verdict::Serve { latency: state.latency }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fail_rule_with_a_token_fails_only_that_clients_requests() {
        let faults = Faults::default();
        let rule: FaultRequest = serde_json::from_value(serde_json::json!({
            "action": "fail", "verb": "watch", "resource": "endpointslices", "code": 500, "count": 2, "token": "a"
        }))
        .unwrap();
        faults.apply(rule);
        let serve = Verdict::Serve { latency: Duration::ZERO };
        assert_eq!(faults.verdict("watch", "endpointslices", Some("b")), serve);
        assert_eq!(faults.verdict("watch", "endpointslices", None), serve);
        assert_eq!(faults.verdict("list", "endpointslices", Some("a")), serve);
        assert_eq!(faults.verdict("watch", "endpointslices", Some("a")), Verdict::Fail(500));
        assert_eq!(faults.verdict("watch", "endpointslices", Some("a")), Verdict::Fail(500));
        assert_eq!(faults.verdict("watch", "endpointslices", Some("a")), serve);
    }

    #[test]
    fn close_watches_with_a_token_names_that_client() {
        let faults = Faults::default();
        let closer = faults.watch_closer();
        faults.apply(serde_json::from_value(serde_json::json!({"action": "closeWatches", "token": "a"})).unwrap());
        assert_eq!(*closer.borrow(), (1, Some("a".to_owned())));
        faults.apply(serde_json::from_value(serde_json::json!({"action": "closeWatches"})).unwrap());
        assert_eq!(*closer.borrow(), (2, None));
    }
}
