//! pgsvc: a Patroni-aware layer-4 load balancer for PostgreSQL services, with an XDP datapath.
//!
//! Data flows one way: `config → plan → (health) → balance → datapath`. Only `datapath` touches the
//! kernel; only `health` (Patroni's REST API) and `dcs` (Patroni's etcd) touch the network. See the README for the user's view.

pub mod admin;
pub mod agent;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod dcs;
pub mod health;
pub mod notify;
pub mod plan;
pub mod render;
pub mod status;
