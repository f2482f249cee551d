//! VIP ownership (`--own-vip`, in place of vip-manager): the pgsvc on each node adds its cluster's
//! `pg_vip_address` to `--iface` only while the node's own member holds the leader key, announces it
//! with gratuitous ARP, and removes it the moment the key names anyone else.
//!
//! Two holders never coexist by the same rule vip-manager follows: the key has one holder, and a
//! node drops the address on the very watch event that moves the key away (in a switchover Patroni
//! deletes the key before the new leader takes it, so the old holder has let go first). A node that
//! loses etcd keeps the address no longer than the key's TTL after etcd last confirmed it — by then
//! the key has expired and another member may hold it — and takes it again only when etcd says so.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use thiserror::Error;
use tracing::{info, warn};

use super::netlink;
use crate::{
    dcs::{DcsUpdate, LeaderView},
    plan::Plan,
};

#[derive(Debug, Error)]
pub enum VipError {
    #[error(
        "--own-vip: no cluster of the inventory has both `pg_vip_enabled: true` with a `pg_vip_address` and a member at an address of this node"
    )]
    NothingToOwn,
    #[error("--own-vip needs the DCS (the leader key decides who holds the VIP); remove --dcs off")]
    NoDcs,
    #[error("--own-vip and --vip both name a VIP; give one of them")]
    BothVips,
}

/// What to do with the address now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Add,
    Remove,
}

/// The VIP of one cluster, held while this node's member leads it.
#[derive(Debug)]
pub struct VipOwner {
    pub cluster: String,
    /// This node's member of the cluster.
    pub member: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    iface: String,
    ttl: Duration,
    held: bool,
    /// When etcd last confirmed this node's tenure.
    confirmed: Option<Instant>,
    /// etcd does not answer: the address stays until `confirmed + ttl`.
    unreachable: bool,
}

impl VipOwner {
    /// One owner per cluster with a VIP and a member at one of `local` (this node's addresses).
    ///
    /// # Errors
    /// [`VipError::NothingToOwn`] when no cluster qualifies.
    pub fn for_node(
        plan: &Plan,
        local: &[Ipv4Addr],
        iface: &str,
        ttl: Duration,
    ) -> Result<Vec<Self>, VipError> {
        let owners: Vec<Self> = plan
            .clusters
            .iter()
            .filter_map(|c| {
                let vip = c.vip?;
                let me = c.instances.iter().find(|i| local.contains(&i.addr))?;
                Some(Self {
                    cluster: c.name.clone(),
                    member: me.name.clone(),
                    addr: vip.addr,
                    prefix: vip.prefix_len,
                    iface: iface.to_owned(),
                    ttl,
                    held: false,
                    confirmed: None,
                    unreachable: false,
                })
            })
            .collect();
        if owners.is_empty() {
            return Err(VipError::NothingToOwn);
        }
        Ok(owners)
    }

    /// The change one DCS observation calls for (pure: [`Self::apply`] carries it out).
    pub fn decide(&mut self, u: &DcsUpdate) -> Option<Change> {
        if u.cluster != self.cluster {
            return None;
        }
        let want = match &u.view {
            LeaderView::Leader(holder) => {
                self.unreachable = false;
                let mine = holder.as_deref() == Some(self.member.as_str());
                if mine {
                    self.confirmed = Some(u.confirmed);
                }
                mine
            }
            // etcd answers but there is no usable key (failsafe_mode, a foreign holder): not ours.
            LeaderView::Fallback(_) if u.endpoint.is_some() => false,
            // etcd is unreachable: keep what we hold until the key would have expired.
            LeaderView::Fallback(_) => {
                self.unreachable = true;
                return None;
            }
        };
        self.transition(want)
    }

    /// The change time alone calls for: an address kept while etcd is unreachable goes once the
    /// key's TTL has passed since etcd last confirmed this node's tenure.
    pub fn decide_tick(&mut self, now: Instant) -> Option<Change> {
        let expired = self.unreachable
            && self
                .confirmed
                .is_none_or(|c| now.saturating_duration_since(c) >= self.ttl);
        if self.held && expired {
            warn!(
                cluster = self.cluster,
                vip = %self.addr,
                ttl_s = self.ttl.as_secs_f64(),
                "etcd unreachable for longer than the leader key's TTL: releasing the VIP"
            );
            return self.transition(false);
        }
        None
    }

    fn transition(&mut self, want: bool) -> Option<Change> {
        if want == self.held {
            return None;
        }
        self.held = want;
        Some(if want { Change::Add } else { Change::Remove })
    }

    /// Whether the agent believes it holds the address.
    #[must_use]
    pub fn held(&self) -> bool {
        self.held
    }

    /// Carries out `change`: the address through rtnetlink, then gratuitous ARP after an add.
    pub async fn apply(&self, change: Change) {
        let cidr = format!("{}/{}", self.addr, self.prefix);
        match change {
            Change::Add => match netlink::add_addr(&self.iface, self.addr, self.prefix).await {
                Ok(added) => {
                    info!(
                        cluster = self.cluster,
                        vip = cidr,
                        iface = self.iface,
                        already = !added,
                        "VIP taken: this node's member holds the leader key"
                    );
                    announce(&self.iface, self.addr);
                }
                Err(e) => {
                    warn!(cluster = self.cluster, vip = cidr, error = %e, "adding the VIP failed")
                }
            },
            Change::Remove => match netlink::del_addr(&self.iface, self.addr, self.prefix).await {
                Ok(_) => info!(
                    cluster = self.cluster,
                    vip = cidr,
                    iface = self.iface,
                    "VIP released: the leader key left this node's member"
                ),
                Err(e) => {
                    warn!(cluster = self.cluster, vip = cidr, error = %e, "removing the VIP failed")
                }
            },
        }
    }
}

