//! What `purelb reconcile` prints: a [`Report`] of every orphaned address (interface, address
//! with prefix, reason, whether it was removed), the links `--all` handled and the addresses kept,
//! as text (one line per address and a summary) or as one JSON document.

use serde::Serialize;

use super::plan::{Kept, LinkPlan, Orphan, Reason};

/// Which kind of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Orphans of one node, decided from the cluster.
    Node,
    /// `--all`: everything PureLB owns on this host.
    All,
}

/// One orphaned address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanEntry {
    /// The interface.
    pub interface: String,
    /// Address with prefix length, e.g. `192.0.2.240/24`.
    pub address: String,
    /// Why it is an orphan.
    pub reason: Reason,
    /// The specifics.
    pub detail: String,
    /// Whether it was removed (never with `--dry-run`).
    pub removed: bool,
    /// Why removing it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One link PureLB created (`--all`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkEntry {
    /// The interface.
    pub interface: String,
    /// Always `--all`.
    pub reason: Reason,
    /// Why it goes or stays.
    pub detail: String,
    /// Whether it is to be removed (false when it carries addresses PureLB did not add).
    pub remove: bool,
    /// Whether it was removed.
    pub removed: bool,
    /// Why removing it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One PureLB-owned address this node should hold (kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptEntry {
    /// The interface.
    pub interface: String,
    /// Address with prefix length.
    pub address: String,
    /// The Services that need it (`namespace/name`).
    pub services: Vec<String>,
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Which kind of run.
    pub mode: Mode,
    /// The node (`None` with `--all`).
    pub node: Option<String>,
    /// `--dry-run`: nothing was changed.
    pub dry_run: bool,
    /// Orphaned addresses (found, and removed unless dry-run).
    pub orphans: Vec<OrphanEntry>,
    /// Links PureLB created (`--all` only).
    pub links: Vec<LinkEntry>,
    /// PureLB-owned addresses this node should hold (node mode only).
    pub kept: Vec<KeptEntry>,
}

fn with_prefix(address: &crate::core::netlink::Address) -> String {
    format!("{}/{}", address.ip, address.prefix_len)
}

impl OrphanEntry {
    /// From a planned orphan, not (yet) removed.
    #[must_use]
    pub fn planned(orphan: &Orphan) -> Self {
        Self {
            interface: orphan.address.ifname.clone(),
            address: with_prefix(&orphan.address),
            reason: orphan.reason,
            detail: orphan.detail.clone(),
            removed: false,
            error: None,
        }
    }
}

impl LinkEntry {
    /// From a planned link, not (yet) removed.
    #[must_use]
    pub fn planned(link: &LinkPlan) -> Self {
        Self {
            interface: link.link.name.clone(),
            reason: Reason::All,
            detail: link.detail.clone(),
            remove: link.remove,
            removed: false,
            error: None,
        }
    }
}

impl KeptEntry {
    /// From a kept address.
    #[must_use]
    pub fn from_kept(kept: &Kept) -> Self {
        Self {
            interface: kept.address.ifname.clone(),
            address: with_prefix(&kept.address),
            services: kept.services.iter().map(ToString::to_string).collect(),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Report {
    /// Orphaned addresses plus links to remove: what `--exit-code` reports with status 3.
    #[must_use]
    pub fn found(&self) -> usize {
        self.orphans.len() + self.links.iter().filter(|l| l.remove).count()
    }

    /// Removals that failed.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.orphans.iter().filter(|o| o.error.is_some()).count()
            + self.links.iter().filter(|l| l.error.is_some()).count()
    }

    /// The report as text: one line per address and link, then a summary line.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verb = |removed: bool, error: &Option<String>| match (self.dry_run, removed, error) {
            (true, _, _) => "would remove",
            (false, true, _) => "removed",
            (false, false, Some(_)) => "cannot remove",
            (false, false, None) => "left",
        };
        for o in &self.orphans {
            out.push_str(&format!(
                "{} {} from {}: {} ({})",
                verb(o.removed, &o.error),
                o.address,
                o.interface,
                o.reason,
                o.detail
            ));
            if let Some(error) = &o.error {
                out.push_str(&format!(": {error}"));
            }
            out.push('\n');
        }
        for l in &self.links {
            if l.remove {
                out.push_str(&format!(
                    "{} interface {}: {} ({})",
                    verb(l.removed, &l.error),
                    l.interface,
                    l.reason,
                    l.detail
                ));
            } else {
                out.push_str(&format!("kept interface {}: {}", l.interface, l.detail));
            }
            if let Some(error) = &l.error {
                out.push_str(&format!(": {error}"));
            }
            out.push('\n');
        }
        let who = match (&self.mode, &self.node) {
            (Mode::Node, Some(node)) => format!("node {node}"),
            _ => "--all".to_owned(),
        };
        let removed = self.orphans.iter().filter(|o| o.removed).count();
        let mut summary = if self.orphans.is_empty() {
            format!("{who}: no orphaned addresses")
        } else if self.dry_run {
            format!(
                "{who}: {} found, none removed (dry run)",
                plural(self.orphans.len(), "orphaned address", "orphaned addresses")
            )
        } else {
            format!(
                "{who}: {} found, {removed} removed",
                plural(self.orphans.len(), "orphaned address", "orphaned addresses")
            )
        };
        let links_to_remove = self.links.iter().filter(|l| l.remove).count();
        if self.mode == Mode::All {
            let links_removed = self.links.iter().filter(|l| l.removed).count();
            summary.push_str(&match (links_to_remove, self.dry_run) {
                (0, _) => "; no interface created by PureLB to remove".to_owned(),
                (n, true) => format!("; {} created by PureLB would be removed", plural(n, "interface", "interfaces")),
                (n, false) => {
                    format!("; {links_removed} of {} created by PureLB removed", plural(n, "interface", "interfaces"))
                }
            });
        } else {
            summary.push_str(&format!(
                "; {} this node should hold kept",
                plural(self.kept.len(), "PureLB address", "PureLB addresses")
            ));
        }
        out.push_str(&summary);
        out.push('\n');
        out
    }

    /// The report as a JSON document (pretty-printed, with a trailing newline).
    ///
    /// # Errors
    ///
    /// Serialisation fails (not expected: the report is plain data).
    pub fn json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self).map(|mut s| {
            s.push('\n');
            s
        })
    }
}
