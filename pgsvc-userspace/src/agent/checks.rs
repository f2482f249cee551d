//! The health input of the reconciler: the running checks as it needs them. [`HealthMonitor`] is the
//! real one; the unit tests drive the reconciler with a table of snapshots instead.

use crate::{
    health::{CheckKey, HealthError, HealthMonitor, ServerHealth},
    plan::{ServerPlan, ServicePlan},
};

pub trait Checks {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes the running checks match `services`; on error nothing changed.
    fn sync(&mut self, services: &[ServicePlan]) -> Result<(), Self::Error>;
    /// The current snapshot of `server`'s check in `service` (`Unknown` before any result).
    fn server_health(&self, service: &ServicePlan, server: &ServerPlan) -> ServerHealth;
    /// Runs a check now, out of schedule.
    fn poke(&self, key: &CheckKey);
    /// Marks a check as belonging to a service without any usable server.
    fn hurry(&self, key: &CheckKey, on: bool);
}

impl Checks for HealthMonitor {
    type Error = HealthError;

    fn sync(&mut self, services: &[ServicePlan]) -> Result<(), HealthError> {
        HealthMonitor::sync(self, services.iter())
    }

    fn server_health(&self, service: &ServicePlan, server: &ServerPlan) -> ServerHealth {
        HealthMonitor::server_health(self, service, server)
    }

    fn poke(&self, key: &CheckKey) {
        HealthMonitor::poke(self, key);
    }

    fn hurry(&self, key: &CheckKey, on: bool) {
        HealthMonitor::hurry(self, key, on);
    }
}
