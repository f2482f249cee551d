//! Reload: a new plan is checked in full first (services, SNAT range, health checks), then applied
//! as a diff — removed services go, added and changed ones are (re)written, unchanged ones are left
//! alone. A refused plan changes nothing.

use std::{collections::BTreeMap, time::Instant};

use tracing::{error, info, warn};

use super::{
    checks::Checks,
    project::unix_now,
    reconcile::{Reconciler, flatten, service_spec},
};
use crate::{
    control::{ReloadError, ReloadSummary},
    datapath::Datapath,
    plan::{Plan, ServicePlan, Warning},
    status::ReloadStatus,
};

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// Applies a re-read inventory (`loaded`, as [`crate::plan::load_plan`] returned it), logs the
    /// outcome in one line and records it in the status.
    ///
    /// # Errors
    /// Why the new inventory was refused; the running configuration then stays as it was.
    pub fn reload<E: Into<ReloadError>>(
        &mut self,
        loaded: Result<(Plan, Vec<Warning>), E>,
        now: Instant,
    ) -> Result<ReloadSummary, ReloadError> {
        let result = self.try_reload(loaded.map_err(Into::into), now);
        let (ok, message) = match &result {
            Ok(summary) => {
                info!("reload: {summary}");
                (true, summary.to_string())
            }
            Err(e) => {
                error!("reload refused, the running configuration stays: {e}");
                (false, e.to_string())
            }
        };
        self.last_reload = Some(ReloadStatus {
            at: unix_now(),
            ok,
            message,
        });
        self.publish(now);
        result
    }

    fn try_reload(
        &mut self,
        loaded: Result<(Plan, Vec<Warning>), ReloadError>,
        now: Instant,
    ) -> Result<ReloadSummary, ReloadError> {
        let (plan, warnings) = loaded?;
        for w in &warnings {
            warn!("{w}");
        }
        let services = flatten(&plan);
        if services.is_empty() {
            return Err(ReloadError::NoServices);
        }
        if let Some(s) = services
            .iter()
            .find(|s| self.settings.snat_ports.contains(&s.port))
        {
            return Err(ReloadError::PortInSnatRange {
                service: s.name.clone(),
                port: s.port,
                min: *self.settings.snat_ports.start(),
                max: *self.settings.snat_ports.end(),
            });
        }
        // Checks first: a bad check setting refuses the reload before the datapath changes.
        self.checks
            .sync(&self.checked(&services))
            .map_err(|e| ReloadError::Checks {
                source: Box::new(e),
            })?;
        let old: BTreeMap<String, ServicePlan> = self
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let new: BTreeMap<String, ServicePlan> = services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let mut summary = ReloadSummary::default();
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            if let Err(e) = self.dp.remove_service(name) {
                warn!(service = name, error = %e, "removing service failed");
            }
            self.applied.remove(name);
            self.next_steps.remove(name);
            summary.removed += 1;
        }
        for (name, svc) in &new {
            match old.get(name) {
                Some(o) if o == svc => continue,
                Some(_) => summary.changed += 1,
                None => summary.added += 1,
            }
            self.dp
                .upsert_service(name, &service_spec(svc))
                .map_err(|e| ReloadError::Datapath {
                    service: name.clone(),
                    source: Box::new(e),
                })?;
            // Rewrite its backends even if the set looks equal (selectors may have moved servers).
            self.applied.remove(name);
        }
        summary.unchanged = new.len() - summary.added - summary.changed;
        self.plan = plan;
        self.services = services;
        // Server states stay with the servers that are still there.
        if self.prune_states() {
            info!("reload: server states of servers that left the plan were dropped");
            let _ = self.save_states();
        }
        let names: Vec<String> = new.keys().cloned().collect();
        for n in names {
            self.rebalance(&n, now);
        }
        self.update_hurry(now);
        Ok(summary)
    }
}
