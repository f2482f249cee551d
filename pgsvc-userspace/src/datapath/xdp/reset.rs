//! Active resets ([`crate::datapath::Datapath::reset_sessions`]): the sessions of servers marked
//! down or fenced, and the flows to a service address that left the node, are ended now rather
//! than at their next packet, so that an idle pooled session does not keep a socket to a demoted
//! primary.
//!
//! - A full-NAT flow has no socket here. The datapath keeps the next sequence number of each
//!   direction (`Flow::client_next_seq`, `NatRev::backend_next_seq`); the client gets a RST from
//!   the service address and port it dialled, the server one from the SNAT address and port, each
//!   at exactly the sequence number it expects ([`crate::datapath::sockets::RstSender`]).
//! - A flow to a member on this node, and a client on this node, have a kernel socket here: it is
//!   destroyed ([`crate::datapath::sockets::SockDiag`]), and the kernel resets the connection
//!   itself (a member's RST leaves through the TC egress program, which translates it and removes
//!   the flow, counters included).
//!
//! The flows are removed afterwards; an established flow this agent removes while it still counts
//! is added to the released counters (as the GC does), so the session counts drop at once.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::maps::HashMap;
use pgsvc_common::{Flow, FlowKey, NatRev, SockFlow, TCP_F_SYN, maps as map_names};
use tracing::{debug, warn};

use super::{DatapathError, XdpDatapath, error::map_err, flows::add_released};
use crate::datapath::{
    api::{ResetCount, ResetScope},
    keys,
    sockets::{RstSender, RstTo, SockDiag},
};

fn addr(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

fn sock(a: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr(a), u16::from_be(port_be))
}

/// The two RSTs of a full-NAT flow, or `None` while the server's sequence number is unknown (its
/// SYN-ACK never came back).
fn rsts_of(key: &FlowKey, flow: &Flow, rev: &NatRev, snat: u32) -> Option<[RstTo; 2]> {
    if rev.backend_flags & TCP_F_SYN == 0 {
        return None;
    }
    Some([
        RstTo {
            from: sock(key.vip, key.vport),
            to: sock(key.client_addr, key.client_port),
            seq: rev.backend_next_seq,
            ack: flow.client_next_seq,
        },
        RstTo {
            from: sock(snat, flow.snat_port),
            to: sock(flow.backend_addr, flow.backend_port),
            seq: flow.client_next_seq,
            ack: rev.backend_next_seq,
        },
    ])
}

/// The sockets the reset uses, opened on first need; a socket that cannot be opened is logged once
/// and its resets count as failed.
#[derive(Default)]
struct Tools {
    raw: Option<Result<RstSender, ()>>,
    diag: Option<Result<SockDiag, ()>>,
}

impl Tools {
    fn raw(&mut self) -> Option<&RstSender> {
        self.raw
            .get_or_insert_with(|| {
                RstSender::open().map_err(|e| warn!(error = %e, "raw socket for resets"))
            })
            .as_ref()
            .ok()
    }

    fn diag(&mut self) -> Option<&mut SockDiag> {
        self.diag
            .get_or_insert_with(|| {
                SockDiag::open().map_err(|e| warn!(error = %e, "sock_diag socket for resets"))
            })
            .as_mut()
            .ok()
    }
}

impl XdpDatapath {
    /// Backend slot → (service, server, epoch) of the slots `scope` covers.
    fn reset_targets(&self, scope: &ResetScope<'_>) -> StdHashMap<u32, (String, String, u32)> {
        let mut out = StdHashMap::new();
        for (svc, e) in &self.services {
            if let ResetScope::Servers { service, .. } = scope
                && svc != service
            {
                continue;
            }
            for (name, b) in &e.backends {
                if let ResetScope::Servers { servers, .. } = scope
                    && !servers.contains(name)
                {
                    continue;
                }
                out.insert(b.id, (svc.clone(), name.clone(), b.epoch));
            }
        }
        out
    }

