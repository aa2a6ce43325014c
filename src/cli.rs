//! The command line of the `purelb` binary (`api.md` §5). Every flag can also be set by an
//! environment variable: `PURELB_` + the flag name in upper case with `_`, except the few the
//! Kubernetes downward API and kubectl conventions name (`KUBECONFIG`, `NODE_NAME`, `POD_UID`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum, builder::NonEmptyStringValueParser};

use crate::{agent::shutdown::ShutdownMode, api::contract, duration::parse_duration, telemetry::LogFormat};

/// PureLB: addresses for LoadBalancer Services on clusters without a cloud load balancer.
#[derive(Debug, Parser)]
#[command(name = "purelb", version, propagate_version = true, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Assign addresses from ServiceGroups to LoadBalancer Services (Deployment, one leader).
    Allocator(AllocatorArgs),
    /// Put this node's share of Service addresses on the network (DaemonSet, one per node).
    Agent(AgentArgs),
    /// Remove PureLB-owned addresses this node should not hold, once, then exit.
    Reconcile(ReconcileArgs),
    /// One screen about the installation: allocator, agents, ServiceGroups, Services; OK / WARNING / FAIL (exit 0 / 1 / 2).
    Status(StatusArgs),
    /// Explain how a Service's addresses were chosen and which node announces each, and why.
    Explain(ExplainArgs),
    /// Check PureLB's configuration: manifests before they are applied (-f), or what is in the cluster.
    Validate(ValidateArgs),
    /// Convert MetalLB's or the Go PureLB's configuration to PureLB's without any Service address changing.
    Migrate(MigrateArgs),
    /// Print the CustomResourceDefinitions generated from the Rust types, as YAML.
    Crds,
    /// Print the version.
    Version,
}

/// Flags every long-running subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Kubeconfig file to use; without it, $KUBECONFIG, then the in-cluster service account.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace PureLB is installed in (its ServiceGroups, LBNodeAgents and Leases live there).
    #[arg(long, env = "PURELB_NAMESPACE", default_value = contract::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Log level or filter directives (e.g. info, debug, info,purelb=debug); falls back to RUST_LOG, then info.
    #[arg(long, env = "PURELB_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text lines or one JSON object per line.
    #[arg(long, env = "PURELB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address for the /metrics, /healthz and /readyz HTTP server.
    #[arg(long, env = "PURELB_METRICS_ADDR", default_value = "0.0.0.0:7472")]
    pub metrics_addr: SocketAddr,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// `purelb allocator`.
#[derive(Debug, Clone, Args)]
pub struct AllocatorArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// spec.loadBalancerClass of the Services this allocator handles.
    #[arg(long, env = "PURELB_LB_CLASS", default_value = contract::DEFAULT_LB_CLASS)]
    pub lb_class: String,
    /// Also handle LoadBalancer Services that set no loadBalancerClass.
    #[arg(long, env = "PURELB_DEFAULT_ANNOUNCER", action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub default_announcer: bool,
    /// Take the purelb-allocator Lease so that only one replica writes.
    #[arg(long, env = "PURELB_LEADER_ELECT", action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub leader_elect: bool,
    /// How long the leader Lease stays valid without renewal (standby takeover time after a crash).
    #[arg(long, env = "PURELB_LEASE_DURATION", value_parser = duration_arg, default_value = "15s")]
    pub lease_duration: Duration,
    /// How often the leader renews its Lease (at most half of --lease-duration).
    #[arg(long, env = "PURELB_RENEW_INTERVAL", value_parser = duration_arg, default_value = "5s")]
    pub renew_interval: Duration,
    /// Directory where the NetBox token Secret is mounted (one file per key).
    #[arg(long, env = "PURELB_NETBOX_TOKEN_DIR", value_name = "PATH", default_value = "/etc/purelb/netbox")]
    pub netbox_token_dir: PathBuf,
    /// Name of the Secret mounted at --netbox-token-dir; groups naming another Secret (or a key that is not mounted) read it through the API.
    #[arg(long, env = "PURELB_NETBOX_TOKEN_SECRET", value_name = "NAME", default_value = "")]
    pub netbox_token_secret: String,
    /// Longest wait for one NetBox request (connect, send, whole answer).
    #[arg(long, env = "PURELB_NETBOX_TIMEOUT", value_parser = duration_arg, default_value = "10s")]
    pub netbox_timeout: Duration,
}

