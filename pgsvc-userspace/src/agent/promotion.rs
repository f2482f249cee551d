//! Waiting for a new leader-key holder to finish its promotion before write services send it
//! connections.
//!
//! Patroni takes the leader key first and promotes its PostgreSQL after (`pg_ctl promote`, then the
//! end of recovery). From the moment it holds the key its REST API answers 200 on `/primary` — the
//! endpoint HAProxy's and pgsvc's write checks ask — although its PostgreSQL is still read-only for
//! a few tens of milliseconds: a write routed there in that gap is refused ("cannot execute … in a
//! read-only transaction"). `GET /patroni` says which: its `role` comes from
//! `pg_is_in_recovery()`, `primary` only once the promotion is complete. So a holder that was not
//! already UP when the key arrived is admitted only once `GET /patroni` reports `role: primary`
//! and `state: running` (polled every [`POLL`]); until then a new connection gets a RST (no server)
//! and the client's retry lands on a writable primary.
//!
//! A standby cluster's leader (`role: standby_leader`, in recovery by design) is admitted as it is.
//! An answer that cannot tell (not 200, not JSON, no role) ends the wait with a warning: the
//! write check alone decides, as without this watch. An API that does not answer keeps the wait:
//! the write check asks the same API and fails too.

use std::time::Instant;

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{checks::Checks, fence::StepdownTarget, reconcile::Reconciler};
use crate::{datapath::Datapath, health::TlsSettings};

/// How often a promoting holder's role is asked for.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// Bound on one answer (a slower one is asked again).
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// What one answer of `GET /patroni` says of a new holder's promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its PostgreSQL is out of recovery and running: writable.
    Promoted,
    /// Still in recovery (or not running yet): ask again.
    Promoting,
    /// The answer cannot tell (why): the write check alone decides.
    Unreadable(String),
}

/// Reads one answer of `GET /patroni`.
#[must_use]
pub fn verdict(status: u16, body: &[u8]) -> Verdict {
    if status != 200 {
        return Verdict::Unreadable(format!("its REST API answers {status} on GET /patroni"));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Verdict::Unreadable("its REST API answers no JSON on GET /patroni".to_owned());
    };
    let role = v.get("role").and_then(serde_json::Value::as_str);
    let state = v.get("state").and_then(serde_json::Value::as_str);
    match (role, state) {
        (None, _) => Verdict::Unreadable("GET /patroni reports no role".to_owned()),
        // A standby cluster's leader stays in recovery by design: its role says it leads.
        (Some("primary" | "master" | "standby_leader"), Some("running")) => Verdict::Promoted,
        _ => Verdict::Promoting,
    }
}

/// A report of a promotion watch: `None` promoted, `Some(why)` unreadable.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: StepdownTarget,
    pub unreadable: Option<String>,
}

/// Starts watching `target`'s promotion; the task ends after reporting once (or when aborted).
/// An answer that says nothing (still promoting, or no answer) is asked again.
///
/// # Errors
/// The prober cannot be built (an unreadable CA file).
pub fn spawn(
    target: StepdownTarget,
    tls: &TlsSettings,
    tx: mpsc::UnboundedSender<Report>,
) -> Result<JoinHandle<()>, crate::health::ProbeError> {
    super::stepdown::poll_patroni(target, tls, POLL, TIMEOUT, tx, |target, answer| {
        let unreadable = match answer.map(|(s, b)| verdict(s, &b)) {
            Ok(Verdict::Promoted) => None,
            Ok(Verdict::Unreadable(why)) => Some(why),
            Ok(Verdict::Promoting) | Err(_) => return None,
        };
        Some(Report {
            target: target.clone(),
            unreadable,
        })
    })
}

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// Whether a new holder waits for `GET /patroni` to report its promotion done (the agent then
    /// runs the watches [`Self::promotion_targets`] lists).
    pub fn set_watch_promotions(&mut self, on: bool) {
        self.fence.watch_promotions = on;
    }

    /// The holders whose promotion is awaited.
    #[must_use]
    pub fn promotion_targets(&self) -> Vec<StepdownTarget> {
        self.fence_targets(|t| t.promoting && t.leaving.is_none())
    }

    /// `holder` of `cluster` finished its promotion (`unreadable`: its API cannot tell, the write
    /// check alone decides): admitted on its next passing check.
    pub fn on_promoted(
        &mut self,
        cluster: &str,
        holder: &str,
        unreadable: Option<&str>,
        now: Instant,
    ) {
        let Some(t) = self
            .fence
            .clusters
            .get_mut(cluster)
            .and_then(|c| c.tenure.as_mut())
            .filter(|t| t.promoting && t.holder.as_deref() == Some(holder))
        else {
            return;
        };
        t.promoting = false;
        let waited_ms = now.saturating_duration_since(t.since).as_millis();
        match unreadable {
            None => info!(
                cluster,
                leader = holder,
                waited_ms,
                "the new leader's PostgreSQL is promoted (out of recovery): write services take it"
            ),
            Some(why) => warn!(
                cluster,
                leader = holder,
                reason = why,
                "the new leader's promotion cannot be read: its write check alone decides"
            ),
        }
        self.refence(cluster, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_primary_out_of_recovery_is_promoted() {
        assert_eq!(
            verdict(200, br#"{"state": "running", "role": "primary"}"#),
            Verdict::Promoted
        );
        assert_eq!(
            verdict(200, br#"{"state": "running", "role": "master"}"#),
            Verdict::Promoted
        );
        assert_eq!(
            verdict(200, br#"{"state": "running", "role": "standby_leader"}"#),
            Verdict::Promoted
        );
        assert_eq!(
            verdict(200, br#"{"state": "running", "role": "replica"}"#),
            Verdict::Promoting
        );
        assert_eq!(
            verdict(200, br#"{"state": "starting", "role": "primary"}"#),
            Verdict::Promoting
        );
        assert!(matches!(
            verdict(503, br#"{"state": "running", "role": "primary"}"#),
            Verdict::Unreadable(_)
        ));
        assert!(matches!(verdict(200, b"<html>"), Verdict::Unreadable(_)));
        assert!(matches!(
            verdict(200, br#"{"state": "running"}"#),
            Verdict::Unreadable(_)
        ));
    }
}
