//! `pgsvc_sessions_reset_total`: sessions the agent reset at once (see `crate::agent::resets`).

use super::{Exposition, Kind, Num};
use crate::status::Status;

pub(super) fn resets(e: &mut Exposition, s: &Status) {
    e.family(
        "pgsvc_sessions_reset_total",
        Kind::Counter,
        "Sessions reset at once, not at their next packet: reason down (marked down with shutdown-sessions), fenced (the leader key left the member), address_left (the address the client dialled left the node).",
        s.sessions_reset.iter().map(|r| {
            (
                vec![
                    ("proxy", r.service.as_str()),
                    ("server", r.server.as_str()),
                    ("reason", r.reason.as_str()),
                ],
                Num::Int(r.sessions),
            )
        }),
    );
}

#[cfg(test)]
mod tests {
    use crate::{admin::fixture::sample_status, status::SessionsReset};

    #[test]
    fn resets_are_counted_per_server_and_reason_and_absent_before_any() {
        let mut s = sample_status();
        assert!(!super::super::render_metrics(&s).contains("pgsvc_sessions_reset_total"));
        s.sessions_reset = vec![
            SessionsReset {
                service: "pg-test-primary".into(),
                server: "pg-test-1".into(),
                reason: "fenced".into(),
                sessions: 3,
            },
            SessionsReset {
                service: "pg-test-primary".into(),
                server: "pg-test-1".into(),
                reason: "address_left".into(),
                sessions: 1,
            },
        ];
        let text = super::super::render_metrics(&s);
        assert!(text.contains("# TYPE pgsvc_sessions_reset_total counter"));
        assert!(text.contains(
            "pgsvc_sessions_reset_total{proxy=\"pg-test-primary\",server=\"pg-test-1\",reason=\"fenced\"} 3"
        ));
        assert!(text.contains(
            "pgsvc_sessions_reset_total{proxy=\"pg-test-primary\",server=\"pg-test-1\",reason=\"address_left\"} 1"
        ));
    }
}