    /// [`crate::datapath::Datapath::reset_sessions`].
    pub(super) fn reset_now(
        &mut self,
        scope: &ResetScope<'_>,
    ) -> Result<Vec<ResetCount>, DatapathError> {
        if let ResetScope::Servers { service, .. } = scope
            && !self.services.contains_key(*service)
        {
            return Err(DatapathError::UnknownService {
                service: (*service).to_owned(),
            });
        }
        let targets = self.reset_targets(scope);
        let mut counts: BTreeMap<(String, String), ResetCount> = BTreeMap::new();
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let snat = u32::from_ne_bytes(self.opts.snat_addr.octets());
        let mut tools = Tools::default();
        let victims: Vec<(FlowKey, Flow)> = self
            .maps
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, f)| {
                f.closing == 0
                    && targets
                        .get(&f.backend_id)
                        .is_some_and(|t| t.2 == f.backend_epoch)
                    && match scope {
                        ResetScope::ServiceAddr(a) => k.vip == u32::from_ne_bytes(a.octets()),
                        ResetScope::Servers { .. } => true,
                    }
            })
            .collect();
        let mut svc_rel: StdHashMap<u32, i64> = StdHashMap::new();
        let mut be_rel: StdHashMap<u32, i64> = StdHashMap::new();
        for (key, flow) in &victims {
            let Some((svc, srv, _)) = targets.get(&flow.backend_id) else {
                continue;
            };
            let c = counts
                .entry((svc.clone(), srv.clone()))
                .or_insert_with(|| ResetCount {
                    service: svc.clone(),
                    server: srv.clone(),
                    ..ResetCount::default()
                });
            let nat_key = keys::rev_key_of(key, flow, snat);
            let ok = if flow.is_local() {
                // The member's socket: local = member, remote = the client (its address kept).
                let local = sock(flow.backend_addr, flow.backend_port);
                let remote = sock(key.client_addr, key.client_port);
                match tools.diag().map(|d| d.destroy(local, remote, None)) {
                    Some(Ok(_)) => {
                        c.local_members += 1;
                        true
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, %local, %remote, "destroying a local member's socket");
                        false
                    }
                    None => false,
                }
            } else {
                let rev = self.maps.nat_rev.get(&nat_key, 0).ok();
                match rev.and_then(|r| rsts_of(key, flow, &r, snat)) {
                    Some(rsts) => match tools.raw() {
                        Some(raw) => {
                            let sent = rsts.iter().map(|r| raw.send(r)).collect::<Vec<_>>();
                            if let Some(Err(e)) = sent.iter().find(|r| r.is_err()) {
                                warn!(error = %e, client = %rsts[0].to, "sending a reset");
                            }
                            let ok = sent.iter().all(Result::is_ok);
                            c.flows += u64::from(ok);
                            ok
                        }
                        None => false,
                    },
                    None => false,
                }
            };
            c.failed += u64::from(!ok);
            // A local member's flow is usually gone already (the TC program saw its RST).
            self.remove_nat_of(&nat_key, key);
            if self.maps.flows.remove(key).is_ok() {
                *svc_rel.entry(flow.svc_id).or_default() += 1;
                *be_rel.entry(flow.backend_id).or_default() += 1;
            }
        }
        add_released(
            &mut self.maps.svc_released,
            map_names::SVC_RELEASED,
            svc_rel,
        )?;
        add_released(
            &mut self.maps.backend_released,
            map_names::BACKEND_RELEASED,
            be_rel,
        )?;
        if matches!(scope, ResetScope::Servers { .. }) {
            self.reset_local_clients(&targets, &mut counts, &mut tools)?;
        }
        Ok(counts.into_values().filter(|c| c.total() > 0).collect())
    }

    /// Destroys the sockets of clients on this node whose session (cgroup `connect4`) went to one
    /// of `targets`. Their session counts drop when the client closes the socket (`sock_release`).
    fn reset_local_clients(
        &mut self,
        targets: &StdHashMap<u32, (String, String, u32)>,
        counts: &mut BTreeMap<(String, String), ResetCount>,
        tools: &mut Tools,
    ) -> Result<(), DatapathError> {
        let Some(map) = self.ebpf.map(map_names::SOCK_FLOWS) else {
            return Ok(());
        };
        let flows: HashMap<_, u64, SockFlow> =
            HashMap::try_from(map).map_err(map_err(map_names::SOCK_FLOWS, "open"))?;
        let mine: StdHashMap<u64, SockFlow> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| {
                targets
                    .get(&f.backend_id)
                    .is_some_and(|t| t.2 == f.backend_epoch)
            })
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let Some(diag) = tools.diag() else {
            return Ok(());
        };
        let socks = match diag.tcp4_sockets() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "listing sockets to reset local clients");
                return Ok(());
            }
        };
        for s in socks {
            let Some(f) = mine.get(&s.cookie) else {
                continue;
            };
            // The client's socket, connected to the server itself (not the reversed pair the
            // server's own socket on this node would show).
            if s.remote != sock(f.backend_addr, f.backend_port) {
                continue;
            }
            let Some((svc, srv, _)) = targets.get(&f.backend_id) else {
                continue;
            };
            let c = counts
                .entry((svc.clone(), srv.clone()))
                .or_insert_with(|| ResetCount {
                    service: svc.clone(),
                    server: srv.clone(),
                    ..ResetCount::default()
                });
            match diag.destroy(s.local, s.remote, Some(s.cookie)) {
                Ok(true) => c.local_clients += 1,
                Ok(false) => debug!(local = %s.local, "local client's socket already gone"),
                Err(e) => {
                    warn!(error = %e, local = %s.local, "destroying a local client's socket");
                    c.failed += 1;
                }
            }
        }
        Ok(())
    }
}