/// `purelb agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Name of the Node this agent runs on (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// UID of this agent's pod, recorded in its Lease (from the downward API).
    #[arg(long, env = "POD_UID", default_value = "")]
    pub pod_uid: String,
    /// Name of this agent's pod (from the downward API), read at shutdown by --shutdown-mode auto.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// On SIGTERM: keep the addresses when this pod is replaced on a node that stays (auto),
    /// always hand them over (handover), or always keep them for a successor (keep).
    #[arg(long, env = "PURELB_SHUTDOWN_MODE", value_enum, default_value_t = ShutdownMode::Auto)]
    pub shutdown_mode: ShutdownMode,
    /// When the addresses are kept at shutdown: how long this node's Lease stays valid for the
    /// successor on this node (whole seconds); no successor by then, peers take over.
    #[arg(long, env = "PURELB_SUCCESSOR_TIMEOUT", value_parser = duration_arg, default_value = "30s")]
    pub successor_timeout: Duration,
    /// How long this node's Lease stays valid without renewal (crash failover time; whole seconds).
    #[arg(long, env = "PURELB_LEASE_DURATION", value_parser = duration_arg, default_value = "6s")]
    pub lease_duration: Duration,
    /// How often this node renews its Lease (at most half of --lease-duration).
    #[arg(long, env = "PURELB_RENEW_INTERVAL", value_parser = duration_arg, default_value = "2s")]
    pub renew_interval: Duration,
    /// On shutdown, how long to wait for successors to take over addresses before withdrawing.
    #[arg(long, env = "PURELB_HANDOVER_TIMEOUT", value_parser = duration_arg, default_value = "5s")]
    pub handover_timeout: Duration,
    /// How often to look for PureLB-owned addresses this node should not hold.
    #[arg(long, env = "PURELB_ORPHAN_SWEEP_INTERVAL", value_parser = duration_arg, default_value = "60s")]
    pub orphan_sweep_interval: Duration,
    /// How long a remote address stays after its last usable endpoint went away (rollouts
    /// flap EndpointSlices; announcing never waits).
    #[arg(long, env = "PURELB_SETTLE_TIME", value_parser = duration_arg, default_value = "1s")]
    pub settle_time: Duration,
    /// BIRD's control socket: BGP is on when set (docs/bgp.md). The agent renders BIRD's
    /// configuration from the BGPPeers and ServiceGroups and reloads it over this socket.
    #[arg(long, env = "PURELB_BIRD_SOCKET")]
    pub bird_socket: Option<std::path::PathBuf>,
    /// Where the agent writes BIRD's configuration (a volume shared with the BIRD container;
    /// password snippets are read from `passwords/` next to it).
    #[arg(long, env = "PURELB_BIRD_CONFIG", default_value = "/run/purelb-bird/bird.conf")]
    pub bird_config: std::path::PathBuf,
    /// When this node goes away with BGP on: how long routes carry GRACEFUL_SHUTDOWN before
    /// they are withdrawn (then the addresses are removed).
    #[arg(long, env = "PURELB_DRAIN_TIME", value_parser = duration_arg, default_value = "3s")]
    pub drain_time: Duration,
}

/// Output format of `purelb reconcile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// One line per address.
    #[default]
    Text,
    /// A JSON document listing interface, address and reason.
    Json,
}

