//! [`HealthMonitor`]: one tokio task per distinct check, its pace (inter/fastinter/downinter, or the
//! burst interval during transitions) and the snapshots and events it publishes.

use super::*;

struct Checker {
    health: watch::Receiver<ServerHealth>,
    task: JoinHandle<()>,
    pace: Arc<Pace>,
}

/// How a checker may deviate from HAProxy's schedule to shorten an outage (see [`Burst`]).
#[derive(Default)]
struct Pace {
    /// The server belongs to a service that has no usable server: check a DOWN server at the burst
    /// interval instead of `downinter`.
    hurry: std::sync::atomic::AtomicBool,
    /// Wakes the checker for an immediate out-of-schedule check.
    poke: tokio::sync::Notify,
    /// Until when (ms on [`clock_ms`]) a peer's change keeps this check at the burst interval.
    flux_until_ms: std::sync::atomic::AtomicU64,
    /// The checks of the other servers of the services this server belongs to.
    peers: std::sync::Mutex<Vec<std::sync::Weak<Pace>>>,
}

/// How long a change of one server keeps its service's other servers at the burst interval: covers a
/// Patroni switchover (demote, then promote a few seconds later) without polling forever.
const FLUX_MS: u64 = 10_000;

/// Milliseconds since the first call: a monotonic clock shareable through an atomic.
fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Pace {
    /// A change under way here: the peers check at the burst interval for a while, starting now.
    fn stir_peers(&self) {
        let until = clock_ms().saturating_add(FLUX_MS);
        let peers = match self.peers.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for peer in peers.iter().filter_map(std::sync::Weak::upgrade) {
            peer.flux_until_ms
                .fetch_max(until, std::sync::atomic::Ordering::Relaxed);
            peer.poke.notify_one();
        }
    }
}

/// Faster sampling while something is changing. HAProxy checks at `fastinter` while a server's health
/// counter is between its settled values, and at `downinter` while it is DOWN. With a burst interval,
/// pgsvc checks every `interval` instead (1) in those transitional states, (2) while the server's
/// service has no usable server, and (3) once right away when another server of its service changed
/// state. rise and fall keep their meaning — as many consecutive results are needed — so flapping is
/// damped exactly as before, but a switchover or a failover is seen in a fraction of the time.
/// `None` keeps HAProxy's schedule to the letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    pub interval: Duration,
}

/// All running checks. Call [`HealthMonitor::sync`] with the services of the current plan (at start
/// and after every reload); read snapshots any time; consume [`HealthEvent`]s from the receiver
/// returned by [`HealthMonitor::new`].
pub struct HealthMonitor {
    tls: Arc<TlsSettings>,
    events: mpsc::UnboundedSender<HealthEvent>,
    checkers: HashMap<CheckKey, Checker>,
    burst: Option<Burst>,
}

impl HealthMonitor {
    /// `tls` applies to every server whose plan says `check_tls`.
    #[must_use]
    pub fn new(tls: TlsSettings) -> (Self, mpsc::UnboundedReceiver<HealthEvent>) {
        // Unbounded: transitions are rare, and a checker must never block on a slow agent; the
        // watch snapshots stay authoritative either way.
        let (events, rx) = mpsc::unbounded_channel();
        let monitor = Self {
            tls: Arc::new(tls),
            events,
            checkers: HashMap::new(),
            burst: None,
        };
        (monitor, rx)
    }

    /// Enables (or, with `None`, disables) burst checking for checks started from now on and for the
    /// running ones at their next sleep.
    pub fn set_burst(&mut self, burst: Option<Burst>) {
        self.burst = burst;
    }

    /// Marks a check as belonging to a service in outage (no usable server); see [`Burst`].
    pub fn hurry(&self, key: &CheckKey, on: bool) {
        if let Some(c) = self.checkers.get(key) {
            c.pace.hurry.store(on, std::sync::atomic::Ordering::Relaxed);
            if on {
                c.pace.poke.notify_one();
            }
        }
    }

