//! Resolving one cluster: its members into instances (ports, flags, the VIP, the RTO plan), then its
//! services ([`services`]) with their selectors evaluated over the members.

mod services;

use super::*;

/// What every service of a cluster is resolved against, computed once per cluster.
pub(super) struct ServiceContext<'a> {
    pub(super) instances: &'a [Instance],
    /// The members' `hostvars`, what selectors are evaluated over.
    pub(super) members: &'a members::Members<'a>,
    /// `inventory_hostname` → index in `instances` (and in the members).
    pub(super) member_index: &'a HashMap<&'a str, usize>,
    pub(super) default_dest: Dest,
    pub(super) rto_line: &'a str,
}

pub(super) struct ClusterResolver<'a> {
    pub(super) inventory: &'a Inventory,
    pub(super) name: &'a str,
    pub(super) members: &'a [&'a Host],
    pub(super) shared: &'a Shared,
}

/// What every cluster of a plan uses alike, built once per plan (thousands of clusters).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) compiled: members::Compiled,
    pub(super) builtin_defaults: std::cell::OnceCell<Node>,
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

    pub(super) fn provider(&self) -> Option<String> {
        self.cluster_var("pg_service_provider")
            .and_then(Node::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    pub(super) fn resolve(
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
}
