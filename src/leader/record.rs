//! The pure half of leader election: what a Lease says ([`LeaseRecord`]), when this replica
//! first saw it say that ([`Observation`]), what to do about it ([`decide`]), how long a
//! successful write lets us lead ([`Validity::after_write`]) and the Lease objects we write
//! ([`new_lease`], [`claim_lease`], [`release_lease`]). No IO and no clock of its own: local
//! instants and wall-clock timestamps are passed in.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use tokio::time::Instant;

use super::{LABEL_COMPONENT_ALLOCATOR, LeaderConfig};
use crate::api::contract::LABEL_APP_NAME;

/// The longest `leaseDurationSeconds` of another holder that we honour as written; longer
/// values are read as this, so that the expiry instant cannot overflow.
pub(crate) const MAX_HONOURED_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The fields of a Lease that the election reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// `spec.holderIdentity`; `None` when absent or empty (released).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` when positive.
    pub duration: Option<Duration>,
    /// `spec.renewTime`.
    pub renew_time: Option<Timestamp>,
    /// `spec.leaseTransitions` (0 when absent).
    pub transitions: i32,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// Reads the election fields of `lease`.
    pub(crate) fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|secs| u64::try_from(secs).ok())
                .filter(|secs| *secs > 0)
                .map(|secs| Duration::from_secs(secs).min(MAX_HONOURED_DURATION)),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// What this replica last saw the Lease say, and when (by its own monotonic clock) it first saw
/// it. Expiry is judged from this local instant, never from the holder's `renewTime`, so clock
/// skew between replicas does not matter (the rule of client-go's leader election).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    /// `spec.holderIdentity` as seen.
    pub holder: Option<String>,
    /// `spec.renewTime` as seen.
    pub renew_time: Option<Timestamp>,
    /// `metadata.resourceVersion` as seen.
    pub resource_version: Option<String>,
    /// The holder's lease duration (ours when the Lease does not say).
    pub duration: Duration,
    /// When this replica first saw this (holder, renewTime, resourceVersion).
    pub since: Instant,
}

impl Observation {
    /// The instant from which the holder counts as gone: `since + duration + slack`.
    pub(crate) fn expires_at(&self, slack: Duration) -> Instant {
        self.since + self.duration + slack
    }

    fn same_state(&self, record: &LeaseRecord) -> bool {
        self.holder == record.holder
            && self.renew_time == record.renew_time
            && self.resource_version == record.resource_version
    }
}

/// Folds a fresh read of the Lease (`None`: it does not exist) into the previous observation:
/// the observation keeps its `since` while (holder, renewTime, resourceVersion) stay the same,
/// and restarts at `now` when any of them changed. `default_duration` stands in for a missing
/// `leaseDurationSeconds`.
pub(crate) fn observe(
    previous: Option<Observation>,
    record: Option<&LeaseRecord>,
    now: Instant,
    default_duration: Duration,
) -> Option<Observation> {
    let record = record?;
    let duration = record.duration.unwrap_or(default_duration);
    match previous {
        Some(previous) if previous.same_state(record) => Some(Observation { duration, ..previous }),
        _ => Some(Observation {
            holder: record.holder.clone(),
            renew_time: record.renew_time,
            resource_version: record.resource_version.clone(),
            duration,
            since: now,
        }),
    }
}

/// What to do after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// There is no Lease: create it with us as holder.
    Create,
    /// We hold it: renew.
    Renew,
    /// It is free (released) or its holder counts as gone: take it over.
    Acquire {
        /// The holder we take it from (`None`: it was released).
        previous: Option<String>,
    },
    /// Someone else holds it: wait.
    Standby {
        /// The holder.
        holder: String,
        /// When the holder will count as gone unless the Lease changes before.
        until: Instant,
    },
}

