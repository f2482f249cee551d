//! What services on `ip: "*"` accept: the node's MACs (`LOCAL_SCOPE`) and its local IPv4 addresses
//! (`LOCAL_ADDRS`), kept true by the agent as addresses come and go (a VIP moved by vip-manager).

use std::collections::HashSet;

use aya::maps::{Array, HashMap, MapData};
use pgsvc_common::maps as map_names;

use super::{DatapathError, XdpDatapath, error::map_err};
use crate::datapath::api::LocalScope;

impl XdpDatapath {
    /// Writes the scope; addresses no longer listed are removed. Returns whether anything changed.
    ///
    /// # Errors
    /// When a map cannot be opened, read or written (more addresses than `MAX_LOCAL_ADDRS`).
    pub(super) fn write_local_scope(&mut self, scope: &LocalScope) -> Result<bool, DatapathError> {
        let mut changed = false;
        let want = pgsvc_common::LocalScope {
            if_mac: scope.if_mac,
            vip_mac: scope.vip_mac.unwrap_or_default(),
        };
        let name = map_names::LOCAL_SCOPE;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut macs: Array<&mut MapData, pgsvc_common::LocalScope> =
            Array::try_from(map).map_err(map_err(name, "open"))?;
        if macs.get(&0, 0).map_err(map_err(name, "read"))? != want {
            macs.set(0, want, 0).map_err(map_err(name, "write"))?;
            changed = true;
        }
        let name = map_names::LOCAL_ADDRS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut set: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(map_err(name, "open"))?;
        let want: HashSet<u32> = scope
            .addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        let have: Vec<u32> = set.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            set.remove(k).map_err(map_err(name, "delete"))?;
            changed = true;
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            set.insert(k, 1, 0).map_err(map_err(name, "write"))?;
            changed = true;
        }
        Ok(changed)
    }
}
