//! `pgsvc_dcs_*`: Patroni's DCS as the agent sees it, one series set per watched cluster (nothing
//! when no cluster is watched).

use super::{Exposition, Kind, Labels, Num};
use crate::status::{DcsClusterStatus, Status};

fn cluster(c: &DcsClusterStatus) -> Labels<'_> {
    vec![("cluster", c.cluster.as_str())]
}

pub(super) fn dcs(e: &mut Exposition, s: &Status) {
    let each = |f: fn(&DcsClusterStatus) -> Num| s.dcs.iter().map(move |c| (cluster(c), f(c)));
    e.family(
        "pgsvc_dcs_up",
        Kind::Gauge,
        "1 while etcd answers the cluster's leader-key watch.",
        each(|c| c.connected.into()),
    );
    e.family(
        "pgsvc_dcs_fencing",
        Kind::Gauge,
        "1 while write services follow the leader key; 0: REST checks alone (fallback).",
        each(|c| c.fencing.into()),
    );
    e.family(
        "pgsvc_dcs_fallback",
        Kind::Gauge,
        "1 while REST checks alone decide because of a DCS problem (see pgsvc status for the reason).",
        each(|c| c.fallback_reason.is_some().into()),
    );
    e.family(
        "pgsvc_dcs_leader",
        Kind::Gauge,
        "The member holding the cluster's leader key (value is always 1; no series without a leader).",
        s.dcs.iter().filter_map(|c| {
            c.leader.as_deref().map(|l| {
                let mut labels = cluster(c);
                labels.push(("member", l));
                (labels, Num::Int(1))
            })
        }),
    );
    e.family(
        "pgsvc_dcs_leader_leaving",
        Kind::Gauge,
        "1 while a switchover or failover asks the key's holder to step down (it is fenced meanwhile).",
        each(|c| c.leader_leaving.is_some().into()),
    );
    e.family(
        "pgsvc_dcs_watch_lag_seconds",
        Kind::Gauge,
        "Seconds since etcd last confirmed the leader view (read, event or progress answer).",
        s.dcs
            .iter()
            .filter_map(|c| c.watch_lag_seconds.map(|lag| (cluster(c), Num::Float(lag)))),
    );
    e.family(
        "pgsvc_dcs_revision",
        Kind::Gauge,
        "etcd revision the leader view is current at.",
        each(|c| Num::Int(u64::try_from(c.revision).unwrap_or(0))),
    );
    e.family(
        "pgsvc_dcs_fence_events_total",
        Kind::Counter,
        "Servers taken out of a write service because another member holds the leader key.",
        each(|c| c.fence_events_total.into()),
    );
    e.family(
        "pgsvc_dcs_fallbacks_total",
        Kind::Counter,
        "Switches to REST checks alone (etcd unreachable, failsafe_mode without a leader key).",
        each(|c| c.fallbacks_total.into()),
    );
    e.family(
        "pgsvc_server_fenced",
        Kind::Gauge,
        "1 when the server is out of a write service because another member holds the leader key.",
        super::servers(s)
            .filter(|_| !s.dcs.is_empty())
            .map(|(labels, v)| (labels, v.fenced.into())),
    );
}

#[cfg(test)]
mod tests {
    use crate::{admin::fixture::sample_status, status::DcsClusterStatus};

    #[test]
    fn dcs_families_follow_the_status_and_are_absent_without_a_dcs() {
        let mut s = sample_status();
        assert!(!super::super::render_metrics(&s).contains("pgsvc_dcs_"));
        assert!(!super::super::render_metrics(&s).contains("pgsvc_server_fenced"));
        s.dcs = vec![DcsClusterStatus {
            cluster: "pg-test".into(),
            connected: true,
            endpoint: Some("http://198.18.0.5:2379".into()),
            fencing: true,
            leader: Some("pg-test-1".into()),
            revision: 77,
            watch_lag_seconds: Some(0.25),
            fence_events_total: 3,
            fallbacks_total: 1,
            ..Default::default()
        }];
        s.services[0].servers[1].fenced = true;
        let m = super::super::render_metrics(&s);
        for line in [
            "pgsvc_dcs_up{cluster=\"pg-test\"} 1",
            "pgsvc_dcs_fencing{cluster=\"pg-test\"} 1",
            "pgsvc_dcs_fallback{cluster=\"pg-test\"} 0",
            "pgsvc_dcs_leader{cluster=\"pg-test\",member=\"pg-test-1\"} 1",
            "pgsvc_dcs_leader_leaving{cluster=\"pg-test\"} 0",
            "pgsvc_dcs_watch_lag_seconds{cluster=\"pg-test\"} 0.25",
            "pgsvc_dcs_revision{cluster=\"pg-test\"} 77",
            "pgsvc_dcs_fence_events_total{cluster=\"pg-test\"} 3",
            "pgsvc_dcs_fallbacks_total{cluster=\"pg-test\"} 1",
            "# TYPE pgsvc_dcs_fence_events_total counter",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        let fenced = format!(
            "pgsvc_server_fenced{{proxy=\"{}\",server=\"{}\"}} 1",
            s.services[0].name, s.services[0].servers[1].name
        );
        assert!(m.lines().any(|l| l == fenced), "missing {fenced:?}");

        s.dcs[0].leader_leaving = Some("switchover".into());
        let m = super::super::render_metrics(&s);
        let leaving = "pgsvc_dcs_leader_leaving{cluster=\"pg-test\"} 1";
        assert!(m.lines().any(|l| l == leaving), "missing {leaving:?}");
        s.dcs[0].leader_leaving = None;

        s.dcs[0].fencing = false;
        s.dcs[0].connected = false;
        s.dcs[0].leader = None;
        s.dcs[0].watch_lag_seconds = None;
        s.dcs[0].fallback_reason = Some("etcd stopped".into());
        let m = super::super::render_metrics(&s);
        assert!(
            m.lines()
                .any(|l| l == "pgsvc_dcs_fallback{cluster=\"pg-test\"} 1")
        );
        assert!(
            m.lines()
                .any(|l| l == "pgsvc_dcs_up{cluster=\"pg-test\"} 0")
        );
        assert!(
            !m.contains("pgsvc_dcs_leader{"),
            "no leader series without a leader"
        );
        assert!(!m.contains("pgsvc_dcs_watch_lag_seconds{"));
    }
}
