//! One entry of `pg_default_services` / `pg_services`: its fields, their defaults and their checks.
//!
//! Pigsty's template reads these fields with Jinja defaults and ignores anything else; here every
//! field is type-checked with its position, unknown fields are reported, and the four default
//! services are parsed from the same YAML text Pigsty ships so they go through the same code.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::PlanError;
use super::model::{Balance, BindAddr};
use crate::config::{Location, Node, Pos, Value, Warning, WarningKind};

/// Pigsty's `pg_default_services` (`roles/pgsql/defaults/main.yml`), used when the inventory does
/// not set the variable.
pub const PIGSTY_DEFAULT_SERVICES: &str = r#"
- { name: primary ,port: 5433 ,dest: default  ,check: /primary   ,selector: "[]" }
- { name: replica ,port: 5434 ,dest: default  ,check: /read-only ,selector: "[]" , backup: "[? pg_role == `primary` || pg_role == `offline` ]" }
- { name: default ,port: 5436 ,dest: postgres ,check: /primary   ,selector: "[]" }
- { name: offline ,port: 5438 ,dest: postgres ,check: /replica   ,selector: "[? pg_role == `offline` || pg_offline_query ]" , backup: "[? pg_role == `replica` && !pg_offline_query]"}
"#;

/// How positions inside [`PIGSTY_DEFAULT_SERVICES`] are named in messages.
pub const DEFAULT_SERVICES_FILE: &str = "<built-in pg_default_services>";

const KNOWN_FIELDS: [&str; 10] = [
    "name", "port", "ip", "selector", "backup", "dest", "check", "maxconn", "balance", "options",
];

/// Where a service's connections go on each server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// `pg_default_service_dest`.
    Default,
    /// The instance's `pg_port`.
    Postgres,
    /// The instance's `pgbouncer_port`.
    Pgbouncer,
    Port(u16),
}

impl Dest {
    /// The field as written (`ServicePlan::dest`).
    pub fn as_written(self) -> String {
        match self {
            Dest::Default => "default".to_owned(),
            Dest::Postgres => "postgres".to_owned(),
            Dest::Pgbouncer => "pgbouncer".to_owned(),
            Dest::Port(p) => p.to_string(),
        }
    }
}

/// A JMESPath expression and where it was written.
#[derive(Clone, Debug)]
pub struct Expr {
    pub text: String,
    pub at: Location,
}

/// A service entry as written, checked and with its defaults filled in.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub at: Location,
    pub port: u16,
    pub port_at: Location,
    pub ip: BindAddr,
    pub selector: Expr,
    pub backup: Option<Expr>,
    pub dest: Dest,
    pub check: String,
    pub maxconn: u32,
    pub balance: Balance,
    /// The `options` string, replacing the `default-server` line.
    pub options: Option<(String, Location)>,
}

/// Locations in one source (the inventory, or the built-in defaults).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a Arc<str>,
}

impl Source<'_> {
    pub fn loc(&self, pos: Pos) -> Location {
        Location {
            file: Arc::clone(self.file),
            line: pos.line,
            column: pos.column,
        }
    }
}

/// A value for messages: scalars as written, collections by type.
pub fn describe(node: &Node) -> String {
    match (&node.value, node.scalar_text()) {
        (Value::Null, _) => "null".to_owned(),
        (Value::Str(s), _) => format!("\"{s}\""),
        (_, Some(text)) => text,
        (_, None) => node.type_name().to_owned(),
    }
}

