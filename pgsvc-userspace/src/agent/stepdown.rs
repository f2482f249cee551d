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
    health::{CheckFailure, Prober, TlsSettings},
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
    poll_patroni(target, tls, POLL, TIMEOUT, tx, |target, answer| {
        let why = match answer {
            Ok((status, body)) => verdict(status, &body),
            Err(e) => Some(format!("its REST API does not answer ({e})")),
        };
        if why.is_none() {
            debug!(
                cluster = target.cluster,
                leader = target.holder,
                "still running"
            );
        }
        why.map(|why| Stopping {
            target: target.clone(),
            why,
        })
    })
}

/// Asks `target`'s `GET /patroni` every `period` (each answer bounded by `timeout`) until `read`
/// makes a report of an answer or a failure; sends it on `tx` and ends.
///
/// # Errors
/// The prober cannot be built (an unreadable CA file).
pub fn poll_patroni<R: Send + 'static>(
    target: StepdownTarget,
    tls: &TlsSettings,
    period: Duration,
    timeout: Duration,
    tx: mpsc::UnboundedSender<R>,
    read: impl Fn(&StepdownTarget, Result<(u16, Vec<u8>), CheckFailure>) -> Option<R>
    + Send
    + Sync
    + 'static,
) -> Result<JoinHandle<()>, crate::health::ProbeError> {
    let prober = Prober::new(
        target.addr,
        target.port,
        "/patroni",
        target.tls.then_some(tls),
        timeout,
    )?;
    Ok(tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Some(report) = read(&target, prober.get().await) {
                let _ = tx.send(report);
                return;
            }
        }
    }))
}

/// How a watch of one holder's REST API is started: reports go to the sender.
pub type Spawn<R> = fn(
    StepdownTarget,
    &TlsSettings,
    mpsc::UnboundedSender<R>,
) -> Result<JoinHandle<()>, crate::health::ProbeError>;

/// Watches of key holders' REST APIs (step-downs, promotions), by the holder they watch; each
/// reports once on its channel.
pub struct Watches<R> {
    tls: TlsSettings,
    running: HashMap<StepdownTarget, JoinHandle<()>>,
    tx: mpsc::UnboundedSender<R>,
    spawn: Spawn<R>,
}

impl<R> Watches<R> {
    /// Watches started with `spawn`, whose reports go to `tx`, reading TLS members with `tls`.
    #[must_use]
    pub fn new(tls: TlsSettings, tx: mpsc::UnboundedSender<R>, spawn: Spawn<R>) -> Self {
        Self {
            tls,
            running: HashMap::new(),
            tx,
            spawn,
        }
    }

    /// Runs exactly the watches of `wanted`; returns those that could not start, with why.
    pub fn sync(&mut self, wanted: &[StepdownTarget]) -> Vec<(StepdownTarget, String)> {
        self.running.retain(|t, h| {
            let keep = wanted.contains(t) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        let mut failed = Vec::new();
        for t in wanted {
            if self.running.contains_key(t) {
                continue;
            }
            match (self.spawn)(t.clone(), &self.tls, self.tx.clone()) {
                Ok(h) => {
                    self.running.insert(t.clone(), h);
                }
                Err(e) => failed.push((
                    t.clone(),
                    format!("its REST API cannot be watched: {}", error_chain(&e)),
                )),
            }
        }
        failed
    }
}

impl<R> Drop for Watches<R> {
    fn drop(&mut self) {
        for h in self.running.values() {
            h.abort();
        }
    }
}

/// Runs the step-down and promotion watches the reconciler asks for; a step-down watch that cannot
/// start fences its holder at once, a promotion watch that cannot start leaves the decision to the
/// holder's check.
pub fn sync_all<D: Datapath, C: Checks>(
    agent: &mut Reconciler<D, C>,
    stepdowns: &mut Watches<Stopping>,
    promotions: &mut Watches<super::promotion::Report>,
) {
    for (t, why) in stepdowns.sync(&agent.stepdown_targets()) {
        agent.on_stepdown_stopping(&t.cluster, &t.holder, &why, Instant::now());
    }
    for (t, why) in promotions.sync(&agent.promotion_targets()) {
        agent.on_promoted(&t.cluster, &t.holder, Some(&why), Instant::now());
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
