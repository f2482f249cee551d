//! `haproxy_server_*`: one set per (service, server).

use super::super::{Exposition, Kind, Labels, Num, servers, state_set};
use super::{CHECK_STATES, SERVER_STATES, SrvField, ZERO};
use crate::status::{ServerStatus, ServiceStatus, Status};

/// The server's state as HAProxy's exporter reports it: MAINT wins over everything, DRAIN and
/// NOLB are what the agent publishes; UP/DOWN otherwise. A server with no check result yet
/// (UNKNOWN) is in none of the states.
pub fn server_state(state: &str) -> &str {
    SERVER_STATES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(state))
        .copied()
        .unwrap_or("")
}

/// Slowstart throttle, percent of the configured weight; NaN when not throttled (as HAProxy).
fn throttle(v: &ServerStatus) -> Num {
    if v.active && v.weight > 0 && v.effective_weight < v.weight && server_state(&v.state) == "UP" {
        Num::Int(u64::from(v.effective_weight) * 100 / u64::from(v.weight))
    } else {
        Num::Float(f64::NAN)
    }
}

const SERVER: &[(&str, Kind, &str, SrvField)] = &[
    (
        "current_queue",
        Kind::Gauge,
        "Number of current queued connections.",
        |_, _, _| ZERO,
    ),
    (
        "max_queue",
        Kind::Gauge,
        "Maximum observed number of queued connections.",
        |_, _, _| ZERO,
    ),
    (
        "queue_limit",
        Kind::Gauge,
        "Configured maxqueue for the server (0 meaning no limit).",
        |_, svc, _| svc.server_maxqueue.into(),
    ),
    (
        "current_sessions",
        Kind::Gauge,
        "Number of current sessions.",
        |_, _, v| v.current_sessions.into(),
    ),
    (
        "max_sessions",
        Kind::Gauge,
        "Maximum observed number of active sessions.",
        |_, _, v| v.peaks.max_sessions.into(),
    ),
    (
        "limit_sessions",
        Kind::Gauge,
        "Configured session limit.",
        |_, svc, _| svc.server_maxconn.into(),
    ),
    (
        "limit_session_rate",
        Kind::Gauge,
        "Configured limit on new sessions per second (0: none).",
        |_, _, _| ZERO,
    ),
    (
        "sessions_total",
        Kind::Counter,
        "Total number of sessions.",
        |_, _, v| v.sessions_total.into(),
    ),
    (
        "max_session_rate",
        Kind::Gauge,
        "Maximum observed number of sessions per second.",
        |_, _, v| v.peaks.max_session_rate.into(),
    ),
    (
        "last_session_seconds",
        Kind::Gauge,
        "Number of seconds since last session assigned to server/backend.",
        |s, _, v| v.peaks.last_session_seconds(s.updated_at).into(),
    ),
    (
        "bytes_in_total",
        Kind::Counter,
        "Current total of incoming bytes.",
        |_, _, v| v.bytes_in.into(),
    ),
    (
        "bytes_out_total",
        Kind::Counter,
        "Current total of outgoing bytes.",
        |_, _, v| v.bytes_out.into(),
    ),
    (
        "connection_attempts_total",
        Kind::Counter,
        "Total number of connection establishment attempts.",
        |_, _, v| v.sessions_total.into(),
    ),
    (
        "connection_reuses_total",
        Kind::Counter,
        "Total number of connection reuses.",
        |_, _, _| ZERO,
    ),
    (
        "connection_errors_total",
        Kind::Counter,
        "Total number of connection errors.",
        |_, _, _| ZERO,
    ),
    (
        "client_aborts_total",
        Kind::Counter,
        "Total number of data transfers aborted by the client.",
        |_, _, _| ZERO,
    ),
    (
        "server_aborts_total",
        Kind::Counter,
        "Total number of data transfers aborted by the server.",
        |_, _, _| ZERO,
    ),
    ("weight", Kind::Gauge, "Service weight.", |_, _, v| {
        v.effective_weight.into()
    }),
    (
        "check_failures_total",
        Kind::Counter,
        "Total number of failed individual health checks.",
        |_, _, v| v.check_failures_total.into(),
    ),
    (
        "check_up_down_total",
        Kind::Counter,
        "Total number of UP->DOWN transitions.",
        |_, _, v| v.check_up_down_total.into(),
    ),
    (
        "downtime_seconds_total",
        Kind::Counter,
        "Total downtime (in seconds) for the service.",
        |_, _, v| v.downtime_seconds.into(),
    ),
    (
        "current_throttle",
        Kind::Gauge,
        "Current throttle percentage for the server, when slowstart is active, or no value if not in slowstart.",
        |_, _, v| throttle(v),
    ),
    (
        "loadbalanced_total",
        Kind::Counter,
        "Total number of times a service was selected, either for new sessions, or when redispatching.",
        |_, _, v| v.sessions_total.into(),
    ),
];

/// Every (service, server) pair with its labels.
fn pairs(s: &Status) -> impl Iterator<Item = (Labels<'_>, &ServiceStatus, &ServerStatus)> {
    s.services.iter().flat_map(|svc| {
        svc.servers.iter().map(move |v| {
            (
                vec![("proxy", svc.name.as_str()), ("server", v.name.as_str())],
                svc,
                v,
            )
        })
    })
}

pub(in crate::admin::metrics) fn server(e: &mut Exposition, s: &Status) {
    e.family(
        "haproxy_server_status",
        Kind::Gauge,
        "Current status of the service, per state label value.",
        servers(s)
            .flat_map(|(labels, v)| state_set(labels, &SERVER_STATES, server_state(&v.state))),
    );
    e.family(
        "haproxy_server_check_status",
        Kind::Gauge,
        "Status of last health check, per state label value.",
        servers(s).flat_map(|(labels, v)| {
            let code = v.last_check.as_ref().map_or("", |c| c.code_name.as_str());
            state_set(labels, &CHECK_STATES, code)
        }),
    );
    for &(name, kind, help, field) in SERVER {
        e.family(
            &format!("haproxy_server_{name}"),
            kind,
            help,
            pairs(s).map(|(labels, svc, v)| (labels, field(s, svc, v))),
        );
    }
    e.family(
        "haproxy_server_check_last_change_seconds",
        Kind::Gauge,
        "How long ago the last server state changed, in seconds.",
        servers(s).filter_map(|(labels, v)| Some((labels, v.last_change_seconds?.into()))),
    );
    e.family(
        "haproxy_server_check_duration_seconds",
        Kind::Gauge,
        "Total duration of the latest server health check, in seconds.",
        servers(s).filter_map(|(labels, v)| {
            Some((labels, (v.last_check.as_ref()?.duration_ms / 1000.0).into()))
        }),
    );
    e.family(
        "haproxy_server_check_code",
        Kind::Gauge,
        "layer5-7 code, if available of the last health check.",
        servers(s).filter_map(|(labels, v)| {
            Some((labels, u64::from(v.last_check.as_ref()?.code?).into()))
        }),
    );
}
