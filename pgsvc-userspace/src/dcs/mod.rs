//! Patroni's DCS as a source of truth: the leader key of each cluster in etcd v3
//! (`<pg_namespace>/<pg_cluster>/leader`, value = the member name), watched with revision resume, a
//! progress request every second and a full re-read every few seconds (lease keep-alives produce no
//! watch event, and a watch can lose events: vip-manager's issues #394, #431).
//!
//! - [`settings`]: where etcd is and how to log in, from the inventory the way Pigsty configures
//!   vip-manager and Patroni (the `etcd` group on `etcd_port`, TLS files under `/pg/cert`, RBAC
//!   user = cluster name, `pg_etcd_password`), overridden by `--etcd-*` flags.
//! - [`watch`]: one task per cluster that turns what etcd says into [`DcsUpdate`]s for the agent.
//! - [`keys`]: what the cluster's keys say (leader, `/failover`, `/config`).
//! - [`failover`]: Patroni's `/failover` request as early evidence that the holder is demoting.
//!
//! The agent fences write services on [`LeaderView::Leader`] and falls back to REST checks alone on
//! [`LeaderView::Fallback`] (etcd unreachable, or the key absent while Patroni's `failsafe_mode` keeps
//! the primary running without the DCS), and fences the holder too while [`DcsUpdate::leaving`] says
//! a switchover or failover asks it to step down.

pub mod failover;
pub mod keys;
pub mod settings;
pub mod watch;

use std::time::Instant;

pub use settings::{DcsMode, EtcdOverrides, EtcdSettings, settings_for_clusters};
pub use watch::{DcsError, probe, spawn_watch};

/// What the agent should believe about one cluster's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderView {
    /// The DCS answers: the key's holder (None: no leader right now). Write services fence on it.
    Leader(Option<String>),
    /// REST checks alone decide, for this reason.
    Fallback(String),
}

/// One observation of a cluster's DCS, sent by its watch task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcsUpdate {
    pub cluster: String,
    pub view: LeaderView,
    /// The key's holder is asked to step down now (Patroni's `/failover` key; see [`failover`]):
    /// why. Its PostgreSQL is about to stop although it still holds the key.
    pub leaving: Option<String>,
    /// The endpoint answering (None while none does).
    pub endpoint: Option<String>,
    /// etcd's revision the view is current at (0 when unknown).
    pub revision: i64,
    /// When etcd last confirmed the view (a read, an event or a progress answer).
    pub confirmed: Instant,
}

/// The etcd key of `cluster`'s leader under `namespace` (Pigsty: `/pg`).
#[must_use]
pub fn leader_key(namespace: &str, cluster: &str) -> String {
    format!("{}/{cluster}/leader", namespace.trim_end_matches('/'))
}

/// The key of Patroni's dynamic configuration (where `failsafe_mode` is set).
#[must_use]
pub fn config_key(namespace: &str, cluster: &str) -> String {
    format!("{}/{cluster}/config", namespace.trim_end_matches('/'))
}

/// Whether a check URI (path and query) asks for the leader: Patroni's `/primary`, `/leader`,
/// `/master`. Services checked that way are write services and are fenced on the leader key.
#[must_use]
pub fn is_write_check(uri: &str) -> bool {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    matches!(
        path.trim_end_matches('/'),
        "/primary" | "/leader" | "/master"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_patronis_layout() {
        assert_eq!(leader_key("/pg", "pg-test"), "/pg/pg-test/leader");
        assert_eq!(leader_key("/pg/", "pg-test"), "/pg/pg-test/leader");
        assert_eq!(leader_key("/service", "c"), "/service/c/leader");
        assert_eq!(config_key("/pg/", "pg-test"), "/pg/pg-test/config");
    }

    #[test]
    fn write_checks_are_the_leader_endpoints() {
        for uri in ["/primary", "/leader", "/master", "/primary?x=1", "/leader/"] {
            assert!(is_write_check(uri), "{uri}");
        }
        for uri in [
            "/replica",
            "/read-only",
            "/health",
            "/replica?lag=16MB",
            "/primaryx",
            "/",
        ] {
            assert!(!is_write_check(uri), "{uri}");
        }
    }
}
