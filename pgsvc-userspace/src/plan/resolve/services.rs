//! A cluster's services: `pg_default_services` (or Pigsty's built-in four) plus `pg_services`, each
//! read into a spec and its selectors evaluated over the members.

use super::super::*;
use super::{ClusterResolver, ServiceContext};

impl ClusterResolver<'_> {
    pub(super) fn service_specs(
        &self,
        warnings: &mut Vec<Warning>,
    ) -> Result<Vec<ServiceSpec>, PlanError> {
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

    pub(super) fn service(
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
        let options = parse_service_options(
            &options_line,
            &options_at,
            full,
            &format!("`options` of service `{full}`"),
            " (write it in ms)",
            warnings,
        )?;
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
