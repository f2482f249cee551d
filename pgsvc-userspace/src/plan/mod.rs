//! Resolving a Pigsty inventory into clusters → services → servers, exactly as Pigsty renders HAProxy.
//!
//! Owns the Pigsty side of the contract: which hosts form a cluster (`pg_cluster`), the instance
//! variables (`pg_seq`, `pg_role`, `pg_offline_query`, `pg_weight`, ports), the services
//! (`pg_default_services` + `pg_services`) with their defaults, selector and backup evaluation,
//! `dest` → port, the `default-server` timers (`options` or `pg_rto`), and the VIP. Everything the
//! agent consumes is in [`model`]; entry points are [`load_plan`] and [`plan_from_str`].
//!
//! Cluster-wide variables (services, `pg_rto`, VIP, default dest) are read from the cluster's first
//! member in inventory order: Pigsty renders them per node from that node's variables, which are
//! group variables in every real inventory.

pub mod haproxy;
mod isolated;
mod members;
pub mod model;
pub mod options;
mod resolve;
pub mod selector;
pub mod service;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use crate::config::{self as cfg, Host, Inventory, Node, Value};
pub use crate::config::{ConfigError, Location, Warning, WarningKind};
pub use haproxy::{load_haproxy_plan, plan_from_haproxy};
pub use isolated::{ConfigSource, PLANNER_STACK, load_plan_isolated};
pub use model::*;
use options::{OptionNote, RtoPlan};
use resolve::{ClusterResolver, Shared};
use selector::SelectorError;
use service::{Dest, Expr, ServiceSpec, Source, describe};

/// Why an inventory cannot be turned into a plan. Every variant that concerns a value written in the
/// inventory carries its file:line:column.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An HAProxy configuration (`--haproxy-config`) outside the subset pgsvc reads.
    #[error(transparent)]
    Haproxy(#[from] cfg::haproxy::HaproxyError),
    /// A defect in pgsvc itself (a panic while planning), caught by [`load_plan_isolated`].
    #[error("{file}: internal error while reading the inventory (please report it): {reason}")]
    Internal { file: String, reason: String },
    #[error("{file}: no PostgreSQL cluster: no host sets `pg_cluster`")]
    NoClusters { file: Arc<str> },
    #[error("{file}: unknown cluster `{name}` (the inventory has: {known})")]
    UnknownCluster {
        file: Arc<str>,
        name: String,
        known: String,
    },
    #[error("{at}: host `{host}` of cluster `{cluster}` has no `{var}`")]
    MissingVar {
        at: Location,
        host: String,
        cluster: String,
        var: &'static str,
    },
    #[error("{at}: {what} must be {expected}, found {found}")]
    InvalidValue {
        at: Location,
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{at}: invalid address `{value}` for {what}: expected {expected}")]
    InvalidAddress {
        at: Location,
        what: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "{at}: `pg_seq` {seq} of host `{host}` is already used by `{first}` in cluster `{cluster}`"
    )]
    DuplicateSeq {
        at: Location,
        cluster: String,
        seq: u32,
        host: String,
        first: String,
    },
    #[error("{at}: service `{service}` has no `{field}`")]
    MissingField {
        at: Location,
        service: String,
        field: &'static str,
    },
    #[error("{at}: port {port} of service `{service}` is out of range 1..=65535")]
    InvalidPort {
        at: Location,
        service: String,
        port: i64,
    },
    #[error("{at}: unknown {what} {dest}: expected {allowed}")]
    UnknownDest {
        at: Location,
        what: String,
        dest: String,
        allowed: &'static str,
    },
    #[error(
        "{at}: invalid JMESPath in `{field}` of service `{service}`: `{expression}` at position {offset}: {reason}"
    )]
    InvalidSelector {
        at: Location,
        service: String,
        field: &'static str,
        expression: String,
        /// Character position in the expression (0-based).
        offset: usize,
        reason: String,
    },
    #[error("{at}: `{field}` of service `{service}` (`{expression}`) failed: {reason}")]
    SelectorFailed {
        at: Location,
        service: String,
        field: &'static str,
        expression: String,
        reason: String,
    },
    #[error("{at}: service `{service}` is already defined in cluster `{cluster}` (at {first})")]
    DuplicateService {
        at: Location,
        cluster: String,
        service: String,
        first: Location,
    },
    #[error(
        "{at}: service `{service}` listens on {bind}:{port}, which service `{other}` already uses (at {other_at})"
    )]
    PortClash {
        at: Location,
        service: String,
        bind: String,
        port: u16,
        other: String,
        other_at: Location,
    },
    #[error("{at}: `options` of service `{service}`: `{keyword}` {reason}")]
    InvalidOption {
        at: Location,
        service: String,
        keyword: String,
        reason: String,
    },
    #[error("{at}: unknown `pg_rto` {value}: expected one of {known}")]
    UnknownRto {
        at: Location,
        value: String,
        known: String,
    },
    #[error("{at}: `pg_rto_plan` entry `{name}`: {reason}")]
    InvalidRtoPlan {
        at: Location,
        name: String,
        reason: String,
    },
}