/// `purelb reconcile`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Common flags (the metrics server is not started by this one-shot command).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Node this runs on, whose addresses to reconcile (from the downward API in an init container); required unless --all.
    #[arg(long, env = "NODE_NAME", required_unless_present = "all", value_parser = NonEmptyStringValueParser::new())]
    pub node_name: Option<String>,
    /// Only report what would be removed; change nothing.
    #[arg(long, env = "PURELB_DRY_RUN")]
    pub dry_run: bool,
    /// Remove every PureLB-owned address and the dummy interface PureLB created (uninstall); needs no API access.
    #[arg(long, env = "PURELB_ALL")]
    pub all: bool,
    /// Report format: text lines with a summary, or one JSON document (interface, address, reason).
    #[arg(long, env = "PURELB_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Exit with status 3 when orphaned addresses were found (also with --dry-run), else 0.
    #[arg(long, env = "PURELB_EXIT_CODE")]
    pub exit_code: bool,
}

/// Checks a Lease's timing flags (`who`: `agent` or `allocator`): a whole number of seconds for
/// the duration (the Lease field `leaseDurationSeconds` is an integer), and renewals at most
/// half of it apart, so that one failed renewal still leaves time for the next before the
/// Lease expires. The message names both flags and gives a working example.
///
/// # Errors
///
/// The combination cannot work.
pub fn check_lease_flags(who: &str, lease: Duration, renew: Duration) -> Result<(), String> {
    let example = if who == "agent" {
        "--lease-duration 6s --renew-interval 2s"
    } else {
        "--lease-duration 15s --renew-interval 5s"
    };
    let shown = |d: Duration| crate::duration::format_duration(d);
    if lease.is_zero() || lease.subsec_nanos() != 0 {
        return Err(format!(
            "--lease-duration {} must be a whole number of seconds, at least 1s (the Lease's leaseDurationSeconds is an integer); e.g. {example}",
            shown(lease)
        ));
    }
    if renew.is_zero() || renew > lease / 2 {
        return Err(format!(
            "--renew-interval {} must be more than 0 and at most half of --lease-duration {} (one failed renewal must not let the Lease expire); e.g. {example}",
            shown(renew),
            shown(lease)
        ));
    }
    Ok(())
}

impl AgentArgs {
    /// Flag combinations that cannot work (exit 2 before anything starts).
    ///
    /// # Errors
    ///
    /// What is wrong and how to fix it.
    pub fn check(&self) -> Result<(), String> {
        check_lease_flags("agent", self.lease_duration, self.renew_interval)?;
        if self.orphan_sweep_interval.is_zero() {
            return Err("--orphan-sweep-interval must be more than 0, e.g. 60s".to_owned());
        }
        if self.successor_timeout.is_zero() || self.successor_timeout.subsec_nanos() != 0 {
            return Err(format!(
                "--successor-timeout {} must be a whole number of seconds, at least 1s (it becomes the Lease's leaseDurationSeconds); e.g. --successor-timeout 30s",
                crate::duration::format_duration(self.successor_timeout)
            ));
        }
        Ok(())
    }
}

