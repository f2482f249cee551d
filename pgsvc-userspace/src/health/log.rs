//! The transition log line in the shape operators grep for in HAProxy logs:
//! `Server pg-test-primary/pg-test-2 is DOWN, reason: Layer7 wrong status, code: 503, info: "Service
//! Unavailable", check duration: 3ms. 0 active and 1 backup servers left.`
//! The old → new states and the short reason also go out as structured `tracing` fields.

use std::fmt::Write as _;

use super::counter::{HealthState, Transition};
use super::probe::CheckOutcome;
use crate::balance::ServerCounts;

/// Formats one transition of `server` in `service`. `counts` are the usable servers of the service
/// after the change (from [`crate::balance::balance_service`]).
#[must_use]
pub fn format_transition(
    service: &str,
    server: &str,
    transition: &Transition,
    outcome: &CheckOutcome,
    counts: ServerCounts,
) -> String {
    let status = outcome.haproxy_status();
    let mut line = format!("Server {service}/{server} is {}", transition.to);
    if transition.is_startup() {
        // HAProxy has no such case (it starts servers UP); say that the first check decided.
        line.push_str(" at start-up");
    }
    let _ = write!(line, ", reason: {}", status.description);
    if let Some(code) = status.code {
        let _ = write!(line, ", code: {code}");
    }
    if let Some(info) = &status.info {
        let _ = write!(line, ", info: \"{info}\"");
    }
    let _ = write!(
        line,
        ", check duration: {}ms.",
        outcome.duration.as_millis()
    );
    let verb = if transition.to == HealthState::Up {
        "online"
    } else {
        "left"
    };
    let _ = write!(
        line,
        " {} active and {} backup servers {verb}.",
        counts.active, counts.backup
    );
    line
}

/// Logs a transition: DOWN at warn, UP at info; plus HAProxy's "has no server available!" at error
/// level when the service has nothing left.
pub fn log_transition(
    service: &str,
    server: &str,
    transition: &Transition,
    outcome: &CheckOutcome,
    counts: ServerCounts,
) {
    let line = format_transition(service, server, transition, outcome, counts);
    let reason = match &outcome.result {
        Ok(()) => "passed".to_owned(),
        Err(failure) => failure.to_string(),
    };
    let from = transition.from.to_string();
    let to = transition.to.to_string();
    if transition.to == HealthState::Up {
        tracing::info!(service, server, from, to, reason, "{line}");
    } else {
        tracing::warn!(service, server, from, to, reason, "{line}");
        if counts.active == 0 && counts.backup == 0 {
            tracing::error!(service, "backend {service} has no server available!");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::probe::CheckFailure;
    use std::time::{Duration, Instant};

    fn transition(from: HealthState, to: HealthState) -> Transition {
        Transition {
            from,
            to,
            at: Instant::now(),
        }
    }

    #[test]
    fn down_line_like_haproxy() {
        let out = CheckOutcome {
            duration: Duration::from_millis(3),
            result: Err(CheckFailure::L7Status { code: 503 }),
        };
        let line = format_transition(
            "pg-test-primary",
            "pg-test-2",
            &transition(HealthState::Up, HealthState::Down),
            &out,
            ServerCounts {
                active: 0,
                backup: 1,
            },
        );
        assert_eq!(
            line,
            "Server pg-test-primary/pg-test-2 is DOWN, reason: Layer7 wrong status, code: 503, \
             info: \"Service Unavailable\", check duration: 3ms. 0 active and 1 backup servers left."
        );
    }

    #[test]
    fn up_line_like_haproxy() {
        let out = CheckOutcome {
            duration: Duration::from_millis(1),
            result: Ok(()),
        };
        let line = format_transition(
            "pg-test-replica",
            "pg-test-3",
            &transition(HealthState::Down, HealthState::Up),
            &out,
            ServerCounts {
                active: 2,
                backup: 1,
            },
        );
        assert_eq!(
            line,
            "Server pg-test-replica/pg-test-3 is UP, reason: Layer7 check passed, code: 200, \
             check duration: 1ms. 2 active and 1 backup servers online."
        );
    }

    #[test]
    fn timeout_and_refused_lines() {
        let t = transition(HealthState::Up, HealthState::Down);
        let counts = ServerCounts {
            active: 1,
            backup: 0,
        };
        let timeout = CheckOutcome {
            duration: Duration::from_millis(2001),
            result: Err(CheckFailure::L4Timeout),
        };
        assert_eq!(
            format_transition("svc", "srv", &t, &timeout, counts),
            "Server svc/srv is DOWN, reason: Layer4 timeout, check duration: 2001ms. \
             1 active and 0 backup servers left."
        );
        let refused = CheckOutcome {
            duration: Duration::ZERO,
            result: Err(CheckFailure::L4Refused),
        };
        assert_eq!(
            format_transition("svc", "srv", &t, &refused, counts),
            "Server svc/srv is DOWN, reason: Layer4 connection problem, info: \"Connection refused\", \
             check duration: 0ms. 1 active and 0 backup servers left."
        );
    }

    #[test]
    fn startup_is_marked() {
        let out = CheckOutcome {
            duration: Duration::from_millis(2),
            result: Err(CheckFailure::L7Status { code: 503 }),
        };
        let line = format_transition(
            "svc",
            "srv",
            &transition(HealthState::Unknown, HealthState::Down),
            &out,
            ServerCounts {
                active: 1,
                backup: 0,
            },
        );
        assert!(
            line.starts_with("Server svc/srv is DOWN at start-up, reason: Layer7 wrong status"),
            "{line}"
        );
    }
}