impl PlanError {
    /// Where in the inventory the problem is, when it is about one place.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PlanError::Config(
                ConfigError::Syntax { at, .. }
                | ConfigError::NotAMapping { at, .. }
                | ConfigError::Limit { at, .. },
            )
            | PlanError::Config(ConfigError::BadName { at, .. }) => Some(at),
            PlanError::Haproxy(e) => e.location(),
            PlanError::Config(_)
            | PlanError::Internal { .. }
            | PlanError::NoClusters { .. }
            | PlanError::UnknownCluster { .. } => None,
            PlanError::MissingVar { at, .. }
            | PlanError::InvalidValue { at, .. }
            | PlanError::InvalidAddress { at, .. }
            | PlanError::DuplicateSeq { at, .. }
            | PlanError::MissingField { at, .. }
            | PlanError::InvalidPort { at, .. }
            | PlanError::UnknownDest { at, .. }
            | PlanError::InvalidSelector { at, .. }
            | PlanError::SelectorFailed { at, .. }
            | PlanError::DuplicateService { at, .. }
            | PlanError::PortClash { at, .. }
            | PlanError::InvalidOption { at, .. }
            | PlanError::UnknownRto { at, .. }
            | PlanError::InvalidRtoPlan { at, .. } => Some(at),
        }
    }
}

/// Reads an inventory file and resolves it (all clusters, or only `cluster`).
///
/// # Errors
/// Any [`PlanError`]: unreadable file, YAML syntax, invalid values, unknown cluster, ...
pub fn load_plan(path: &Path, cluster: Option<&str>) -> Result<(Plan, Vec<Warning>), PlanError> {
    let (inventory, warnings) = cfg::load_inventory(path)?;
    plan_from_inventory(&inventory, cluster, warnings)
}

/// Resolves inventory text (for reloads and tests); `file` names it in messages.
///
/// # Errors
/// As [`load_plan`].
pub fn plan_from_str(
    source: &str,
    file: &str,
    cluster: Option<&str>,
) -> Result<(Plan, Vec<Warning>), PlanError> {
    let (inventory, warnings) = cfg::parse_inventory(source, file)?;
    plan_from_inventory(&inventory, cluster, warnings)
}

