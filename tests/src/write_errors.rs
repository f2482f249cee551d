//! Why writer-probe attempts failed, counted by kind, and writes that landed where they must not:
//! what the demo and `bench-e2e` report for a switchover or a killed primary, per target.
//!
//! The kinds that matter for issue 11: `login_failing` — pgbouncer's "server login has been failing,
//! try again later", which only a pgbouncer whose postgres is shutting down (the demoting primary)
//! answers, i.e. a new connection handed to the old primary after its demotion began; and the
//! non-leader writes — attempts refused as read-only (the connection reached a replica), writes
//! acknowledged by a node in recovery, and writes acknowledged by another node after the final
//! writer's first one (two writers at once).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::sandbox::Attempt;

/// The kind of one failed attempt, from its error text (psycopg2's message, or the probe's timeout).
#[must_use]
pub fn kind_of(err: &str) -> &'static str {
    let e = err.to_ascii_lowercase();
    let has = |w: &str| e.contains(w);
    if has("server login has been failing") {
        "login_failing"
    } else if has("read-only transaction") || has("read only transaction") {
        "read_only"
    } else if has("shutting down") || has("terminating connection") || has("starting up") {
        "shutting_down"
    } else if has("no answer within") || has("timeout") || has("timed out") {
        "timeout"
    } else if has("connection refused") {
        "refused"
    } else if has("closed the connection") || has("connection reset") || has("server conn crashed")
    {
        "closed"
    } else if has("no more connections") || has("too many") {
        "no_capacity"
    } else {
        "other"
    }
}

/// The attempts of one probe in a span, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteTally {
    pub attempts: usize,
    pub failed: usize,
    /// Failed attempts per [`kind_of`].
    pub by_kind: BTreeMap<&'static str, usize>,
    /// Writes acknowledged by a node in recovery.
    pub acked_in_recovery: usize,
    /// Writes acknowledged by another node after the span's last writer committed its first write.
    pub acked_off_leader: usize,
}

impl WriteTally {
    /// Counts the attempts that started in `[from, to)`.
    #[must_use]
    pub fn of(attempts: &[Attempt], from: f64, to: f64) -> Self {
        let span: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.t0 >= from && a.t0 < to)
            .collect();
        let mut t = Self {
            attempts: span.len(),
            ..Self::default()
        };
        for a in span.iter().filter(|a| !a.ok) {
            t.failed += 1;
            *t.by_kind
                .entry(kind_of(a.err.as_deref().unwrap_or("")))
                .or_default() += 1;
        }
        let acked: Vec<&&Attempt> = span.iter().filter(|a| a.ok).collect();
        t.acked_in_recovery = acked.iter().filter(|a| a.in_recovery == Some(true)).count();
        if let Some(last) = acked.last().and_then(|a| a.addr.as_deref()) {
            let since = acked
                .iter()
                .find(|a| a.addr.as_deref() == Some(last))
                .map_or(f64::MAX, |a| a.t1);
            t.acked_off_leader = acked
                .iter()
                .filter(|a| a.t0 > since && a.addr.as_deref() != Some(last))
                .count();
        }
        t
    }

    /// pgbouncer's "server login has been failing" answers: new connections handed to the demoting
    /// primary.
    #[must_use]
    pub fn login_failing(&self) -> usize {
        self.by_kind.get("login_failing").copied().unwrap_or(0)
    }

    /// Writes on a non-leader: refused as read-only, acknowledged in recovery, or acknowledged by a
    /// second writer.
    #[must_use]
    pub fn non_leader(&self) -> usize {
        self.by_kind.get("read_only").copied().unwrap_or(0)
            + self.acked_in_recovery
            + self.acked_off_leader
    }

    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "attempts": self.attempts,
            "failed": self.failed,
            "by_kind": self.by_kind,
            "login_failing": self.login_failing(),
            "non_leader_writes": self.non_leader(),
            "read_only_refusals": self.by_kind.get("read_only").copied().unwrap_or(0),
            "acked_in_recovery": self.acked_in_recovery,
            "acked_off_leader": self.acked_off_leader,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(t0: f64, ok: bool, addr: &str, in_recovery: bool, err: &str) -> Attempt {
        Attempt {
            seq: 0,
            t0,
            t1: t0 + 0.01,
            ok,
            addr: ok.then(|| addr.to_owned()),
            in_recovery: ok.then_some(in_recovery),
            err: (!ok).then(|| err.to_owned()),
        }
    }

    #[test]
    fn kinds_from_psycopg2_messages() {
        for (err, kind) in [
            (
                "ERROR: server login has been failing, try again later (server_login_retry)",
                "login_failing",
            ),
            (
                "cannot execute INSERT in a read-only transaction",
                "read_only",
            ),
            (
                "FATAL: the database system is shutting down",
                "shutting_down",
            ),
            ("no answer within the attempt timeout", "timeout"),
            (
                "connection to server at \"198.18.0.3\", port 5433 failed: Connection refused",
                "refused",
            ),
            ("server closed the connection unexpectedly", "closed"),
            ("something else", "other"),
        ] {
            assert_eq!(kind_of(err), kind, "{err}");
        }
    }

    #[test]
    fn a_switchover_span_is_counted() {
        let login = "server login has been failing, try again later";
        let recs = [
            att(0.0, true, "n1", false, ""),
            att(1.0, true, "n1", false, ""),
            att(1.1, false, "", false, login),
            att(1.2, false, "", false, login),
            att(
                1.3,
                false,
                "",
                false,
                "cannot execute INSERT in a read-only transaction",
            ),
            att(
                1.4,
                false,
                "",
                false,
                "no answer within the attempt timeout",
            ),
            att(2.0, true, "n2", false, ""),
            // the old primary acknowledges after the new one did: two writers
            att(2.1, true, "n1", false, ""),
            att(2.2, true, "n2", true, ""),
            att(9.0, false, "", false, login),
        ];
        let t = WriteTally::of(&recs, 0.5, 5.0);
        assert_eq!(t.attempts, 8);
        assert_eq!(t.failed, 4);
        assert_eq!(t.login_failing(), 2);
        assert_eq!(t.by_kind.get("timeout"), Some(&1));
        assert_eq!(t.acked_in_recovery, 1);
        assert_eq!(t.acked_off_leader, 1);
        assert_eq!(t.non_leader(), 3);
        let j = t.to_json();
        assert_eq!(j["login_failing"], 2);
        assert_eq!(j["non_leader_writes"], 3);
        // A clean span.
        let clean = WriteTally::of(&recs, 0.0, 1.05);
        assert_eq!((clean.failed, clean.non_leader()), (0, 0));
    }
}
