//! The migration report: per Service, its address now, the group it will belong to and a
//! verdict computed with the allocator's own table; and every source setting without an
//! equivalent, every guess and every error.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use k8s_openapi::api::core::v1::Service;
use serde::Serialize;
use serde_json::Value;

use super::{Converted, Input, Options, Plan, ServiceChange};
use crate::{
    agent::decide::ingress_addresses,
    allocator::{
        groups::GroupSet,
        request::{ServiceKey, ServiceRequest},
        table::{Allocator, Decision},
    },
    api::{ServiceGroup, contract},
};

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// For information: a setting converted with a different shape, a guess.
    Info,
    /// A setting with no equivalent, or a behaviour that changes.
    Warning,
    /// Input that cannot be converted (malformed, contradictory): nothing is applied.
    Error,
}

/// One report line about the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// The source object (`Kind name`, or `Kind name: field`).
    pub source: String,
    /// What happens, and what to do.
    pub message: String,
}

impl Finding {
    /// A finding.
    #[must_use]
    pub fn new(level: Level, source: impl Into<String>, message: impl Into<String>) -> Self {
        Self { level, source: source.into(), message: message.into() }
    }
}

/// What happens to a Service's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Adopted: inside a converted range.
    Kept,
    /// Adopted, outside every range of its group (shown in the group's
    /// `status.addressesOutsidePools`).
    KeptOutsideRanges,
    /// Has no address now; PureLB will allocate one (or says why it cannot).
    NoAddress,
    /// The address would change, or PureLB would not handle the Service.
    AtRisk,
}

/// One Service's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceVerdict {
    /// `namespace/name`.
    pub service: String,
    /// Its addresses now.
    pub addresses: Vec<String>,
    /// The PureLB group it will belong to.
    pub group: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why (for anything but `kept`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Per Service (LoadBalancer Services only).
    pub services: Vec<ServiceVerdict>,
    /// About the configuration.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Services at risk.
    #[must_use]
    pub fn at_risk(&self) -> usize {
        self.services.iter().filter(|s| s.verdict == Verdict::AtRisk).count()
    }

    /// Errors.
    #[must_use]
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.level == Level::Error).count()
    }

    /// The report as text: findings, then the Services, then a summary line.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let level = match f.level {
                Level::Info => "INFO ",
                Level::Warning => "WARN ",
                Level::Error => "ERROR",
            };
            let _ = writeln!(out, "{level} {}: {}", f.source, f.message);
        }
        if !self.services.is_empty() {
            let rows = self
                .services
                .iter()
                .map(|s| {
                    let verdict = serde_json::to_value(s.verdict).ok().and_then(|v| v.as_str().map(str::to_owned));
                    vec![
                        s.service.clone(),
                        if s.addresses.is_empty() { "-".to_owned() } else { s.addresses.join(",") },
                        s.group.clone().unwrap_or_else(|| "-".to_owned()),
                        verdict.unwrap_or_default(),
                        s.why.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&crate::ops::output::table(&["SERVICE", "ADDRESSES", "GROUP", "VERDICT", "WHY"], rows));
        }
        let count = |v: Verdict| self.services.iter().filter(|s| s.verdict == v).count();
        let _ = writeln!(
            out,
            "{} Services: {} kept, {} kept outside ranges, {} without an address, {} at risk; {} errors, {} warnings",
            self.services.len(),
            count(Verdict::Kept),
            count(Verdict::KeptOutsideRanges),
            count(Verdict::NoAddress),
            count(Verdict::AtRisk),
            self.errors(),
            self.findings.iter().filter(|f| f.level == Level::Warning).count(),
        );
        out
    }
}