/// Gratuitous ARP for `addr` from `iface`, now and twice more within a second (a switch or a peer
/// that missed the first one still learns the new owner quickly).
fn announce(iface: &str, addr: Ipv4Addr) {
    let iface = iface.to_owned();
    tokio::spawn(async move {
        for delay in [0u64, 200, 800] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if let Err(e) = super::garp::send(&iface, addr) {
                warn!(iface, vip = %addr, error = %e, "gratuitous ARP failed");
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ClusterPlan, Instance, Vip};

    fn instance(name: &str, addr: [u8; 4]) -> Instance {
        Instance {
            name: name.to_owned(),
            addr: Ipv4Addr::from(addr),
            seq: 1,
            role: "replica".to_owned(),
            offline_query: false,
            weight: 100,
            patroni_port: 8008,
            patroni_tls: false,
            pg_port: 5432,
            pgbouncer_port: 6432,
        }
    }

    fn plan(vip: bool) -> Plan {
        Plan {
            clusters: vec![ClusterPlan {
                name: "pg-test".to_owned(),
                vip: vip.then_some(Vip {
                    addr: Ipv4Addr::new(198, 18, 0, 3),
                    prefix_len: 24,
                }),
                instances: vec![
                    instance("pg-test-1", [198, 18, 0, 11]),
                    instance("pg-test-2", [198, 18, 0, 12]),
                ],
                services: Vec::new(),
            }],
        }
    }

    fn update(view: LeaderView, reachable: bool, at: Instant) -> DcsUpdate {
        DcsUpdate {
            cluster: "pg-test".to_owned(),
            view,
            leaving: None,
            endpoint: reachable.then(|| "http://198.18.0.5:2379".to_owned()),
            revision: 7,
            confirmed: at,
        }
    }

    fn owner() -> VipOwner {
        let local = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(198, 18, 0, 12)];
        let mut v = VipOwner::for_node(&plan(true), &local, "eth0", Duration::from_secs(30))
            .expect("pg-test-2 is local");
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn leader(name: Option<&str>) -> LeaderView {
        LeaderView::Leader(name.map(str::to_owned))
    }

    #[test]
    fn the_owner_is_the_local_member_of_a_cluster_with_a_vip() {
        let v = owner();
        assert_eq!(
            (v.member.as_str(), v.addr),
            ("pg-test-2", Ipv4Addr::new(198, 18, 0, 3))
        );
        let elsewhere = [Ipv4Addr::new(198, 18, 0, 99)];
        assert!(matches!(
            VipOwner::for_node(&plan(true), &elsewhere, "eth0", Duration::from_secs(30)),
            Err(VipError::NothingToOwn)
        ));
        let here = [Ipv4Addr::new(198, 18, 0, 12)];
        assert!(matches!(
            VipOwner::for_node(&plan(false), &here, "eth0", Duration::from_secs(30)),
            Err(VipError::NothingToOwn)
        ));
    }

    #[test]
    fn the_vip_follows_the_leader_key() {
        let mut v = owner();
        let t = Instant::now();
        assert_eq!(v.decide(&update(leader(Some("pg-test-1")), true, t)), None);
        assert_eq!(
            v.decide(&update(leader(Some("pg-test-2")), true, t)),
            Some(Change::Add)
        );
        assert!(v.held());
        // The same holder again (a re-read): nothing to do.
        assert_eq!(v.decide(&update(leader(Some("pg-test-2")), true, t)), None);
        // Patroni deletes the key in a switchover: released before anyone else can take it.
        assert_eq!(
            v.decide(&update(leader(None), true, t)),
            Some(Change::Remove)
        );
        assert_eq!(v.decide(&update(leader(Some("pg-test-1")), true, t)), None);
        assert!(!v.held());
        // Another cluster's key is not ours.
        let mut other = update(leader(Some("pg-test-2")), true, t);
        other.cluster = "pg-other".to_owned();
        assert_eq!(v.decide(&other), None);
    }

    #[test]
    fn etcd_answering_without_a_usable_key_releases_at_once() {
        let mut v = owner();
        let t = Instant::now();
        v.decide(&update(leader(Some("pg-test-2")), true, t));
        let failsafe = LeaderView::Fallback("no leader key (failsafe_mode)".to_owned());
        assert_eq!(v.decide(&update(failsafe, true, t)), Some(Change::Remove));
    }

    #[test]
    fn an_unreachable_etcd_keeps_the_vip_until_the_ttl_has_passed() {
        let mut v = owner();
        let t0 = Instant::now();
        v.decide(&update(leader(Some("pg-test-2")), true, t0));
        let lost = LeaderView::Fallback("etcd unreachable".to_owned());
        assert_eq!(v.decide(&update(lost, false, t0)), None);
        assert_eq!(v.decide_tick(t0 + Duration::from_secs(29)), None);
        assert!(v.held());
        assert_eq!(
            v.decide_tick(t0 + Duration::from_secs(30)),
            Some(Change::Remove)
        );
        assert_eq!(v.decide_tick(t0 + Duration::from_secs(31)), None);
        // etcd back, the key still ours: taken again.
        assert_eq!(
            v.decide(&update(
                leader(Some("pg-test-2")),
                true,
                t0 + Duration::from_secs(32)
            )),
            Some(Change::Add)
        );
        // A tick while etcd answers never releases.
        assert_eq!(v.decide_tick(t0 + Duration::from_secs(100)), None);
    }

    #[test]
    fn an_unreachable_etcd_never_grants_the_vip() {
        let mut v = owner();
        let lost = LeaderView::Fallback("etcd unreachable".to_owned());
        assert_eq!(v.decide(&update(lost, false, Instant::now())), None);
        assert!(!v.held());
    }
}
