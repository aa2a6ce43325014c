//! Series whose label values name things that can go away — Services, addresses, interfaces,
//! pools — so that the label sets on `/metrics` stay bounded by what exists now (`api.md` §4).
//! The `metrics` recorder cannot forget a series once created (a gone Service would stay at 0
//! forever), so these families live here and are rendered after the recorder's output:
//!
//! - gauges are replaced as a whole family ([`replace_gauges`]) or one series at a time
//!   ([`set_gauge`]) and pruned with [`retain`];
//! - counters ([`increment`]) keep counting while their labels exist and are pruned with
//!   [`retain`] when the object goes (a counter that disappears is read as "gone", which is
//!   what it is).
//!
//! Which families are scoped is [`catalog::SCOPED`](super::catalog::SCOPED); the catalog gives
//! their `# HELP` and `# TYPE` lines.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{LazyLock, Mutex, PoisonError},
};

use super::catalog::{self, Kind};

/// One series' labels, in the order given.
pub type Labels = Vec<(&'static str, String)>;

static FAMILIES: LazyLock<Mutex<BTreeMap<&'static str, BTreeMap<Labels, f64>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn with<T>(f: impl FnOnce(&mut BTreeMap<&'static str, BTreeMap<Labels, f64>>) -> T) -> T {
    f(&mut FAMILIES.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Replaces every series of gauge `name` with `series`.
pub fn replace_gauges(name: &'static str, series: impl IntoIterator<Item = (Labels, f64)>) {
    let series: BTreeMap<Labels, f64> = series.into_iter().collect();
    with(|families| families.insert(name, series));
}

/// Sets one series of gauge `name`.
pub fn set_gauge(name: &'static str, labels: Labels, value: f64) {
    with(|families| families.entry(name).or_default().insert(labels, value));
}

/// Removes one series of gauge `name`.
pub fn remove_gauge(name: &'static str, labels: &Labels) {
    with(|families| {
        if let Some(series) = families.get_mut(name) {
            series.remove(labels);
        }
    });
}

/// Adds `by` to one series of counter `name` (creating it at `by`; `0` creates it at 0).
pub fn increment(name: &'static str, labels: Labels, by: u64) {
    #[allow(clippy::cast_precision_loss)]
    let by = by as f64;
    with(|families| *families.entry(name).or_default().entry(labels).or_insert(0.0) += by);
}

/// Keeps only the series of `name` for which `keep` is true.
pub fn retain(name: &'static str, keep: impl Fn(&Labels) -> bool) {
    with(|families| {
        if let Some(series) = families.get_mut(name) {
            series.retain(|labels, _| keep(labels));
        }
    });
}

/// The value of one series, if it exists.
#[must_use]
pub fn value(name: &str, labels: &Labels) -> Option<f64> {
    with(|families| families.get(name).and_then(|s| s.get(labels)).copied())
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends every scoped family that has series, in Prometheus text format, to `out`.
pub fn render(out: &mut String) {
    with(|families| {
        for (name, series) in families.iter().filter(|(_, s)| !s.is_empty()) {
            let def = catalog::ALL.iter().find(|d| d.name == *name);
            if let Some(def) = def {
                let kind = match def.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                };
                let _ = writeln!(out, "# HELP {name} {}", def.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            for (labels, value) in series {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
            out.push('\n');
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn gone_series_disappear_and_counters_keep_counting_while_they_exist() {
        let name = catalog::LBNODEAGENT_ANNOUNCED;
        let series = |svc: &str| vec![("service", svc.to_owned()), ("ip", "192.0.2.1".to_owned())];
        replace_gauges(name, [(series("a/web"), 1.0), (series("a/api"), 1.0)]);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("# TYPE purelb_lbnodeagent_announced gauge"), "{out}");
        assert!(out.contains("purelb_lbnodeagent_announced{service=\"a/web\",ip=\"192.0.2.1\"} 1"), "{out}");
        replace_gauges(name, [(series("a/api"), 1.0)]);
        let mut out = String::new();
        render(&mut out);
        assert!(!out.contains("a/web"), "{out}");
        assert!(out.contains("a/api"), "{out}");

        let counter = catalog::ADDRESS_POOL_REJECTED;
        let pool = |p: &str| vec![("pool", p.to_owned()), ("reason", "exhausted".to_owned())];
        increment(counter, pool("gone"), 0);
        increment(counter, pool("kept"), 2);
        increment(counter, pool("kept"), 1);
        assert_eq!(value(counter, &pool("kept")), Some(3.0));
        assert_eq!(value(counter, &pool("gone")), Some(0.0));
        retain(counter, |labels| labels[0].1 == "kept");
        assert_eq!(value(counter, &pool("gone")), None);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("purelb_address_pool_allocation_rejected_total{pool=\"kept\",reason=\"exhausted\"} 3"));
        assert!(out.contains("# TYPE purelb_address_pool_allocation_rejected_total counter"));
        set_gauge(catalog::ENDPOINTSLICE_COUNT, vec![("service", "x\"y".to_owned())], 2.0);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("purelb_endpointslice_count{service=\"x\\\"y\"} 2"), "{out}");
    }
}
