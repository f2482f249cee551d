//! `/metrics`: the status snapshot in the Prometheus text format (0.0.4), under the names and labels
//! of HAProxy's built-in exporter (`proxy` = service, `server` = member) so Pigsty's dashboards and
//! recording rules read pgsvc as they read HAProxy. What HAProxy has no name for (XDP packet
//! verdicts, resets, the flow table) is exported as `pgsvc_*`.
//!
//! Every family is written whole (HELP, TYPE, then all its samples) and only when it has samples.

use std::fmt::Write as _;

use crate::status::{ServerStatus, ServiceStatus, Status};

mod dcs;
mod haproxy;
mod resets;
#[cfg(test)]
mod tests;

pub use haproxy::{BACKEND_STATES, CHECK_STATES, SERVER_STATES};

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Gauge,
    Counter,
}

/// A sample value: integers stay exact (byte counters pass 2^53 long before they wrap).
#[derive(Clone, Copy, Debug)]
pub(super) enum Num {
    Int(u64),
    Float(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Self {
        Num::Int(v)
    }
}

impl From<u32> for Num {
    fn from(v: u32) -> Self {
        Num::Int(u64::from(v))
    }
}

impl From<bool> for Num {
    fn from(v: bool) -> Self {
        Num::Int(u64::from(v))
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Self {
        Num::Float(v)
    }
}

pub(super) type Labels<'a> = Vec<(&'static str, &'a str)>;

pub(super) struct Exposition {
    out: String,
}

impl Exposition {
    pub(super) fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'a>, Num)>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (label, value)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
                }
                self.out.push('}');
            }
            self.out.push(' ');
            push_number(&mut self.out, value);
            self.out.push('\n');
        }
    }

    /// One sample without labels.
    pub(super) fn single(&mut self, name: &str, kind: Kind, help: &str, value: Num) {
        self.family(name, kind, help, [(Vec::new(), value)]);
    }
}

fn push_number(out: &mut String, value: Num) {
    let _ = match value {
        Num::Int(v) => write!(out, "{v}"),
        Num::Float(v) if v.is_nan() => write!(out, "NaN"),
        Num::Float(v) if v.is_infinite() => write!(out, "{}Inf", if v > 0.0 { '+' } else { '-' }),
        // Display never uses an exponent and round-trips exactly.
        Num::Float(v) => write!(out, "{v}"),
    };
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

type ServiceField = fn(&ServiceStatus) -> Num;
type ServerField = fn(&ServerStatus) -> Num;

const PGSVC_SERVICE: &[(&str, Kind, &str, ServiceField)] = &[
    (
        "pgsvc_service_rst_sent_total",
        Kind::Counter,
        "TCP resets the datapath sent to clients of this service.",
        |s| s.rst_sent.into(),
    ),
    (
        "pgsvc_service_syn_dropped_total",
        Kind::Counter,
        "Connection attempts dropped: session limit reached or no usable server.",
        |s| s.syn_dropped.into(),
    ),
    (
        "pgsvc_service_using_backups",
        Kind::Gauge,
        "1 when the active set is made of backup servers.",
        |s| s.using_backups.into(),
    ),
];

const PGSVC_SERVER: &[(&str, Kind, &str, ServerField)] = &[
    (
        "pgsvc_server_rst_sent_total",
        Kind::Counter,
        "TCP resets sent to clients of this server (flows killed when it went DOWN).",
        |v| v.rst_sent.into(),
    ),
    (
        "pgsvc_server_active",
        Kind::Gauge,
        "1 when the server is in the active set (receives new connections).",
        |v| v.active.into(),
    ),
    (
        "pgsvc_server_backup",
        Kind::Gauge,
        "1 for a backup server.",
        |v| v.backup.into(),
    ),
    (
        "pgsvc_server_health",
        Kind::Gauge,
        "The rise/fall health counter.",
        |v| v.health.into(),
    ),
    (
        "pgsvc_server_checks_total",
        Kind::Counter,
        "Health checks run.",
        |v| v.checks_total.into(),
    ),
    (
        "pgsvc_server_snat_ports_in_use",
        Kind::Gauge,
        "SNAT ports held by connections to this server (open, or finished and not yet reused), as of the last flow GC.",
        |v| v.snat_ports_in_use.into(),
    ),
];

pub(super) fn proxy(s: &ServiceStatus) -> Labels<'_> {
    vec![("proxy", s.name.as_str())]
}

fn per_service(s: &Status, field: ServiceField) -> impl Iterator<Item = (Labels<'_>, Num)> {
    s.services.iter().map(move |svc| (proxy(svc), field(svc)))
}

/// Every (service, server) pair, with its labels.
pub(super) fn servers(s: &Status) -> impl Iterator<Item = (Labels<'_>, &ServerStatus)> {
    s.services.iter().flat_map(|svc| {
        svc.servers.iter().map(move |v| {
            (
                vec![("proxy", svc.name.as_str()), ("server", v.name.as_str())],
                v,
            )
        })
    })
}

