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
mod tests {
    use super::*;
    use crate::plan::model::{Balance, BindAddr, ServerOptions};
    use std::sync::atomic::{AtomicU16, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback Patroni whose answer status the test changes at run time.
    async fn patroni(status: Arc<AtomicU16>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let status = status.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = sock.read(&mut buf).await;
                    let code = status.load(Ordering::SeqCst);
                    let line = format!("HTTP/1.0 {code} X\r\n\r\n");
                    let _ = sock.write_all(line.as_bytes()).await;
                });
            }
        });
        port
    }

    fn service(name: &str, check: &str, ports: &[u16]) -> ServicePlan {
        let ms = Duration::from_millis;
        ServicePlan {
            name: name.to_owned(),
            short_name: name.to_owned(),
            cluster: "pg-test".to_owned(),
            ip: BindAddr::Any,
            port: 5433,
            dest: "default".to_owned(),
            check: check.to_owned(),
            maxconn: 5000,
            balance: Balance::RoundRobin,
            options: ServerOptions {
                inter: ms(40),
                fastinter: ms(20),
                downinter: ms(40),
                rise: 2,
                fall: 2,
                check_timeout: ms(500),
                ..ServerOptions::default()
            },
            options_line: String::new(),
            servers: ports
                .iter()
                .enumerate()
                .map(|(i, port)| ServerPlan {
                    name: format!("pg-test-{}", i + 1),
                    addr: Ipv4Addr::LOCALHOST,
                    port: 6432,
                    check_port: *port,
                    check_tls: false,
                    weight: 100,
                    backup: false,
                })
                .collect(),
            allbackups: false,
        }
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5s")
            .expect("channel open")
    }

    #[tokio::test]
    async fn checker_reports_startup_down_and_up() {
        let status = Arc::new(AtomicU16::new(200));
        let port = patroni(status.clone()).await;
        let svc = service("pg-test-primary", "/primary", &[port]);
        let (mut monitor, mut rx) = HealthMonitor::new(TlsSettings::default());
        monitor.sync([&svc]).expect("sync");
        assert_eq!(monitor.len(), 1);

        let ev = next_event(&mut rx).await;
        assert!(ev.transition.is_startup());
        assert_eq!(ev.transition.to, HealthState::Up);
        assert!(ev.outcome.passed());

        status.store(503, Ordering::SeqCst);
        let ev = next_event(&mut rx).await;
        assert_eq!(
            (ev.transition.from, ev.transition.to),
            (HealthState::Up, HealthState::Down)
        );
        assert_eq!(ev.outcome.result, Err(CheckFailure::L7Status { code: 503 }));
        assert_eq!(ev.health.up_down_total, 1);
        // fall 2: two failures counted from full health.
        assert_eq!(ev.health.failures_total, 2);
        let snap = monitor.server_health(&svc, &svc.servers[0]);
        assert_eq!(snap.state, HealthState::Down);
        assert_eq!(
            snap.last_failure(),
            Some(&CheckFailure::L7Status { code: 503 })
        );
        assert_eq!(
            snap.status_for_balance(),
            crate::balance::ServerStatus::Down
        );

        status.store(200, Ordering::SeqCst);
        let ev = next_event(&mut rx).await;
        assert_eq!(
            (ev.transition.from, ev.transition.to),
            (HealthState::Down, HealthState::Up)
        );
        assert!(!ev.health.up_at_startup);
        assert!(matches!(
            ev.health.status_for_balance(),
            crate::balance::ServerStatus::Up {
                at_startup: false,
                ..
            }
        ));
        monitor.shutdown().await;
    }

    #[tokio::test]
    async fn services_with_the_same_check_share_one_checker() {
        let status = Arc::new(AtomicU16::new(200));
        let port = patroni(status.clone()).await;
        let primary = service("pg-test-primary", "/primary", &[port]);
        let default = service("pg-test-default", "/primary", &[port]);
        let replica = service("pg-test-replica", "/read-only", &[port]);
        let (mut monitor, mut rx) = HealthMonitor::new(TlsSettings::default());
        monitor.sync([&primary, &default, &replica]).expect("sync");
        assert_eq!(monitor.len(), 2, "/primary shared, /read-only separate");
        let users = servers_checked_by(
            [&primary, &default, &replica],
            &CheckKey::for_server(&primary, &primary.servers[0]),
        );
        let names: Vec<&str> = users.iter().map(|(svc, _)| svc.name.as_str()).collect();
        assert_eq!(names, ["pg-test-primary", "pg-test-default"]);
        let mut uris = vec![
            next_event(&mut rx).await.key.target.uri,
            next_event(&mut rx).await.key.target.uri,
        ];
        uris.sort();
        assert_eq!(uris, ["/primary", "/read-only"]);

        // Dropping a service that shares its check keeps the check (and its state) running.
        monitor.sync([&primary, &replica]).expect("sync");
        assert_eq!(monitor.len(), 2);
        assert_eq!(
            monitor.server_health(&primary, &primary.servers[0]).state,
            HealthState::Up
        );
        monitor.sync([&primary]).expect("sync");
        assert_eq!(monitor.len(), 1);
        assert_eq!(
            monitor.server_health(&replica, &replica.servers[0]).state,
            HealthState::Unknown,
            "a stopped check has no state"
        );
        monitor.shutdown().await;
    }

    #[tokio::test]
    async fn bad_check_uri_leaves_the_monitor_unchanged() {
        let status = Arc::new(AtomicU16::new(200));
        let port = patroni(status).await;
        let good = service("pg-test-primary", "/primary", &[port]);
        let bad = service("pg-test-bad", "primary", &[port]);
        let (mut monitor, _rx) = HealthMonitor::new(TlsSettings::default());
        monitor.sync([&good]).expect("sync");
        let err = monitor.sync([&good, &bad]);
        assert!(matches!(err, Err(HealthError::Prober { .. })), "{err:?}");
        assert_eq!(monitor.len(), 1);
        monitor.shutdown().await;
    }

    #[test]
    fn check_timeout_never_exceeds_inter() {
        let mut svc = service("s", "/primary", &[8008]);
        svc.options.inter = Duration::from_secs(2);
        svc.options.check_timeout = Duration::from_secs(3);
        let key = CheckKey::for_server(&svc, &svc.servers[0]);
        assert_eq!(key.timeout, Duration::from_secs(2));
        svc.options.check_timeout = Duration::from_secs(1);
        let key = CheckKey::for_server(&svc, &svc.servers[0]);
        assert_eq!(key.timeout, Duration::from_secs(1));
        assert_eq!(key.target.port, 8008);
        assert_eq!(key.target.uri, "/primary");
    }
}

