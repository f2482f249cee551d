//! `pgsvc run`: the agent.

use std::{net::Ipv4Addr, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    agent::{self, AgentOptions},
    datapath::{AttachMode, Timeouts},
};

use super::SourceArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub inventory: SourceArgs,
    /// Interface clients and servers are reached on (XDP attaches here).
    #[arg(long)]
    pub iface: String,
    /// Address to add to the interface while running, e.g. 198.18.0.3/24 (leave unset when
    /// vip-manager or keepalived owns the VIP).
    #[arg(long, value_parser = parse_cidr)]
    pub vip: Option<(Ipv4Addr, u8)>,
    /// Source address of translated connections [default: the interface's first IPv4 address].
    #[arg(long)]
    pub snat_ip: Option<Ipv4Addr>,
    /// SNAT port range, reserved from the kernel's ephemeral ports while running.
    #[arg(long, default_value = "40000-59999", value_parser = parse_range)]
    pub snat_ports: (u16, u16),
    /// XDP attach mode: auto tries native and falls back to generic (skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Admin API (status, metrics, reload).
    #[arg(long, default_value = "127.0.0.1:9101")]
    pub admin: SocketAddr,
    /// Where maps and the XDP link are pinned (bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/pgsvc")]
    pub pin_dir: PathBuf,
    /// Flow table size (connections tracked at once).
    #[arg(long, default_value_t = pgsvc_common::DEFAULT_MAX_FLOWS)]
    pub max_flows: u32,
    /// On exit, leave the program attached and its maps pinned: traffic keeps flowing and the next
    /// `pgsvc run` adopts it.
    #[arg(long)]
    pub keep: bool,
    /// CA bundle for health checks of members with `patroni_ssl_enabled`.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Idle timeout of established connections, seconds (HAProxy `timeout client/server`).
    #[arg(long, default_value_t = 86400)]
    pub idle_timeout: u64,
    /// Check interval, in milliseconds, while a server's health is changing, while its service has
    /// no usable server, and once right after another server of its service changed state. rise/fall
    /// still count as configured; 0 keeps HAProxy's inter/fastinter/downinter schedule to the letter.
    #[arg(long, default_value_t = 100)]
    pub check_burst: u64,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, default_value = "info")]
    pub log: String,
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    let prefix: u8 = p
        .parse()
        .map_err(|_| format!("{s:?}: prefix length must be 0-32"))?;
    if prefix > 32 {
        return Err(format!("{s:?}: prefix length must be 0-32"));
    }
    Ok((addr, prefix))
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LOW-HIGH"))?;
    let lo: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: bad port {a:?}"))?;
    let hi: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: bad port {b:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: need 1 <= LOW <= HIGH"));
    }
    Ok((lo, hi))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log {:?}", args.log))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("pgsvc run needs root (BPF, XDP, interface addresses)");
    }
    let opts = AgentOptions {
        source: args.inventory.source(),
        cluster: args.inventory.cluster,
        iface: args.iface,
        vip: args.vip,
        snat_ip: args.snat_ip,
        snat_ports: args.snat_ports.0..=args.snat_ports.1,
        xdp_mode: args.xdp_mode,
        admin: args.admin,
        pin_dir: args.pin_dir,
        max_flows: args.max_flows,
        keep: args.keep,
        ca_file: args.ca_file,
        check_burst: (args.check_burst > 0).then(|| Duration::from_millis(args.check_burst)),
        timeouts: Timeouts {
            idle_ns: args.idle_timeout.saturating_mul(1_000_000_000),
            ..Timeouts::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent::run(opts))?;
    Ok(ExitCode::SUCCESS)
}
