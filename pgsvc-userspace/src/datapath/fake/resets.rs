//! The fake's active resets ([`crate::datapath::Datapath::reset_sessions`]): sessions injected per
//! server (and per service address, [`FakeDatapath::open_at`]) are reset and recorded.

use std::net::Ipv4Addr;

use super::{Call, FakeDatapath, FakeError, Op};
use crate::datapath::api::{ResetCount, ResetScope};

impl FakeDatapath {
    /// `conns` more connections of one server, made through the service address `addr`.
    pub fn open_at(&mut self, addr: Ipv4Addr, service: &str, server: &str, conns: u64) {
        let n = self.conns(service, server) + conns;
        self.open(service, server, n);
        *self
            .addr_conns
            .entry((addr, service.to_owned(), server.to_owned()))
            .or_default() += conns;
    }

    /// Every active reset, as (service, server, sessions), oldest first.
    #[must_use]
    pub fn resets(&self) -> Vec<(String, String, u64)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Reset {
                    service,
                    server,
                    conns,
                } => Some((service.clone(), server.clone(), *conns)),
                _ => None,
            })
            .collect()
    }

    /// [`Datapath::reset_sessions`]: the sessions counted for the servers (or made through the
    /// address) drop to zero, one [`Call::Reset`] per server that had any.
    pub(super) fn reset_now(
        &mut self,
        scope: &ResetScope<'_>,
    ) -> Result<Vec<ResetCount>, FakeError> {
        let victims: Vec<(String, String, u64)> = match scope {
            ResetScope::Servers { service, servers } => {
                self.check(Op::Reset, service)?;
                let svc = self.service(service)?;
                servers
                    .iter()
                    .map(|srv| {
                        let n = svc.conns.get(srv).copied().unwrap_or(0);
                        ((*service).to_owned(), srv.clone(), n)
                    })
                    .collect()
            }
            ResetScope::ServiceAddr(addr) => {
                self.calls.push(Call::ResetAddr { addr: *addr });
                self.check(Op::Reset, "")?;
                let keys: Vec<_> = self
                    .addr_conns
                    .keys()
                    .filter(|(a, _, _)| a == addr)
                    .cloned()
                    .collect();
                keys.into_iter()
                    .filter_map(|k| self.addr_conns.remove(&k).map(|n| (k.1, k.2, n)))
                    .collect()
            }
        };
        let mut out = Vec::new();
        for (service, server, n) in victims.into_iter().filter(|v| v.2 > 0) {
            if let Some(c) = self
                .services
                .get_mut(&service)
                .and_then(|s| s.conns.get_mut(&server))
            {
                *c = c.saturating_sub(n);
            }
            self.addr_conns.retain(|(_, s, v), _| {
                !(matches!(scope, ResetScope::Servers { .. }) && *s == service && *v == server)
            });
            self.calls.push(Call::Reset {
                service: service.clone(),
                server: server.clone(),
                conns: n,
            });
            out.push(ResetCount {
                service,
                server,
                flows: n,
                ..ResetCount::default()
            });
        }
        Ok(out)
    }
}