/// Resolves an inventory already read; `warnings` are the reader's, to which the plan's are added.
///
/// # Errors
/// As [`load_plan`].
pub fn plan_from_inventory(
    inventory: &Inventory,
    cluster: Option<&str>,
    mut warnings: Vec<Warning>,
) -> Result<(Plan, Vec<Warning>), PlanError> {
    // Clusters in order of first appearance, members in hostvars order.
    let mut clusters: Vec<(String, Vec<&Host>)> = Vec::new();
    let mut cluster_index: HashMap<String, usize> = HashMap::new();
    for host in &inventory.hosts {
        let Some(node) = host.var("pg_cluster") else {
            continue;
        };
        let name = match &node.value {
            Value::Str(s) if !s.is_empty() => s.clone(),
            _ => {
                return Err(PlanError::InvalidValue {
                    at: inventory.loc(node.pos),
                    what: format!("`pg_cluster` of host `{}`", host.name),
                    expected: "a non-empty string",
                    found: describe(node),
                });
            }
        };
        match cluster_index.get(&name) {
            Some(&i) => clusters[i].1.push(host),
            None => {
                cluster_index.insert(name.clone(), clusters.len());
                clusters.push((name, vec![host]));
            }
        }
    }
    if clusters.is_empty() {
        return Err(PlanError::NoClusters {
            file: Arc::clone(&inventory.file),
        });
    }
    if let Some(wanted) = cluster {
        if !clusters.iter().any(|(n, _)| n == wanted) {
            return Err(PlanError::UnknownCluster {
                file: Arc::clone(&inventory.file),
                name: wanted.to_owned(),
                known: clusters
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        clusters.retain(|(n, _)| n == wanted);
    }
    let mut plan = Plan {
        clusters: Vec::with_capacity(clusters.len()),
    };
    let mut providers: Vec<ProviderPorts> = Vec::new();
    let shared = Shared::default();
    for (name, members) in &clusters {
        let resolver = ClusterResolver {
            inventory,
            name,
            members,
            shared: &shared,
        };
        let (cluster_plan, specs) = resolver.resolve(&mut warnings)?;
        let provider = resolver.provider();
        check_cross_cluster_ports(&mut providers, provider, &specs, name)?;
        plan.clusters.push(cluster_plan);
    }
    Ok((plan, warnings))
}

/// With `pg_service_provider` set, every cluster's services are bound on the same provider group,
/// so their ports must not clash across clusters (Pigsty's own rule).
/// A `pg_service_provider` group and the services (with their cluster) bound on it so far.
/// The services are indexed by port, so that many clusters on one provider stay linear.
type ProviderPorts = (Option<String>, HashMap<u16, Vec<(ServiceSpec, String)>>);

fn check_cross_cluster_ports(
    providers: &mut Vec<ProviderPorts>,
    provider: Option<String>,
    specs: &[ServiceSpec],
    cluster: &str,
) -> Result<(), PlanError> {
    let Some(provider) = provider else {
        return Ok(());
    };
    let entry = match providers
        .iter_mut()
        .position(|(p, _)| p.as_deref() == Some(&provider))
    {
        Some(i) => &mut providers[i].1,
        None => {
            providers.push((Some(provider), HashMap::new()));
            let last = providers.len() - 1;
            &mut providers[last].1
        }
    };
    for spec in specs {
        let same_port = entry.get(&spec.port).map_or(&[][..], Vec::as_slice);
        if let Some((other, other_cluster)) = same_port.iter().find(|(o, _)| clashes(o, spec)) {
            return Err(PlanError::PortClash {
                at: spec.port_at.clone(),
                service: format!("{cluster}-{}", spec.name),
                bind: bind_text(spec.ip),
                port: spec.port,
                other: format!("{other_cluster}-{}", other.name),
                other_at: other.port_at.clone(),
            });
        }
    }
    for spec in specs {
        entry
            .entry(spec.port)
            .or_default()
            .push((spec.clone(), cluster.to_owned()));
    }
    Ok(())
}

fn clashes(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.port == b.port
        && match (a.ip, b.ip) {
            (BindAddr::Addr(x), BindAddr::Addr(y)) => x == y,
            _ => true,
        }
}

fn bind_text(ip: BindAddr) -> String {
    match ip {
        BindAddr::Any => "*".to_owned(),
        BindAddr::Addr(a) => a.to_string(),
    }
}

/// Parses a service's `default-server` line (read at `at`) into its options, turning each note
/// into a warning about `subject` (how the line is named to the operator, e.g. "`options` of
/// service `pg-test-primary`"); `fraction_hint` ends the fractional-time warning.
fn parse_service_options(
    line: &str,
    at: &Location,
    service: &str,
    subject: &str,
    fraction_hint: &str,
    warnings: &mut Vec<Warning>,
) -> Result<model::ServerOptions, PlanError> {
    let (options, notes) =
        options::parse_default_server(line).map_err(|e| PlanError::InvalidOption {
            at: at.clone(),
            service: service.to_owned(),
            keyword: e.keyword,
            reason: e.reason,
        })?;
    for note in notes {
        let (kind, message) = match note {
            OptionNote::Unknown { keyword } => (
                WarningKind::UnknownServerOption,
                format!("{subject}: `{keyword}` is not implemented by pgsvc and is ignored"),
            ),
            OptionNote::FractionalTime { keyword, value } => (
                WarningKind::HaproxyCompat,
                format!(
                    "{subject}: `{keyword} {value}` has a fraction, which HAProxy 2.x rejects{fraction_hint}"
                ),
            ),
        };
        warnings.push(Warning {
            kind,
            at: Some(at.clone()),
            message,
        });
    }
    Ok(options)
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests;