impl AllocatorArgs {
    /// Flag combinations that cannot work (exit 2 before anything starts).
    ///
    /// # Errors
    ///
    /// What is wrong and how to fix it.
    pub fn check(&self) -> Result<(), String> {
        check_lease_flags("allocator", self.lease_duration, self.renew_interval)?;
        if self.netbox_timeout.is_zero() {
            return Err("--netbox-timeout must be more than 0, e.g. 10s".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn shutdown_flags_default_and_are_checked() {
        let cli = Cli::try_parse_from(["purelb", "agent", "--node-name", "n1"]).unwrap();
        let Command::Agent(a) = cli.command else { unreachable!() };
        assert_eq!(a.shutdown_mode, ShutdownMode::Auto);
        assert_eq!(a.successor_timeout, Duration::from_secs(30));
        assert!(a.check().is_ok());
        for (mode, want) in [("handover", ShutdownMode::Handover), ("keep", ShutdownMode::Keep)] {
            let cli = Cli::try_parse_from(["purelb", "agent", "--node-name", "n1", "--shutdown-mode", mode]).unwrap();
            let Command::Agent(a) = cli.command else { unreachable!() };
            assert_eq!(a.shutdown_mode, want);
        }
        assert!(Cli::try_parse_from(["purelb", "agent", "--node-name", "n1", "--shutdown-mode", "later"]).is_err());
        for bad in ["1500ms", "0s"] {
            let cli =
                Cli::try_parse_from(["purelb", "agent", "--node-name", "n1", "--successor-timeout", bad]).unwrap();
            let Command::Agent(a) = cli.command else { unreachable!() };
            let error = a.check().unwrap_err();
            assert!(error.contains("--successor-timeout") && error.contains("whole number of seconds"), "{error}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["purelb", "allocator"]).unwrap();
        let Command::Allocator(a) = cli.command else { unreachable!() };
        assert_eq!(a.lb_class, "purelb.io/purelbv2");
        assert!(a.default_announcer && a.leader_elect);
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.renew_interval, Duration::from_secs(5));
        assert_eq!(a.common.metrics_addr.to_string(), "0.0.0.0:7472");
        assert_eq!(a.netbox_token_dir, PathBuf::from("/etc/purelb/netbox"));
        assert_eq!((a.netbox_token_secret.as_str(), a.netbox_timeout), ("", Duration::from_secs(10)));

        let cli = Cli::try_parse_from([
            "purelb",
            "agent",
            "--node-name",
            "n1",
            "--lease-duration",
            "2s",
            "--leader-elect=false",
        ]);
        assert!(cli.is_err(), "--leader-elect is not an agent flag");
        let cli = Cli::try_parse_from(["purelb", "agent", "--node-name", "n1", "--lease-duration", "2s"]).unwrap();
        let Command::Agent(a) = cli.command else { unreachable!() };
        assert_eq!(a.lease_duration, Duration::from_secs(2));
        assert_eq!(a.renew_interval, Duration::from_secs(2));
        assert_eq!(a.handover_timeout, Duration::from_secs(5));
        assert_eq!(a.orphan_sweep_interval, Duration::from_secs(60));
        assert_eq!(a.settle_time, Duration::from_secs(1));

        let cli = Cli::try_parse_from(["purelb", "allocator", "--leader-elect=false", "--default-announcer", "false"])
            .unwrap();
        let Command::Allocator(a) = cli.command else { unreachable!() };
        assert!(!a.leader_elect && !a.default_announcer);
    }

    #[test]
    fn reconcile_needs_a_node_unless_all() {
        let cli =
            Cli::try_parse_from(["purelb", "reconcile", "--node-name", "n1", "--dry-run", "--output", "json"]).unwrap();
        let Command::Reconcile(r) = cli.command else { unreachable!() };
        assert_eq!(r.node_name.as_deref(), Some("n1"));
        assert!(r.dry_run && !r.all && !r.exit_code);
        assert_eq!(r.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["purelb", "reconcile", "--all", "--exit-code"]).unwrap();
        let Command::Reconcile(r) = cli.command else { unreachable!() };
        assert!(r.all && r.exit_code && r.node_name.is_none());
        assert_eq!(r.output, OutputFormat::Text);
        if std::env::var_os("NODE_NAME").is_none() {
            let err = Cli::try_parse_from(["purelb", "reconcile"]).unwrap_err().to_string();
            assert!(err.contains("--node-name"), "{err}");
        }
        assert!(Cli::try_parse_from(["purelb", "reconcile", "--node-name", ""]).is_err());
    }

    #[test]
    fn bad_durations_are_explained() {
        let err = Cli::try_parse_from(["purelb", "allocator", "--lease-duration", "15"]).unwrap_err().to_string();
        assert!(err.contains("\"15\" is not a duration"), "{err}");
    }

    #[test]
    fn lease_flags_allow_renewals_up_to_half_a_lease() {
        let s = Duration::from_secs;
        assert!(check_lease_flags("agent", s(6), s(2)).is_ok());
        assert!(check_lease_flags("agent", s(6), s(3)).is_ok(), "exactly half is fine");
        assert!(check_lease_flags("agent", s(2), Duration::from_millis(500)).is_ok());
        assert!(check_lease_flags("agent", s(6), Duration::from_millis(3001)).is_err());
        assert!(check_lease_flags("agent", s(2), s(2)).is_err());
        assert!(check_lease_flags("agent", Duration::from_millis(1500), Duration::from_millis(500)).is_err());
        assert!(check_lease_flags("agent", Duration::ZERO, Duration::ZERO).is_err());
        let message = check_lease_flags("allocator", s(15), s(10)).unwrap_err();
        assert!(message.contains("--renew-interval 10s") && message.contains("--lease-duration 15s"), "{message}");
    }
}

/// How the operator commands reach the cluster (kubectl's flags).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace PureLB is installed in (not the Service's: that is part of NAMESPACE/NAME).
    #[arg(short = 'n', long, env = "PURELB_NAMESPACE", default_value = contract::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// spec.loadBalancerClass the allocator handles (its --lb-class).
    #[arg(long, env = "PURELB_LB_CLASS", default_value = contract::DEFAULT_LB_CLASS)]
    pub lb_class: String,
}

impl ClusterArgs {
    /// The connection target.
    #[must_use]
    pub fn target(&self) -> crate::ops::snapshot::Target {
        crate::ops::snapshot::Target { kubeconfig: self.kubeconfig.clone(), context: self.context.clone() }
    }
}

/// `purelb status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Cluster flags.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::ops::output::Format::Text)]
    pub output: crate::ops::output::Format,
    /// Print the report again whenever it changes (until interrupted).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often --watch reads the cluster.
    #[arg(long, value_parser = duration_arg, default_value = "2s")]
    pub interval: Duration,
}

/// `purelb explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// What to explain.
    #[command(subcommand)]
    pub what: ExplainWhat,
}

/// The objects `explain` explains.
#[derive(Debug, Clone, Subcommand)]
pub enum ExplainWhat {
    /// A LoadBalancer Service, as NAMESPACE/NAME.
    Service {
        /// NAMESPACE/NAME of the Service.
        #[arg(value_name = "NAMESPACE/NAME")]
        name: String,
        /// Cluster flags.
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = crate::ops::output::Format::Text)]
        output: crate::ops::output::Format,
    },
}

