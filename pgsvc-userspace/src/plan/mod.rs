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

/// What every service of a cluster is resolved against, computed once per cluster.
struct ServiceContext<'a> {
    instances: &'a [Instance],
    /// The members' `hostvars`, what selectors are evaluated over.
    members: &'a members::Members<'a>,
    /// `inventory_hostname` → index in `instances` (and in the members).
    member_index: &'a HashMap<&'a str, usize>,
    default_dest: Dest,
    rto_line: &'a str,
}

struct ClusterResolver<'a> {
    inventory: &'a Inventory,
    name: &'a str,
    members: &'a [&'a Host],
    shared: &'a Shared,
}

/// What every cluster of a plan uses alike, built once per plan (thousands of clusters).
#[derive(Default)]
struct Shared {
    compiled: members::Compiled,
    builtin_defaults: std::cell::OnceCell<Node>,
}

impl ClusterResolver<'_> {
    fn src(&self) -> Source<'_> {
        Source {
            file: &self.inventory.file,
        }
    }

    /// A cluster-wide variable (from the first member; see the module docs).
    fn cluster_var(&self, name: &str) -> Option<&Node> {
        self.members
            .first()
            .and_then(|h| h.var(name))
            .filter(|n| n.value != Value::Null)
    }

    fn provider(&self) -> Option<String> {
        self.cluster_var("pg_service_provider")
            .and_then(Node::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    fn resolve(
        &self,
        warnings: &mut Vec<Warning>,
    ) -> Result<(ClusterPlan, Vec<ServiceSpec>), PlanError> {
        let instances = self.instances(warnings)?;
        let members = members::Members::new(self.members, &self.shared.compiled);
        let default_dest = match self.cluster_var("pg_default_service_dest") {
            None => Dest::Pgbouncer,
            Some(n) => service::parse_dest(n, self.src(), "`pg_default_service_dest`", false)?,
        };
        let rto_line = options::rto_options_line(&self.rto_plan()?);
        let specs = self.service_specs(warnings)?;

        let mut services: Vec<ServicePlan> = Vec::with_capacity(specs.len());
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        let member_index: HashMap<&str, usize> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect();
        let ctx = ServiceContext {
            instances: &instances,
            members: &members,
            member_index: &member_index,
            default_dest,
            rto_line: &rto_line,
        };
        for (i, spec) in specs.iter().enumerate() {
            let full = format!("{}-{}", self.name, spec.name);
            if let Some(first) = by_name.get(spec.name.as_str()).map(|&j| &specs[j]) {
                return Err(PlanError::DuplicateService {
                    at: spec.at.clone(),
                    cluster: self.name.to_owned(),
                    service: full,
                    first: first.at.clone(),
                });
            }
            by_name.insert(spec.name.as_str(), i);
            let same_port = by_port.entry(spec.port).or_default();
            if let Some(other) = same_port
                .iter()
                .map(|&j| &specs[j])
                .find(|o| clashes(o, spec))
            {
                return Err(PlanError::PortClash {
                    at: spec.port_at.clone(),
                    service: full,
                    bind: bind_text(spec.ip),
                    port: spec.port,
                    other: format!("{}-{}", self.name, other.name),
                    other_at: other.port_at.clone(),
                });
            }
            same_port.push(i);
            services.push(self.service(spec, &full, &ctx, warnings)?);
        }
        let plan = ClusterPlan {
            name: self.name.to_owned(),
            vip: self.vip()?,
            instances,
            services,
        };
        Ok((plan, specs))
    }

    fn instances(&self, warnings: &mut Vec<Warning>) -> Result<Vec<Instance>, PlanError> {
        let mut instances: Vec<Instance> = Vec::with_capacity(self.members.len());
        let mut by_seq: HashMap<u32, usize> = HashMap::new();
        for host in self.members {
            let instance = self.instance(host, warnings)?;
            if let Some(first) = by_seq.get(&instance.seq).map(|&i| &instances[i]) {
                let at = host
                    .var("pg_seq")
                    .map_or_else(|| host.at.clone(), |n| self.inventory.loc(n.pos));
                return Err(PlanError::DuplicateSeq {
                    at,
                    cluster: self.name.to_owned(),
                    seq: instance.seq,
                    host: host.name.clone(),
                    first: first.addr.to_string(),
                });
            }
            by_seq.insert(instance.seq, instances.len());
            instances.push(instance);
        }
        Ok(instances)
    }

    fn instance(&self, host: &Host, warnings: &mut Vec<Warning>) -> Result<Instance, PlanError> {
        let addr: Ipv4Addr = host.name.parse().map_err(|_| PlanError::InvalidAddress {
            at: host.at.clone(),
            what: format!("a host of cluster `{}`", self.name),
            value: host.name.clone(),
            expected: "an IPv4 address (Pigsty keys PostgreSQL hosts by address)",
        })?;
        let required = |var: &'static str| {
            host.var(var)
                .filter(|n| n.value != Value::Null)
                .ok_or_else(|| PlanError::MissingVar {
                    at: host.at.clone(),
                    host: host.name.clone(),
                    cluster: self.name.to_owned(),
                    var,
                })
        };
        let seq_node = required("pg_seq")?;
        let seq = self.int_in(seq_node, &host.name, "pg_seq", 0, i64::from(u32::MAX))?;
        let role_node = required("pg_role")?;
        let role = match &role_node.value {
            Value::Str(s) => s.clone(),
            _ => return Err(self.invalid(role_node, &host.name, "pg_role", "a string")),
        };
        if !matches!(role.as_str(), "primary" | "replica" | "offline") {
            warnings.push(Warning {
                kind: WarningKind::UnknownRole,
                at: Some(self.inventory.loc(role_node.pos)),
                message: format!(
                    "`pg_role` `{role}` of host `{}` is not primary, replica or offline; selectors still see it as written",
                    host.name
                ),
            });
        }
        let offline_query = self.flag(host, "pg_offline_query")?;
        let weight = self.opt_int(host, "pg_weight", 100, 0, 255)?;
        Ok(Instance {
            name: format!("{}-{seq}", self.name),
            addr,
            seq,
            role,
            offline_query,
            weight,
            patroni_port: self.port_var(host, "patroni_port", 8008)?,
            patroni_tls: self.flag(host, "patroni_ssl_enabled")?,
            pg_port: self.port_var(host, "pg_port", 5432)?,
            pgbouncer_port: self.port_var(host, "pgbouncer_port", 6432)?,
        })
    }

    fn invalid(&self, node: &Node, host: &str, var: &str, expected: &'static str) -> PlanError {
        PlanError::InvalidValue {
            at: self.inventory.loc(node.pos),
            what: format!("`{var}` of host `{host}`"),
            expected,
            found: describe(node),
        }
    }

    fn int_in(
        &self,
        node: &Node,
        host: &str,
        var: &str,
        min: i64,
        max: i64,
    ) -> Result<u32, PlanError> {
        let expected = match var {
            "pg_seq" => "a non-negative integer",
            "pg_weight" => "an integer 0..=255",
            _ => "a port number 1..=65535",
        };
        match node.value {
            Value::Int(v) if (min..=max).contains(&v) => {
                u32::try_from(v).map_err(|_| self.invalid(node, host, var, expected))
            }
            _ => Err(self.invalid(node, host, var, expected)),
        }
    }

    fn opt_int(
        &self,
        host: &Host,
        var: &str,
        default: u32,
        min: i64,
        max: i64,
    ) -> Result<u32, PlanError> {
        match host.var(var).filter(|n| n.value != Value::Null) {
            None => Ok(default),
            Some(n) => self.int_in(n, &host.name, var, min, max),
        }
    }

    fn port_var(&self, host: &Host, var: &str, default: u16) -> Result<u16, PlanError> {
        let port = self.opt_int(host, var, u32::from(default), 1, 65535)?;
        Ok(u16::try_from(port).unwrap_or(default))
    }

    fn flag(&self, host: &Host, var: &str) -> Result<bool, PlanError> {
        match host.var(var).map(|n| (n, &n.value)) {
            None | Some((_, Value::Null)) => Ok(false),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((n, _)) => Err(self.invalid(n, &host.name, var, "a boolean")),
        }
    }

    fn vip(&self) -> Result<Option<Vip>, PlanError> {
        let enabled = match self.cluster_var("pg_vip_enabled") {
            None => false,
            Some(Node {
                value: Value::Bool(b),
                ..
            }) => *b,
            Some(n) => {
                return Err(PlanError::InvalidValue {
                    at: self.inventory.loc(n.pos),
                    what: format!("`pg_vip_enabled` of cluster `{}`", self.name),
                    expected: "a boolean",
                    found: describe(n),
                });
            }
        };
        if !enabled {
            return Ok(None);
        }
        let Some(node) = self.cluster_var("pg_vip_address") else {
            let host = self.members.first().map(|h| (h.at.clone(), h.name.clone()));
            let (at, host) =
                host.unwrap_or_else(|| (self.inventory.loc(cfg::Pos::default()), String::new()));
            return Err(PlanError::MissingVar {
                at,
                host,
                cluster: self.name.to_owned(),
                var: "pg_vip_address",
            });
        };
        let text = describe(node);
        let parsed = node.as_str().and_then(|s| {
            let (addr, len) = s.split_once('/')?;
            let addr: Ipv4Addr = addr.parse().ok()?;
            let prefix_len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
            Some(Vip { addr, prefix_len })
        });
        parsed.map(Some).ok_or_else(|| PlanError::InvalidAddress {
            at: self.inventory.loc(node.pos),
            what: format!("`pg_vip_address` of cluster `{}`", self.name),
            value: text.trim_matches('"').to_owned(),
            expected: "an IPv4 address with a prefix length, e.g. 198.18.0.3/24",
        })
    }

    /// `pg_rto_plan[pg_rto]`, with the inventory's own `pg_rto_plan` entries taking precedence.
    fn rto_plan(&self) -> Result<RtoPlan, PlanError> {
        let (name, name_at) = match self.cluster_var("pg_rto") {
            None => ("norm".to_owned(), None),
            Some(n) => match n.as_str() {
                Some(s) => (s.to_owned(), Some(self.inventory.loc(n.pos))),
                None => {
                    return Err(PlanError::UnknownRto {
                        at: self.inventory.loc(n.pos),
                        value: describe(n),
                        known: "fast, norm, safe, wide".to_owned(),
                    });
                }
            },
        };
        let custom = self.cluster_var("pg_rto_plan");
        if let Some(entry) = custom.and_then(|p| p.get(&name)) {
            return self.custom_rto(&name, entry);
        }
        if let Some((_, plan)) = options::BUILTIN_RTO_PLANS.iter().find(|(n, _)| *n == name) {
            return Ok(*plan);
        }
        let mut known: Vec<String> = options::BUILTIN_RTO_PLANS
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        for (key, _) in custom.and_then(Node::as_map).unwrap_or_default() {
            let key = key.scalar_text().unwrap_or_default();
            if !known.contains(&key) {
                known.push(key);
            }
        }
        Err(PlanError::UnknownRto {
            at: name_at.unwrap_or_else(|| self.inventory.loc(cfg::Pos::default())),
            value: format!("\"{name}\""),
            known: known.join(", "),
        })
    }

    /// `[ttl, loop, retry, start, margin, inter, fastinter, downinter, rise, fall]`.
    fn custom_rto(&self, name: &str, entry: &Node) -> Result<RtoPlan, PlanError> {
        let bad = |reason: String| PlanError::InvalidRtoPlan {
            at: self.inventory.loc(entry.pos),
            name: name.to_owned(),
            reason,
        };
        let Value::Seq(items) = &entry.value else {
            return Err(bad(format!(
                "expected a list of 10 values, found {}",
                entry.type_name()
            )));
        };
        if items.len() < 10 {
            return Err(bad(format!("expected 10 values, found {}", items.len())));
        }
        let time = |i: usize, what: &str| -> Result<std::time::Duration, PlanError> {
            let text = items[i].scalar_text().unwrap_or_default();
            let text = if matches!(items[i].value, Value::Int(_)) {
                format!("{text}s")
            } else {
                text
            };
            match options::parse_time(&text) {
                Ok((d, _)) if !d.is_zero() => Ok(d),
                Ok(_) => Err(bad(format!("{what} must be greater than zero"))),
                Err(options::BadTime(reason)) => Err(bad(format!("{what}: {reason}"))),
            }
        };
        let count = |i: usize, what: &str| -> Result<u32, PlanError> {
            match items[i].value {
                Value::Int(v) if v >= 1 => {
                    u32::try_from(v).map_err(|_| bad(format!("{what} is too large")))
                }
                _ => Err(bad(format!(
                    "{what} must be an integer ≥ 1, found {}",
                    describe(&items[i])
                ))),
            }
        };
        Ok(RtoPlan {
            inter: time(5, "inter")?,
            fastinter: time(6, "fastinter")?,
            downinter: time(7, "downinter")?,
            rise: count(8, "rise")?,
            fall: count(9, "fall")?,
        })
    }

    fn service_specs(&self, warnings: &mut Vec<Warning>) -> Result<Vec<ServiceSpec>, PlanError> {
        let mut specs = Vec::new();
        match self.cluster_var("pg_default_services") {
            Some(list) => self.read_services(
                list,
                "pg_default_services",
                self.src(),
                &mut specs,
                warnings,
            )?,
            None => {
                let file: Arc<str> = Arc::from(service::DEFAULT_SERVICES_FILE);
                let list = match self.shared.builtin_defaults.get() {
                    Some(list) => list,
                    None => {
                        let parsed = builtin_default_services(&file)?;
                        self.shared.builtin_defaults.get_or_init(|| parsed)
                    }
                };
                self.read_services(
                    list,
                    "pg_default_services",
                    Source { file: &file },
                    &mut specs,
                    warnings,
                )?;
            }
        }
        if let Some(list) = self.cluster_var("pg_services") {
            self.read_services(list, "pg_services", self.src(), &mut specs, warnings)?;
        }
        Ok(specs)
    }

    fn read_services(
        &self,
        list: &Node,
        var: &str,
        src: Source<'_>,
        specs: &mut Vec<ServiceSpec>,
        warnings: &mut Vec<Warning>,
    ) -> Result<(), PlanError> {
        let Value::Seq(items) = &list.value else {
            return Err(PlanError::InvalidValue {
                at: src.loc(list.pos),
                what: format!("`{var}` of cluster `{}`", self.name),
                expected: "a list of services",
                found: describe(list),
            });
        };
        for item in items {
            specs.push(service::parse_service(item, src, self.name, warnings)?);
        }
        Ok(())
    }

    fn service(
        &self,
        spec: &ServiceSpec,
        full: &str,
        ctx: &ServiceContext<'_>,
        warnings: &mut Vec<Warning>,
    ) -> Result<ServicePlan, PlanError> {
        let selected = self.evaluate(&spec.selector, full, "selector", ctx.members)?;
        let backups = match &spec.backup {
            Some(expr) => self.evaluate(expr, full, "backup", ctx.members)?,
            None => Vec::new(),
        };
        let selected_set: HashSet<&String> = selected.iter().collect();
        let backup_set: HashSet<&String> = backups.iter().collect();
        // Declaration order: selected members, then backup members that were not selected.
        let order: Vec<&String> = selected
            .iter()
            .chain(backups.iter().filter(|b| !selected_set.contains(b)))
            .collect();
        let dest = match spec.dest {
            Dest::Default => ctx.default_dest,
            other => other,
        };
        let mut servers = Vec::with_capacity(order.len());
        for host in order {
            // Selectors only see members, so every name is one of them; instances share their order.
            let Some(instance) = ctx
                .member_index
                .get(host.as_str())
                .and_then(|&i| ctx.instances.get(i))
            else {
                continue;
            };
            let port = match dest {
                Dest::Postgres => instance.pg_port,
                Dest::Default | Dest::Pgbouncer => instance.pgbouncer_port,
                Dest::Port(p) => p,
            };
            servers.push(ServerPlan {
                name: instance.name.clone(),
                addr: instance.addr,
                port,
                check_port: instance.patroni_port,
                check_tls: instance.patroni_tls,
                weight: instance.weight,
                backup: backup_set.contains(host),
            });
        }
        if servers.is_empty() {
            warnings.push(Warning {
                kind: WarningKind::EmptyService,
                at: Some(spec.selector.at.clone()),
                message: format!(
                    "service `{full}` selects no member of cluster `{}` (selector `{}`): it will refuse every connection",
                    self.name, spec.selector.text
                ),
            });
        }
        let (options_line, options_at) = match &spec.options {
            Some((line, at)) => (line.clone(), at.clone()),
            None => (ctx.rto_line.to_owned(), spec.at.clone()),
        };
        let (options, notes) =
            options::parse_default_server(&options_line).map_err(|e| PlanError::InvalidOption {
                at: options_at.clone(),
                service: full.to_owned(),
                keyword: e.keyword,
                reason: e.reason,
            })?;
        for note in notes {
            let (kind, message) = match note {
                OptionNote::Unknown { keyword } => (
                    WarningKind::UnknownServerOption,
                    format!(
                        "`options` of service `{full}`: `{keyword}` is not implemented by pgsvc and is ignored"
                    ),
                ),
                OptionNote::FractionalTime { keyword, value } => (
                    WarningKind::HaproxyCompat,
                    format!(
                        "`options` of service `{full}`: `{keyword} {value}` has a fraction, which HAProxy 2.x rejects (write it in ms)"
                    ),
                ),
            };
            warnings.push(Warning {
                kind,
                at: Some(options_at.clone()),
                message,
            });
        }
        Ok(ServicePlan {
            name: full.to_owned(),
            short_name: spec.name.clone(),
            cluster: self.name.to_owned(),
            ip: spec.ip,
            port: spec.port,
            dest: spec.dest.as_written(),
            check: spec.check.clone(),
            maxconn: spec.maxconn,
            balance: spec.balance,
            options,
            options_line,
            servers,
            allbackups: false,
        })
    }

    fn evaluate(
        &self,
        expr: &Expr,
        service: &str,
        field: &'static str,
        members: &members::Members<'_>,
    ) -> Result<Vec<String>, PlanError> {
        members.select(&expr.text).map_err(|err| match err {
            SelectorError::Syntax { offset, reason } => PlanError::InvalidSelector {
                at: expr.at.clone(),
                service: service.to_owned(),
                field,
                expression: expr.text.clone(),
                offset,
                reason,
            },
            SelectorError::Runtime { reason } => PlanError::SelectorFailed {
                at: expr.at.clone(),
                service: service.to_owned(),
                field,
                expression: expr.text.clone(),
                reason,
            },
            SelectorError::TooComplex { reason } => PlanError::InvalidSelector {
                at: expr.at.clone(),
                service: service.to_owned(),
                field,
                expression: selector::abbreviate(&expr.text),
                offset: 0,
                reason,
            },
            SelectorError::TooMuchData { reason } => PlanError::SelectorFailed {
                at: expr.at.clone(),
                service: service.to_owned(),
                field,
                expression: selector::abbreviate(&expr.text),
                reason,
            },
            SelectorError::NotMembers { found } => PlanError::SelectorFailed {
                at: expr.at.clone(),
                service: service.to_owned(),
                field,
                expression: expr.text.clone(),
                reason: format!("it must yield a list of cluster members, but yields {found}"),
            },
        })
    }
}

/// The parsed built-in default services.
fn builtin_default_services(file: &Arc<str>) -> Result<Node, PlanError> {
    let doc = cfg::yaml::parse(service::PIGSTY_DEFAULT_SERVICES).map_err(|e| {
        PlanError::Config(ConfigError::Syntax {
            at: Location {
                file: Arc::clone(file),
                line: e.pos.line,
                column: e.pos.column,
            },
            message: e.message,
        })
    })?;
    Ok(doc.root.unwrap_or(Node {
        value: Value::Seq(Vec::new()),
        pos: cfg::Pos::default(),
    }))
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests;