fn per_server(s: &Status, field: ServerField) -> impl Iterator<Item = (Labels<'_>, Num)> {
    servers(s).map(move |(labels, v)| (labels, field(v)))
}

/// A state-set: one series per state, 1 for the current one. A state outside the set (UNKNOWN,
/// before the first check) gives 0 everywhere.
pub(super) fn state_set<'a>(
    labels: Labels<'a>,
    states: &'static [&'static str],
    current: &str,
) -> Vec<(Labels<'a>, Num)> {
    states
        .iter()
        .map(|&state| {
            let mut l = labels.clone();
            l.push(("state", state));
            (l, Num::from(current.eq_ignore_ascii_case(state)))
        })
        .collect()
}

/// The whole exposition for one snapshot.
pub fn render_metrics(s: &Status) -> String {
    let mut e = Exposition {
        out: String::with_capacity(16 * 1024),
    };
    haproxy::process(&mut e, s);
    haproxy::frontend(&mut e, s);
    haproxy::backend(&mut e, s);
    haproxy::server(&mut e, s);
    pgsvc(&mut e, s);
    dcs::dcs(&mut e, s);
    resets::resets(&mut e, s);
    e.out
}

fn pgsvc(e: &mut Exposition, s: &Status) {
    e.family(
        "pgsvc_build_info",
        Kind::Gauge,
        "pgsvc version (value is always 1).",
        [(vec![("version", s.version.as_str())], Num::Int(1))],
    );
    e.family(
        "pgsvc_xdp_info",
        Kind::Gauge,
        "Interface the XDP program is attached to and its mode (value is always 1).",
        [(
            vec![("iface", s.iface.as_str()), ("mode", s.xdp_mode.as_str())],
            Num::Int(1),
        )],
    );
    e.single(
        "pgsvc_local_clients_served",
        Kind::Gauge,
        "1 when clients on the node itself are balanced (cgroup socket programs attached), 0 when only clients reaching the node over the interface are (see /status local_clients).",
        s.local_clients.starts_with("served").into(),
    );
    e.single(
        "pgsvc_ready",
        Kind::Gauge,
        "1 once every service has been written to the datapath.",
        s.ready.into(),
    );
    e.single(
        "pgsvc_status_timestamp_seconds",
        Kind::Gauge,
        "Unix time the agent took this snapshot.",
        s.updated_at.into(),
    );
    if let Some(r) = &s.last_reload {
        e.single(
            "pgsvc_last_reload_success",
            Kind::Gauge,
            "1 when the last reload was applied.",
            r.ok.into(),
        );
        e.single(
            "pgsvc_last_reload_timestamp_seconds",
            Kind::Gauge,
            "Unix time of the last reload.",
            r.at.into(),
        );
    }
    e.single(
        "pgsvc_flows",
        Kind::Gauge,
        "Entries in the flow table.",
        s.datapath.flows.into(),
    );
    e.single(
        "pgsvc_flow_table_size",
        Kind::Gauge,
        "Capacity of the flow table.",
        s.datapath.max_flows.into(),
    );
    e.single(
        "pgsvc_snat_ports",
        Kind::Gauge,
        "Size of the SNAT port range: connections each server address and port can take at once.",
        s.datapath.snat_ports.into(),
    );
    e.family(
        "pgsvc_flow_table_entries",
        Kind::Gauge,
        "Entries per flow table: established (never evicted), pending (half-open and closing, LRU), nat_rev (reverse entries).",
        s.datapath
            .tables
            .iter()
            .map(|t| (vec![("table", t.name.as_str())], t.entries.into())),
    );
    e.family(
        "pgsvc_flow_table_capacity",
        Kind::Gauge,
        "Capacity per flow table.",
        s.datapath
            .tables
            .iter()
            .map(|t| (vec![("table", t.name.as_str())], t.capacity.into())),
    );
    e.single(
        "pgsvc_flow_table_evictions_total",
        Kind::Counter,
        "Pending (half-open or closing) flows evicted from their LRU table, as found by the flow GC since the agent started.",
        s.datapath.flows_evicted.into(),
    );
    e.single(
        "pgsvc_flow_table_refused_total",
        Kind::Counter,
        "Completed handshakes refused with a RST because the table of established flows was full.",
        s.datapath
            .packets
            .get(pgsvc_common::Reason::RstFlowTableFull.name())
            .copied()
            .unwrap_or(0)
            .into(),
    );
    e.family(
        "pgsvc_packets_total",
        Kind::Counter,
        "Packets the XDP program handled, by verdict.",
        s.datapath
            .packets
            .iter()
            .map(|(reason, &n)| (vec![("reason", reason.as_str())], n.into())),
    );
    for &(name, kind, help, field) in PGSVC_SERVICE {
        e.family(name, kind, help, per_service(s, field));
    }
    for &(name, kind, help, field) in PGSVC_SERVER {
        e.family(name, kind, help, per_server(s, field));
    }
}