/// `purelb validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Manifest files or directories to check offline (YAML or JSON, several documents each;
    /// a directory: its .yaml, .yml and .json files; `-`: standard input); none: check the cluster.
    #[arg(short = 'f', long = "filename", value_name = "FILE", num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Exit 1 on warnings too.
    #[arg(long)]
    pub strict: bool,
    /// Cluster flags (also the namespace objects without one are taken to be in).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::ops::output::Format::Text)]
    pub output: crate::ops::output::Format,
}

/// `purelb migrate -o`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum MigrateFormat {
    /// YAML documents (PureLB objects, then partial Services with the annotations).
    #[default]
    Yaml,
    /// One JSON `List`.
    Json,
}

/// `purelb migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// What to migrate from.
    #[arg(long, value_enum)]
    pub from: crate::migrate::Source,
    /// Read the source configuration from files or directories (YAML/JSON; `-`: standard input) instead of the cluster.
    #[arg(short = 'f', long = "filename", value_name = "FILE", num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Output format of the converted objects.
    #[arg(short = 'o', long, value_enum, default_value_t = MigrateFormat::Yaml)]
    pub output: MigrateFormat,
    /// Write the objects and the Service annotations to the cluster (server-side apply, field manager purelb-migrate; idempotent).
    #[arg(long)]
    pub apply: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Apply even when a Service's address is at risk or the report has errors.
    #[arg(long)]
    pub allow_changes: bool,
    /// Namespace of the source's objects (default: metallb-system, or purelb for the Go PureLB).
    #[arg(long, value_name = "NAMESPACE")]
    pub source_namespace: Option<String>,
    /// The nodes' LAN subnet (repeatable), when the Nodes' addresses do not tell the prefix length.
    #[arg(long = "subnet", value_name = "CIDR", value_parser = subnet_arg)]
    pub subnets: Vec<crate::core::ipam::Subnet>,
    /// Cluster flags (--namespace: PureLB's install namespace, where the objects go).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn subnet_arg(text: &str) -> Result<crate::core::ipam::Subnet, String> {
    crate::core::ipam::Subnet::parse(text).map_err(|e| format!("{text:?} is not a CIDR: {e:?}"))
}