/// Reads one service entry.
///
/// # Errors
/// A missing or mistyped field, a port out of range, an invalid address, check URI, balance, or an
/// unknown `dest`.
pub fn parse_service(
    node: &Node,
    src: Source<'_>,
    cluster: &str,
    warnings: &mut Vec<Warning>,
) -> Result<ServiceSpec, PlanError> {
    let at = src.loc(node.pos);
    let Some(entries) = node.as_map() else {
        return Err(PlanError::InvalidValue {
            at,
            what: format!("a service of cluster `{cluster}`"),
            expected: "a mapping",
            found: describe(node),
        });
    };
    let name_node = node.get("name").ok_or_else(|| PlanError::MissingField {
        at: at.clone(),
        service: "(unnamed)".to_owned(),
        field: "name",
    })?;
    let name = match &name_node.value {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => {
            return Err(PlanError::InvalidValue {
                at: src.loc(name_node.pos),
                what: format!("`name` of a service of cluster `{cluster}`"),
                expected: "a string",
                found: describe(name_node),
            });
        }
    };
    let full = format!("{cluster}-{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(PlanError::InvalidValue {
            at: src.loc(name_node.pos),
            what: format!("`name` of service `{full}`"),
            expected: "a name of letters, digits, '-', '_', '.' or ':' (an HAProxy proxy name)",
            found: describe(name_node),
        });
    }
    for (key, _) in entries {
        let key_text = key.scalar_text().unwrap_or_default();
        if !KNOWN_FIELDS.contains(&key_text.as_str()) {
            warnings.push(Warning {
                kind: WarningKind::UnknownServiceField,
                at: Some(src.loc(key.pos)),
                message: format!(
                    "unknown field `{key_text}` in service `{full}` is ignored (known fields: {})",
                    KNOWN_FIELDS.join(", ")
                ),
            });
        }
    }
    let field = |key: &str| node.get(key).filter(|n| n.value != Value::Null);
    let wrong = |n: &Node, key: &str, expected: &'static str| PlanError::InvalidValue {
        at: src.loc(n.pos),
        what: format!("`{key}` of service `{full}`"),
        expected,
        found: describe(n),
    };
    let string = |key: &str| -> Result<Option<(String, Location)>, PlanError> {
        match field(key) {
            None => Ok(None),
            Some(n) => match &n.value {
                Value::Str(s) => Ok(Some((s.clone(), src.loc(n.pos)))),
                _ => Err(wrong(n, key, "a string")),
            },
        }
    };

    let port_node = field("port").ok_or_else(|| PlanError::MissingField {
        at: at.clone(),
        service: full.clone(),
        field: "port",
    })?;
    let port_at = src.loc(port_node.pos);
    let port = match port_node.value {
        Value::Int(p) => {
            u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| PlanError::InvalidPort {
                    at: port_at.clone(),
                    service: full.clone(),
                    port: p,
                })?
        }
        _ => return Err(wrong(port_node, "port", "an integer port 1..=65535")),
    };

    let ip = match string("ip")? {
        None => BindAddr::Any,
        Some((text, _)) if text == "*" => BindAddr::Any,
        Some((text, ip_at)) => {
            BindAddr::Addr(
                text.parse::<Ipv4Addr>()
                    .map_err(|_| PlanError::InvalidAddress {
                        at: ip_at,
                        what: format!("`ip` of service `{full}`"),
                        value: text.clone(),
                        expected: "`*` or an IPv4 address",
                    })?,
            )
        }
    };

    let (selector_text, selector_at) =
        string("selector")?.ok_or_else(|| PlanError::MissingField {
            at: at.clone(),
            service: full.clone(),
            field: "selector",
        })?;
    let selector = Expr {
        text: selector_text,
        at: selector_at,
    };
    let backup = string("backup")?.map(|(text, at)| Expr { text, at });

    let dest = match field("dest") {
        None => Dest::Default,
        Some(n) => parse_dest(n, src, &format!("`dest` of service `{full}`"), true)?,
    };

    let check = match string("check")? {
        None => "/".to_owned(),
        Some((uri, check_at)) => {
            if !uri.starts_with('/') || uri.chars().any(char::is_whitespace) {
                return Err(PlanError::InvalidValue {
                    at: check_at,
                    what: format!("`check` of service `{full}`"),
                    expected: "a Patroni REST path starting with `/`, without spaces",
                    found: format!("\"{uri}\""),
                });
            }
            uri
        }
    };

    let maxconn = match field("maxconn") {
        None => 5000,
        Some(n) => match n.value {
            Value::Int(v) if v >= 1 => {
                u32::try_from(v).map_err(|_| wrong(n, "maxconn", "an integer 1..=4294967295"))?
            }
            _ => return Err(wrong(n, "maxconn", "an integer 1..=4294967295")),
        },
    };

    let balance = match string("balance")? {
        None => Balance::RoundRobin,
        Some((text, balance_at)) => match text.as_str() {
            "roundrobin" => Balance::RoundRobin,
            "leastconn" => Balance::LeastConn,
            "maglev" => Balance::Maglev,
            _ => {
                return Err(PlanError::InvalidValue {
                    at: balance_at,
                    what: format!("`balance` of service `{full}`"),
                    expected: "roundrobin, leastconn or maglev",
                    found: format!("\"{text}\""),
                });
            }
        },
    };

    let options = string("options")?;

    Ok(ServiceSpec {
        name,
        at,
        port,
        port_at,
        ip,
        selector,
        backup,
        dest,
        check,
        maxconn,
        balance,
        options,
    })
}

/// Reads a `dest` (or, with `allow_default` false, a `pg_default_service_dest`).
///
/// # Errors
/// [`PlanError::UnknownDest`] for anything but default/postgres/pgbouncer or a port number.
pub fn parse_dest(
    node: &Node,
    src: Source<'_>,
    what: &str,
    allow_default: bool,
) -> Result<Dest, PlanError> {
    let unknown = || PlanError::UnknownDest {
        at: src.loc(node.pos),
        what: what.to_owned(),
        dest: describe(node),
        allowed: if allow_default {
            "default, postgres, pgbouncer or a port number"
        } else {
            "postgres, pgbouncer or a port number"
        },
    };
    match &node.value {
        Value::Str(s) if s == "default" && allow_default => Ok(Dest::Default),
        Value::Str(s) if s == "postgres" => Ok(Dest::Postgres),
        Value::Str(s) if s == "pgbouncer" => Ok(Dest::Pgbouncer),
        // Pigsty would send anything else to 5432; a typo there silently bypasses pgbouncer, so
        // pgsvc refuses it.
        Value::Int(p) => u16::try_from(*p)
            .ok()
            .filter(|&p| p != 0)
            .map(Dest::Port)
            .ok_or_else(unknown),
        _ => Err(unknown()),
    }
}