/// Adds the PureLB annotations the allocator adopts from, checks the converted objects as
/// `purelb validate` would, and computes every Service's verdict with the allocator's table.
#[must_use]
pub fn finish(converted: Converted, input: &Input, options: &Options) -> Plan {
    let mut findings = converted.findings;
    // The converted objects, checked like manifests (schema, CEL, ranges, overlaps).
    let yaml: String =
        converted.objects.iter().map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap_or_default())).collect();
    let checked =
        crate::ops::validate::validate_files(&[("converted".to_owned(), yaml)], &options.namespace, &options.lb_class);
    for f in checked.findings.iter().filter(|f| f.level == crate::ops::validate::Level::Fail) {
        findings.push(Finding::new(
            Level::Error,
            f.object.replace(" (converted#", " (converted object #"),
            format!("{} (from the source's configuration: fix it there, or edit the output)", f.message),
        ));
    }
    let groups: Vec<ServiceGroup> = converted
        .objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("ServiceGroup"))
        .filter_map(|o| serde_json::from_value(o.clone()).ok())
        .collect();
    let set = GroupSet::build(&groups, &options.namespace);

    // The Services as they will be: the converter's annotations, then allocated-by and
    // allocated-from for those with addresses (the allocator's adoption path).
    let mut services: Vec<Service> = input.services.clone();
    services.sort_by_key(crate::allocator::request::age_key);
    let mut changes: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for svc in &mut services {
        let key = ServiceKey::of_service(svc);
        let mut want =
            converted.annotations.get(&(key.namespace.clone(), key.name.clone())).cloned().unwrap_or_default();
        let current = ingress_addresses(svc);
        let handled_before = ServiceRequest::from_service(svc, &options.lb_class, true);
        if !current.is_empty() && handled_before.handled {
            let annotations = svc.metadata.annotations.clone().unwrap_or_default();
            let named = want
                .get(contract::ANNOTATION_ALLOCATED_FROM)
                .or_else(|| annotations.get(contract::ANNOTATION_ALLOCATED_FROM))
                .filter(|g| set.contains(g))
                .cloned();
            let group = named.or_else(|| current.first().and_then(|ip| set.containing(*ip)).map(|g| g.name.clone()));
            want.insert(contract::ANNOTATION_ALLOCATED_BY.to_owned(), contract::ALLOCATED_BY_VALUE.to_owned());
            match group {
                Some(g) => {
                    want.insert(contract::ANNOTATION_ALLOCATED_FROM.to_owned(), g);
                }
                None => {
                    want.remove(contract::ANNOTATION_ALLOCATED_FROM);
                }
            }
        }
        let annotations = svc.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let differs: BTreeMap<String, String> =
            want.into_iter().filter(|(k, v)| annotations.get(k) != Some(v)).collect();
        if !differs.is_empty() {
            annotations.extend(differs.clone());
            changes.insert((key.namespace.clone(), key.name.clone()), differs);
        }
    }

    let mut table = Allocator::new(set.clone());
    let requests: Vec<ServiceRequest> =
        services.iter().map(|s| ServiceRequest::from_service(s, &options.lb_class, true)).collect();
    let mut adopt_failures: BTreeMap<ServiceKey, String> = BTreeMap::new();
    for req in &requests {
        if let Err(f) = table.adopt(req) {
            adopt_failures.insert(req.key.clone(), f.message);
        }
    }
    let mut verdicts = Vec::new();
    for (svc, req) in services.iter().zip(&requests) {
        let current = ingress_addresses(svc);
        let addresses: Vec<String> = current.iter().map(ToString::to_string).collect();
        let mut v = ServiceVerdict {
            service: req.key.to_string(),
            addresses,
            group: table.holding(&req.key).map(|h| h.group.clone()),
            verdict: Verdict::Kept,
            why: None,
        };
        if !req.handled {
            let class = svc.spec.as_ref().and_then(|s| s.load_balancer_class.clone());
            if current.is_empty() && class.is_some() {
                // Not a Service of the source's either (another class): left alone.
                continue;
            }
            v.verdict = Verdict::AtRisk;
            v.why = Some(match class {
                Some(c) => format!(
                    "spec.loadBalancerClass is {c} (immutable): run the allocator with --lb-class {c}, or recreate the Service with {}",
                    options.lb_class
                ),
                None => "PureLB would not handle it (the allocator runs with --default-announcer=false)".to_owned(),
            });
            verdicts.push(v);
            continue;
        }
        if let Some(why) = adopt_failures.get(&req.key) {
            v.verdict = Verdict::AtRisk;
            v.why = Some(format!("the allocator cannot keep its address: {why}"));
            verdicts.push(v);
            continue;
        }
        let mut probe = table.clone();
        match probe.decide(req, &options.namespace) {
            Decision::Keep { holding, warnings } => {
                let group = set.valid.get(&holding.group);
                let outside: Vec<&IpAddr> =
                    current.iter().filter(|ip| !group.is_some_and(|g| g.contains(**ip))).collect();
                if group.is_none() {
                    v.verdict = Verdict::KeptOutsideRanges;
                    v.why = Some(format!(
                        "its group {} is not converted: the allocator keeps the address it has (adopted), but no group can give it back after a release; add a range containing it to a group",
                        holding.group
                    ));
                } else if !outside.is_empty() {
                    v.verdict = Verdict::KeptOutsideRanges;
                    v.why = Some(format!(
                        "{} outside the ranges of ServiceGroup {}: kept, and counted in its status.addressesOutsidePools",
                        outside.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        holding.group
                    ));
                } else if !warnings.is_empty() {
                    v.why = Some(warnings.join("; "));
                }
            }
            Decision::Changed { assigned, released, holding } => {
                v.group = Some(holding.group);
                if current.is_empty() {
                    v.verdict = Verdict::NoAddress;
                    v.why = Some(format!(
                        "will be given {}",
                        assigned.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ));
                } else {
                    v.verdict = Verdict::AtRisk;
                    v.why = Some(format!(
                        "the allocator would replace {} by {}",
                        released.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        assigned.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            Decision::Failed { failure, kept } => match kept {
                Some(_) => v.why = Some(format!("kept, but: {}", failure.message)),
                None if current.is_empty() => {
                    v.verdict = Verdict::NoAddress;
                    v.why = Some(format!("cannot be given an address: {}", failure.message));
                }
                None => {
                    v.verdict = Verdict::AtRisk;
                    v.why = Some(failure.message);
                }
            },
            Decision::Released(_) | Decision::NotHandled => {
                v.verdict = Verdict::AtRisk;
                v.why = Some("the allocator would release its address".to_owned());
            }
        }
        verdicts.push(v);
    }
    Plan {
        objects: converted.objects,
        services: changes
            .into_iter()
            .map(|((namespace, name), annotations)| ServiceChange { namespace, name, annotations })
            .collect(),
        report: Report { services: verdicts, findings },
    }
}