    /// Runs a check now (out of schedule) when burst checking is on.
    pub fn poke(&self, key: &CheckKey) {
        if self.burst.is_some()
            && let Some(c) = self.checkers.get(key)
        {
            c.pace.poke.notify_one();
        }
    }

    /// Makes the running checks match `services`: starts the missing ones (first check at once),
    /// stops those no longer referenced, and leaves the rest running with their state. All probers
    /// are built before anything changes, so a bad setting leaves the monitor as it was. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    /// [`HealthError::Prober`] when a check cannot be set up (relative URI, unreadable CA file).
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a ServicePlan>,
    ) -> Result<(), HealthError> {
        let services: Vec<&ServicePlan> = services.into_iter().collect();
        let mut wanted: HashMap<CheckKey, Option<Prober>> = HashMap::new();
        for service in services.iter().copied() {
            for server in &service.servers {
                let key = CheckKey::for_server(service, server);
                if wanted.contains_key(&key) {
                    continue;
                }
                let prober = if self.checkers.contains_key(&key) {
                    None
                } else {
                    Some(self.build_prober(&key)?)
                };
                wanted.insert(key, prober);
            }
        }
        self.checkers.retain(|key, checker| {
            let keep = wanted.contains_key(key);
            if !keep {
                checker.task.abort();
            }
            keep
        });
        for (key, prober) in wanted {
            if let Some(prober) = prober {
                let checker = self.spawn(key.clone(), prober);
                self.checkers.insert(key, checker);
            }
        }
        self.link_peers(&services);
        Ok(())
    }

    /// Tells every check which other checks serve the same services (see [`Burst`]).
    fn link_peers(&self, services: &[&ServicePlan]) {
        let mut peers: HashMap<CheckKey, Vec<std::sync::Weak<Pace>>> = HashMap::new();
        for service in services {
            let keys: Vec<CheckKey> = service
                .servers
                .iter()
                .map(|srv| CheckKey::for_server(service, srv))
                .collect();
            for key in &keys {
                let list = peers.entry(key.clone()).or_default();
                for other in keys.iter().filter(|k| *k != key) {
                    if let Some(c) = self.checkers.get(other) {
                        list.push(Arc::downgrade(&c.pace));
                    }
                }
            }
        }
        for (key, checker) in &self.checkers {
            let list = peers.remove(key).unwrap_or_default();
            match checker.pace.peers.lock() {
                Ok(mut p) => *p = list,
                Err(poisoned) => *poisoned.into_inner() = list,
            }
        }
    }

    fn build_prober(&self, key: &CheckKey) -> Result<Prober, HealthError> {
        let t = &key.target;
        let tls = t.tls.then_some(self.tls.as_ref());
        Prober::new(t.addr, t.port, &t.uri, tls, key.timeout).map_err(|source| {
            HealthError::Prober {
                addr: t.addr,
                port: t.port,
                uri: t.uri.clone(),
                source,
            }
        })
    }

    fn spawn(&self, key: CheckKey, prober: Prober) -> Checker {
        let (tx, rx) = watch::channel(ServerHealth::unknown());
        let pace = Arc::new(Pace::default());
        let task = tokio::spawn(run_checker(
            key,
            prober,
            tx,
            self.events.clone(),
            pace.clone(),
            self.burst,
        ));
        Checker {
            health: rx,
            task,
            pace,
        }
    }

    /// The current snapshot of a check; `None` when no such check runs.
    #[must_use]
    pub fn health(&self, key: &CheckKey) -> Option<ServerHealth> {
        self.checkers.get(key).map(|c| c.health.borrow().clone())
    }

    /// The snapshot of `server`'s check in `service`; state `Unknown` when that check is not running.
    #[must_use]
    pub fn server_health(&self, service: &ServicePlan, server: &ServerPlan) -> ServerHealth {
        self.health(&CheckKey::for_server(service, server))
            .unwrap_or_else(ServerHealth::unknown)
    }

    /// A receiver that wakes on every new snapshot of a check.
    #[must_use]
    pub fn subscribe(&self, key: &CheckKey) -> Option<watch::Receiver<ServerHealth>> {
        self.checkers.get(key).map(|c| c.health.clone())
    }

    /// Every running check and its snapshot.
    #[must_use]
    pub fn snapshots(&self) -> Vec<(CheckKey, ServerHealth)> {
        self.checkers
            .iter()
            .map(|(k, c)| (k.clone(), c.health.borrow().clone()))
            .collect()
    }

    /// Number of running check tasks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.checkers.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.checkers.is_empty()
    }

    /// Stops every check and waits until the tasks are gone (an in-flight request is dropped).
    pub async fn shutdown(mut self) {
        let tasks: Vec<JoinHandle<()>> = self.checkers.drain().map(|(_, c)| c.task).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // A cancelled task yields a JoinError by design; nothing to report.
            let _ = task.await;
        }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for checker in self.checkers.values() {
            checker.task.abort();
        }
    }
}

