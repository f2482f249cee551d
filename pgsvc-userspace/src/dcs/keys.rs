//! What one cluster's keys in the DCS say, as the watch learns it: the leader key's holder,
//! Patroni's `/failover` request, and from `/config` whether `failsafe_mode` or `pause` is on. The
//! watch covers the cluster's whole prefix (`<namespace>/<cluster>/`, the range Patroni itself
//! reads) and feeds every put and delete here; members, status and history keys are ignored.

use std::time::SystemTime;

use super::{
    LeaderView,
    failover::{Failover, StepDown, step_down},
};

/// The keys of one cluster that decide its write services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterKeys {
    pub holder: Option<String>,
    pub failover: Option<Failover>,
    pub failsafe: bool,
    pub paused: bool,
}

/// Which key of the cluster's prefix a full key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Leader,
    Failover,
    Config,
}

/// The prefix of `cluster`'s keys under `namespace` (`/pg/pg-test/`).
#[must_use]
pub fn prefix(namespace: &str, cluster: &str) -> String {
    format!("{}/{cluster}/", namespace.trim_end_matches('/'))
}

impl ClusterKeys {
    /// Applies a put (`Some(value)`) or delete (`None`) of `key` under `prefix`. Returns whether it
    /// was one of the keys that matter.
    pub fn apply(&mut self, prefix: &str, key: &[u8], value: Option<&[u8]>) -> bool {
        let which = match key.strip_prefix(prefix.as_bytes()) {
            Some(b"leader") => Which::Leader,
            Some(b"failover") => Which::Failover,
            Some(b"config") => Which::Config,
            _ => return false,
        };
        match which {
            Which::Leader => {
                self.holder = value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned);
            }
            Which::Failover => self.failover = value.and_then(Failover::parse),
            Which::Config => {
                let cfg = value.and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok());
                let flag = |k: &str| {
                    cfg.as_ref()
                        .and_then(|c| c.get(k))
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(false)
                };
                self.failsafe = flag("failsafe_mode");
                self.paused = flag("pause");
            }
        }
        true
    }

    /// What the agent should believe about the leader.
    #[must_use]
    pub fn view(&self) -> LeaderView {
        match &self.holder {
            None if self.failsafe => LeaderView::Fallback(
                "no leader key while Patroni's failsafe_mode is on (the primary may run without the DCS)"
                    .to_owned(),
            ),
            h => LeaderView::Leader(h.clone()),
        }
    }

    /// Whether the holder is asked to step down at `now`: the request's description, and when to
    /// ask again (a scheduled switchover not yet due).
    #[must_use]
    pub fn leaving(&self, now: SystemTime) -> (Option<String>, Option<SystemTime>) {
        match step_down(
            self.failover.as_ref(),
            self.holder.as_deref(),
            self.paused,
            now,
        ) {
            StepDown::No => (None, None),
            StepDown::Now(why) => (Some(why), None),
            StepDown::At(t) => (None, Some(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const P: &str = "/pg/pg-test/";

    #[test]
    fn the_keys_that_matter_are_read_from_the_prefix() {
        assert_eq!(prefix("/pg/", "pg-test"), P);
        let mut k = ClusterKeys::default();
        assert!(k.apply(P, b"/pg/pg-test/leader", Some(b"pg-test-1")));
        assert!(!k.apply(P, b"/pg/pg-test/members/pg-test-1", Some(b"{}")));
        assert!(!k.apply(P, b"/pg/other/leader", Some(b"x")));
        assert!(!k.apply(P, b"/pg/pg-test/leader/x", Some(b"x")));
        assert_eq!(k.view(), LeaderView::Leader(Some("pg-test-1".into())));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(k.leaving(now), (None, None));

        assert!(k.apply(
            P,
            b"/pg/pg-test/failover",
            Some(br#"{"leader":"pg-test-1","member":"pg-test-2"}"#)
        ));
        let (why, again) = k.leaving(now);
        assert!(why.is_some_and(|w| w.contains("pg-test-2")), "{k:?}");
        assert_eq!(again, None);
        // Patroni refuses: it writes `{}`; or the key is deleted.
        k.apply(P, b"/pg/pg-test/failover", Some(b"{}"));
        assert_eq!(k.leaving(now), (None, None));
        k.apply(
            P,
            b"/pg/pg-test/failover",
            Some(br#"{"member":"pg-test-2"}"#),
        );
        assert!(k.leaving(now).0.is_some());
        k.apply(P, b"/pg/pg-test/failover", None);
        assert_eq!(k.leaving(now), (None, None));

        // A scheduled switchover: ask again at its time.
        k.apply(
            P,
            b"/pg/pg-test/failover",
            Some(br#"{"leader":"pg-test-1","scheduled_at":"1970-01-01T00:03:20+00:00"}"#),
        );
        let due = SystemTime::UNIX_EPOCH + Duration::from_secs(200);
        assert_eq!(k.leaving(now), (None, Some(due)));
        assert!(k.leaving(due).0.is_some());

        // pause: a request without a candidate is refused by Patroni.
        k.apply(
            P,
            b"/pg/pg-test/failover",
            Some(br#"{"leader":"pg-test-1"}"#),
        );
        assert!(k.leaving(now).0.is_some());
        k.apply(
            P,
            b"/pg/pg-test/config",
            Some(br#"{"ttl":30,"pause":true}"#),
        );
        assert!(k.paused && !k.failsafe);
        assert_eq!(k.leaving(now), (None, None));

        // The key deleted under failsafe_mode: REST checks alone.
        k.apply(P, b"/pg/pg-test/config", Some(br#"{"failsafe_mode":true}"#));
        assert!(!k.paused && k.failsafe);
        k.apply(P, b"/pg/pg-test/leader", None);
        assert!(matches!(k.view(), LeaderView::Fallback(r) if r.contains("failsafe_mode")));
        assert_eq!(k.leaving(now), (None, None));
        k.apply(P, b"/pg/pg-test/config", None);
        assert_eq!(k.view(), LeaderView::Leader(None));
        for (cfg, on) in [
            (&br#"{"ttl":30,"failsafe_mode":true}"#[..], true),
            (br#"{"ttl":30,"failsafe_mode":false}"#, false),
            (br#"{"ttl":30}"#, false),
            (b"not json", false),
        ] {
            k.apply(P, b"/pg/pg-test/config", Some(cfg));
            assert_eq!(k.failsafe, on, "{}", String::from_utf8_lossy(cfg));
        }
    }
}
