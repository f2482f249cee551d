//! Watching a leader that Patroni asks to step down (a switchover or failover under way) until its
//! PostgreSQL stops taking writes.
//!
//! Patroni's graceful demotion runs a CHECKPOINT first — the node still takes writes, for as long as
//! the checkpoint lasts (hundreds of milliseconds on a busy primary) — then reports its PostgreSQL
//! `stopping` and shuts it down, and only then releases the leader key. `GET /patroni` on the
//! holder's REST API says which: `"state": "running"` through the checkpoint, anything else from the
//! shutdown on. The watch polls it every [`POLL`] and reports the first answer that is not
//! `running`, or the first failure (refused, timed out, not 200, not JSON): every doubt fences.
//! Without this watch the holder would be fenced on the request itself, and writes that its
//! PostgreSQL would still have taken during the checkpoint would be refused.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::debug;

use super::{checks::Checks, fence::StepdownTarget, lifecycle::error_chain, reconcile::Reconciler};
use crate::{
    datapath::Datapath,
    health::{Prober, TlsSettings},
};

/// How often the holder's state is asked for.
pub const POLL: Duration = Duration::from_millis(50);
/// Bound on one answer: a slower one counts as a failure (the holder is fenced).
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// The holder `target` stops taking writes, for `why`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopping {
    pub target: StepdownTarget,
    pub why: String,
}

/// What one answer of `GET /patroni` means for a stepping-down holder: `None` while its PostgreSQL
/// runs, else why it is considered stopping.
#[must_use]
pub fn verdict(status: u16, body: &[u8]) -> Option<String> {
    if status != 200 {
        return Some(format!("its REST API answers {status}"));
    }
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Some("its REST API answers no JSON".to_owned()),
    };
    match v.get("state").and_then(serde_json::Value::as_str) {
        Some("running") => None,
        Some(state) => Some(format!("Patroni reports its PostgreSQL {state}")),
        None => Some("its REST API reports no state".to_owned()),
    }
}

/// Starts watching `target`; the task ends after reporting once on `tx` (or when aborted).
///
/// # Errors
/// The prober cannot be built (an unreadable CA file): the caller fences at once.
pub fn spawn(
    target: StepdownTarget,
    tls: &TlsSettings,
    tx: mpsc::UnboundedSender<Stopping>,
) -> Result<JoinHandle<()>, crate::health::ProbeError> {
    let prober = Prober::new(
        target.addr,
        target.port,
        "/patroni",
        target.tls.then_some(tls),
        TIMEOUT,
    )?;
    Ok(tokio::spawn(async move {
        let mut every = tokio::time::interval(POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let why = match prober.get().await {
                Ok((status, body)) => verdict(status, &body),
                Err(e) => Some(format!("its REST API does not answer ({e})")),
            };
            if let Some(why) = why {
                let _ = tx.send(Stopping { target, why });
                return;
            }
            debug!(
                cluster = target.cluster,
                leader = target.holder,
                "still running"
            );
        }
    }))
}

/// The step-down watches running, by the holder they watch.
pub struct Watches {
    tls: TlsSettings,
    running: HashMap<StepdownTarget, JoinHandle<()>>,
    tx: mpsc::UnboundedSender<Stopping>,
}

impl Watches {
    /// Watches whose reports go to `tx`, reading TLS members with `tls`.
    #[must_use]
    pub fn new(tls: TlsSettings, tx: mpsc::UnboundedSender<Stopping>) -> Self {
        Self {
            tls,
            running: HashMap::new(),
            tx,
        }
    }

    /// Runs exactly the watches the reconciler asks for; a watch that cannot start fences its
    /// holder at once.
    pub fn sync<D: Datapath, C: Checks>(&mut self, agent: &mut Reconciler<D, C>) {
        let wanted = agent.stepdown_targets();
        self.running.retain(|t, h| {
            let keep = wanted.contains(t) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for t in wanted {
            if self.running.contains_key(&t) {
                continue;
            }
            match spawn(t.clone(), &self.tls, self.tx.clone()) {
                Ok(h) => {
                    self.running.insert(t, h);
                }
                Err(e) => {
                    let why = format!("its REST API cannot be watched: {}", error_chain(&e));
                    agent.on_stepdown_stopping(&t.cluster, &t.holder, &why, Instant::now());
                }
            }
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for h in self.running.values() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_postgresql_keeps_the_holder_in() {
        assert_eq!(
            verdict(200, br#"{"state": "running", "role": "primary"}"#),
            None
        );
        assert_eq!(
            verdict(200, br#"{"state": "stopping", "role": "primary"}"#).as_deref(),
            Some("Patroni reports its PostgreSQL stopping")
        );
        assert!(verdict(503, br#"{"state": "running"}"#).is_some());
        assert!(verdict(200, b"<html>").is_some());
        assert!(verdict(200, br#"{"role": "primary"}"#).is_some());
        assert!(verdict(200, br#"{"state": 1}"#).is_some());
    }
}
