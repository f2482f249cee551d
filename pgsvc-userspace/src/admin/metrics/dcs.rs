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