/// The decision for `identity` given the Lease as read (`record`) and the observation it was
/// folded into ([`observe`]). A holder counts as gone once the observation is older than its
/// lease duration plus `slack`. Without an observation (not expected) the holder is treated as
/// seen just now.
pub(crate) fn decide(
    record: Option<&LeaseRecord>,
    observation: Option<&Observation>,
    identity: &str,
    now: Instant,
    config: &LeaderConfig,
) -> Decision {
    let Some(record) = record else { return Decision::Create };
    match record.holder.as_deref() {
        None => Decision::Acquire { previous: None },
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) => {
            let until = observation.map_or_else(
                || now + record.duration.unwrap_or(config.lease_duration) + config.expiry_slack,
                |o| o.expires_at(config.expiry_slack),
            );
            if now >= until {
                Decision::Acquire { previous: Some(holder.to_owned()) }
            } else {
                Decision::Standby { holder: holder.to_owned(), until }
            }
        }
    }
}

/// How long one successful write of the Lease lets this replica lead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    /// Until when the replica may start writes: `sent + lease_duration − safety_margin`.
    pub valid_until: Instant,
    /// Until when writes started before `valid_until` must have finished: `sent +
    /// lease_duration`. No standby can take over before this instant.
    pub deadline: Instant,
}

impl Validity {
    /// The validity earned by a write of the Lease sent at `sent` (the local instant just before
    /// the request left, not when the answer came back: the standbys start their clocks when
    /// they see the write, which is later still).
    pub(crate) fn after_write(sent: Instant, config: &LeaderConfig) -> Self {
        let deadline = sent + config.lease_duration;
        Self { valid_until: deadline - config.safety_margin, deadline }
    }
}

fn labels(metadata: &mut ObjectMeta) {
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    for (key, value) in [LABEL_APP_NAME, LABEL_COMPONENT_ALLOCATOR] {
        labels.insert(key.to_owned(), value.to_owned());
    }
}