/// The loop of one check task: probe, feed the counter, publish, sleep the counter's interval.
/// The interval runs from the end of a check, so a slow check never overlaps the next.
async fn run_checker(
    key: CheckKey,
    prober: Prober,
    health: watch::Sender<ServerHealth>,
    events: mpsc::UnboundedSender<HealthEvent>,
    pace: Arc<Pace>,
    burst: Option<Burst>,
) {
    let mut counter = HealthCounter::new(key.params);
    let mut last_reason: Option<String> = None;
    loop {
        let outcome = prober.probe().await;
        let now = Instant::now();
        let was_settled = is_settled(&counter);
        let transition = counter.record(outcome.passed(), now);
        // A settled server starts to change (or the first result came in): its peers may be changing
        // too — in a switchover the new primary rises while the old one falls.
        if burst.is_some() && was_settled && (!is_settled(&counter) || transition.is_some()) {
            pace.stir_peers();
        }
        let snapshot = ServerHealth::from_counter(&counter, &outcome);
        // Like HAProxy's "Health check for server … failed" lines: only when the result changes.
        let reason = outcome.result.as_ref().err().map(ToString::to_string);
        if reason != last_reason && transition.is_none() {
            tracing::debug!(
                url = prober.url(),
                status = %snapshot.status,
                reason = reason.as_deref().unwrap_or("passed"),
                duration_ms = outcome.duration.as_millis(),
                "health check result changed"
            );
        }
        last_reason = reason;
        health.send_replace(snapshot.clone());
        if let Some(transition) = transition {
            // The receiver is gone only while the agent shuts down; the task is aborted right after.
            let _ = events.send(HealthEvent {
                key: key.clone(),
                transition,
                outcome,
                health: snapshot,
            });
        }
        let wait = next_interval(&counter, &pace, burst).max(MIN_INTERVAL);
        if burst.is_some() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = pace.poke.notified() => {}
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// At full health, or DOWN with health 0 (where HAProxy uses `inter` and `downinter`).
fn is_settled(counter: &HealthCounter) -> bool {
    counter.state() != HealthState::Unknown
        && (counter.health() == counter.params().max_health()
            || (counter.state() == HealthState::Down && counter.health() == 0))
}

/// HAProxy's interval for the counter's state, shortened by a burst where [`Burst`] says so.
fn next_interval(counter: &HealthCounter, pace: &Pace, burst: Option<Burst>) -> Duration {
    let haproxy = counter.interval();
    let Some(burst) = burst else { return haproxy };
    let settled = is_settled(counter);
    let not_up = counter.state() != HealthState::Up;
    let in_outage = pace.hurry.load(std::sync::atomic::Ordering::Relaxed) && not_up;
    let in_flux = clock_ms()
        < pace
            .flux_until_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        && not_up;
    if !settled || in_outage || in_flux {
        haproxy.min(burst.interval)
    } else {
        haproxy
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod burst_tests;
