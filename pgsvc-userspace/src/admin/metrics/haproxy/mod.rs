//! The `haproxy_*` families: every name Pigsty's dashboards and rules query, with HAProxy 2.6's
//! type, labels and meaning. A figure that has no meaning for an XDP datapath (queues, HTTP,
//! pipes, memory pools, peers, connection reuse) carries the value HAProxy itself reports when
//! the feature is unused; docs/metrics.md lists the source of each one.

mod process;
mod proxy;
mod server;

pub(in crate::admin::metrics) use process::process;
pub(in crate::admin::metrics) use proxy::{backend, frontend};
pub(in crate::admin::metrics) use server::server;
#[cfg(test)]
pub use server::server_state;

use super::Num;
use crate::status::{ServerStatus, ServiceStatus, Status};

/// HAProxy's server states, as its exporter's `haproxy_server_status` state-set lists them.
pub const SERVER_STATES: [&str; 5] = ["DOWN", "UP", "MAINT", "DRAIN", "NOLB"];
/// States of `haproxy_backend_status` and `haproxy_frontend_status`.
pub const BACKEND_STATES: [&str; 2] = ["DOWN", "UP"];
/// States of `haproxy_server_check_status` (HAProxy's check result codes).
pub const CHECK_STATES: [&str; 16] = [
    "HANA", "SOCKERR", "L4OK", "L4TOUT", "L4CON", "L6OK", "L6TOUT", "L6RSP", "L7TOUT", "L7RSP",
    "L7OK", "L7OKC", "L7STS", "PROCERR", "PROCTOUT", "PROCOK",
];

pub(super) const ZERO: Num = Num::Int(0);

pub(super) type Field = fn(&Status, &ServiceStatus) -> Num;
pub(super) type SrvField = fn(&Status, &ServiceStatus, &ServerStatus) -> Num;

/// HAProxy's default backend limit (`fullconn`): a tenth of the frontend's maxconn, rounded up.
pub fn backend_limit(maxconn: u32) -> u32 {
    maxconn.div_ceil(10)
}