/// A new Lease `namespace/name` held by `identity` since `now`.
pub(crate) fn new_lease(namespace: &str, name: &str, identity: &str, duration_seconds: i32, now: Timestamp) -> Lease {
    let mut metadata =
        ObjectMeta { name: Some(name.to_owned()), namespace: Some(namespace.to_owned()), ..ObjectMeta::default() };
    labels(&mut metadata);
    Lease {
        metadata,
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// `lease` (as read, keeping its resourceVersion for the conditional write) claimed by
/// `identity` at `now`: a renewal when `identity` already holds it (acquireTime and
/// leaseTransitions kept), otherwise a takeover (acquireTime = now, leaseTransitions + 1).
/// Fields the election does not own are kept.
pub(crate) fn claim_lease(mut lease: Lease, identity: &str, duration_seconds: i32, now: Timestamp) -> Lease {
    labels(&mut lease.metadata);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let renewing = spec.holder_identity.as_deref() == Some(identity);
    if !renewing || spec.acquire_time.is_none() {
        spec.acquire_time = Some(MicroTime(now));
    }
    if !renewing {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// `lease` released at `now`, as client-go releases: no holder, `leaseDurationSeconds` 1,
/// `renewTime` and `acquireTime` now, `leaseTransitions` kept. Our standbys take a holder-less
/// Lease at once; a client-go-style reader sees it expire after one second.
pub(crate) fn release_lease(mut lease: Lease, now: Timestamp) -> Lease {
    labels(&mut lease.metadata);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    spec.acquire_time = Some(MicroTime(now));
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaderConfig {
        LeaderConfig::new(Duration::from_secs(15), Duration::from_secs(5))
    }

    fn record(holder: Option<&str>, rv: &str, renew_secs: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            duration: Some(Duration::from_secs(15)),
            renew_time: Some(Timestamp::from_second(renew_secs).unwrap()),
            transitions: 0,
            resource_version: Some(rv.to_owned()),
        }
    }

    fn lease(holder: Option<&str>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: duration,
                renew_time: Some(MicroTime(Timestamp::from_second(100).unwrap())),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn record_reads_the_lease_and_treats_empty_holder_as_released() {
        let r = LeaseRecord::from_lease(&lease(Some("a"), Some(15)));
        assert_eq!(r.holder.as_deref(), Some("a"));
        assert_eq!(r.duration, Some(Duration::from_secs(15)));
        assert_eq!(r.transitions, 3);
        assert_eq!(r.resource_version.as_deref(), Some("7"));
        assert_eq!(LeaseRecord::from_lease(&lease(Some(""), Some(15))).holder, None);
        assert_eq!(LeaseRecord::from_lease(&lease(None, Some(0))).duration, None);
        assert_eq!(LeaseRecord::from_lease(&lease(None, Some(-5))).duration, None);
        assert_eq!(LeaseRecord::from_lease(&lease(None, Some(i32::MAX))).duration, Some(MAX_HONOURED_DURATION));
        let bare = LeaseRecord::from_lease(&Lease::default());
        assert_eq!((bare.holder, bare.duration, bare.transitions), (None, None, 0));
    }

    #[test]
    fn observation_keeps_its_start_while_nothing_changes() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let first = observe(None, Some(&record(Some("a"), "1", 100)), t0, d).unwrap();
        assert_eq!(first.since, t0);
        let same = observe(Some(first.clone()), Some(&record(Some("a"), "1", 100)), t0 + d, d).unwrap();
        assert_eq!(same.since, t0, "an unchanged Lease does not restart the clock");
        for changed in [record(Some("a"), "2", 100), record(Some("a"), "1", 101), record(Some("b"), "1", 100)] {
            let next = observe(Some(first.clone()), Some(&changed), t0 + d, d).unwrap();
            assert_eq!(next.since, t0 + d, "{changed:?} restarts the clock");
        }
        assert_eq!(observe(Some(first), None, t0, d), None, "a deleted Lease is not observed");
    }

    #[test]
    fn observation_uses_the_holders_duration_or_ours() {
        let t0 = Instant::now();
        let mut r = record(Some("a"), "1", 100);
        r.duration = Some(Duration::from_secs(40));
        let o = observe(None, Some(&r), t0, Duration::from_secs(15)).unwrap();
        assert_eq!(o.duration, Duration::from_secs(40));
        r.duration = None;
        let o = observe(None, Some(&r), t0, Duration::from_secs(15)).unwrap();
        assert_eq!(o.duration, Duration::from_secs(15));
    }

    #[test]
    fn expiry_is_judged_by_the_local_clock_with_slack() {
        let t0 = Instant::now();
        let slack = Duration::from_millis(500);
        let o = observe(None, Some(&record(Some("a"), "1", 100)), t0, Duration::from_secs(15)).unwrap();
        assert_eq!(o.expires_at(slack), t0 + Duration::from_millis(15_500));
        let c = LeaderConfig { expiry_slack: slack, ..config() };
        let r = record(Some("a"), "1", 100);
        assert!(matches!(
            decide(Some(&r), Some(&o), "b", t0 + Duration::from_millis(15_499), &c),
            Decision::Standby { .. }
        ));
        assert!(matches!(
            decide(Some(&r), Some(&o), "b", t0 + Duration::from_millis(15_500), &c),
            Decision::Acquire { .. }
        ));
        // The holder's renewTime (wall clock, possibly skewed by hours) plays no part.
        let skewed = observe(None, Some(&record(Some("a"), "1", -1_000_000)), t0, Duration::from_secs(15)).unwrap();
        assert_eq!(skewed.expires_at(slack), o.expires_at(slack));
    }

    #[test]
    fn decisions() {
        let c = config();
        let t0 = Instant::now();
        let held = record(Some("b"), "1", 100);
        let seen = observe(None, Some(&held), t0, c.lease_duration);
        assert_eq!(decide(None, None, "a", t0, &c), Decision::Create);
        assert_eq!(decide(Some(&record(Some("a"), "1", 100)), seen.as_ref(), "a", t0, &c), Decision::Renew);
        assert_eq!(
            decide(Some(&record(None, "1", 100)), seen.as_ref(), "a", t0, &c),
            Decision::Acquire { previous: None }
        );
        let until = t0 + c.lease_duration + c.expiry_slack;
        assert_eq!(
            decide(Some(&held), seen.as_ref(), "a", t0 + Duration::from_secs(14), &c),
            Decision::Standby { holder: "b".into(), until }
        );
        assert_eq!(
            decide(Some(&held), seen.as_ref(), "a", until, &c),
            Decision::Acquire { previous: Some("b".into()) }
        );
        // Without an observation the holder counts as seen just now.
        assert_eq!(
            decide(Some(&held), None, "a", t0, &c),
            Decision::Standby { holder: "b".into(), until: t0 + Duration::from_secs(15) + c.expiry_slack }
        );
    }

    #[test]
    fn a_standby_never_overlaps_the_leaders_validity() {
        // The leader sends its renewal at `sent`; the standby can only see it later. Whatever
        // the delays, the standby's takeover comes after the leader's deadline, which comes
        // after its validity.
        let c = config();
        let sent = Instant::now();
        let v = Validity::after_write(sent, &c);
        for seen_after_ms in [0, 1, 50, 3_000] {
            let seen = observe(
                None,
                Some(&record(Some("b"), "1", 1)),
                sent + Duration::from_millis(seen_after_ms),
                c.lease_duration,
            )
            .unwrap();
            assert!(v.valid_until < v.deadline);
            assert!(v.deadline <= seen.expires_at(c.expiry_slack));
        }
    }

    #[test]
    fn validity_after_a_write() {
        let c = config();
        let sent = Instant::now();
        let v = Validity::after_write(sent, &c);
        assert_eq!(v.deadline, sent + Duration::from_secs(15));
        assert_eq!(v.valid_until, sent + Duration::from_secs(10), "15 s lease − 5 s margin");
        let short = LeaderConfig::new(Duration::from_secs(2), Duration::from_millis(500));
        let v = Validity::after_write(sent, &short);
        assert_eq!(v.valid_until - sent, Duration::from_secs(2) - short.safety_margin);
        assert!(v.valid_until - sent > 2 * short.renew_interval, "two renewals may fail before leadership lapses");
    }

    #[test]
    fn new_claimed_and_released_leases() {
        let now = Timestamp::from_second(1_000).unwrap();
        let created = new_lease("ns", "purelb-allocator", "a", 15, now);
        let spec = created.spec.clone().unwrap();
        assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(created.metadata.labels.as_ref().unwrap()["app.kubernetes.io/name"], "purelb");
        assert_eq!(created.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"], "allocator");
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!((spec.acquire_time.map(|t| t.0), spec.renew_time.map(|t| t.0)), (Some(now), Some(now)));
        assert_eq!(spec.lease_transitions, Some(0));

        // Takeover from b: transitions + 1, acquireTime now, resourceVersion kept.
        let taken = claim_lease(lease(Some("b"), Some(15)), "a", 15, now);
        let spec = taken.spec.clone().unwrap();
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time.map(|t| t.0), Some(now));

        // Renewal: acquireTime and transitions kept.
        let later = Timestamp::from_second(1_005).unwrap();
        let renewed = claim_lease(taken, "a", 15, later).spec.unwrap();
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time.map(|t| t.0), Some(now));
        assert_eq!(renewed.renew_time.map(|t| t.0), Some(later));

        // Release: no holder, 1 s, transitions kept; taking a released Lease is a transition.
        let released = release_lease(lease(Some("a"), Some(15)), later);
        let spec = released.spec.clone().unwrap();
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(LeaseRecord::from_lease(&released).holder, None);
        assert_eq!(claim_lease(released, "b", 15, later).spec.unwrap().lease_transitions, Some(4));
    }
}