#[cfg(test)]
mod burst_tests {
    use super::*;

    fn params() -> CounterParams {
        CounterParams {
            rise: 3,
            fall: 3,
            inter: Duration::from_secs(2),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(5),
        }
    }

    const BURST: Option<Burst> = Some(Burst {
        interval: Duration::from_millis(100),
    });

    #[test]
    fn burst_only_shortens_transitions_and_outages() {
        let t = Instant::now();
        let pace = Pace::default();
        let mut c = HealthCounter::new(params());
        // Settled UP (the first result decides): HAProxy's `inter`, burst or not.
        assert!(c.record(true, t).is_some());
        assert_eq!(next_interval(&c, &pace, BURST), Duration::from_secs(2));
        // One failure: transitional. HAProxy uses fastinter, burst uses its interval.
        assert!(c.record(false, t).is_none());
        assert_eq!(next_interval(&c, &pace, None), Duration::from_secs(1));
        assert_eq!(next_interval(&c, &pace, BURST), Duration::from_millis(100));
        // fall still needs the configured number of failures.
        assert!(c.record(false, t).is_none());
        assert_eq!(c.record(false, t).map(|tr| tr.to), Some(HealthState::Down));
        // Settled DOWN: downinter, unless the service is in an outage.
        assert_eq!(next_interval(&c, &pace, BURST), Duration::from_secs(5));
        pace.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(next_interval(&c, &pace, BURST), Duration::from_millis(100));
        assert_eq!(
            next_interval(&c, &pace, None),
            Duration::from_secs(5),
            "no burst: HAProxy exactly"
        );
        // rise still needs three passes.
        assert!(c.record(true, t).is_none());
        assert!(c.record(true, t).is_none());
        assert_eq!(c.record(true, t).map(|tr| tr.to), Some(HealthState::Up));
        // Back at full health, an outage flag no longer shortens anything.
        assert_eq!(next_interval(&c, &pace, BURST), Duration::from_secs(2));
    }

    #[test]
    fn a_peer_starting_to_change_hurries_the_others_for_a_while() {
        let t = Instant::now();
        let (a, b) = (Arc::new(Pace::default()), Arc::new(Pace::default()));
        if let Ok(mut p) = a.peers.lock() {
            p.push(Arc::downgrade(&b));
        }
        let mut down = HealthCounter::new(params());
        assert!(down.record(false, t).is_some());
        assert_eq!(next_interval(&down, &b, BURST), Duration::from_secs(5));
        a.stir_peers();
        assert_eq!(next_interval(&down, &b, BURST), Duration::from_millis(100));
        // The stirring peer itself is not hurried by its own change.
        assert_eq!(next_interval(&down, &a, BURST), Duration::from_secs(5));
        // A settled-UP peer keeps `inter`.
        let mut up = HealthCounter::new(params());
        assert!(up.record(true, t).is_some());
        assert_eq!(next_interval(&up, &b, BURST), Duration::from_secs(2));
    }
}
