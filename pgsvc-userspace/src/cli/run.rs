//! `pgsvc run`: the agent.

use std::{net::Ipv4Addr, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    agent::{self, AgentOptions},
    datapath::{AttachMode, Timeouts},
    dcs::{DcsMode, EtcdOverrides},
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
    /// Admin API (status, metrics, ready, POST /reload): keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:9102")]
    pub admin: SocketAddr,
    /// Read-only metrics listener (GET /metrics only), where Pigsty scrapes HAProxy; `off` disables it.
    #[arg(long, default_value = "0.0.0.0:9101", value_parser = parse_metrics_addr)]
    pub metrics: MetricsAddr,
    /// Basic auth for the metrics listener, like HAProxy's `stats auth`: `USER:PASS`, or `@FILE`
    /// to read `USER:PASS` from the first line of FILE (keeps the password out of `ps`).
    #[arg(long, value_name = "USER:PASS|@FILE")]
    pub metrics_auth: Option<String>,
    /// Where maps and the XDP link are pinned (bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/pgsvc")]
    pub pin_dir: PathBuf,
    /// Established connections tracked at once (the half-open/closing and reverse tables are sized
    /// from it: README, "Sizing --max-flows").
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
    /// Watch Patroni's leader key in etcd and fence write services (checks /primary, /leader,
    /// /master) on it: `auto` when the inventory has an `etcd` group or --etcd-endpoints is given,
    /// `etcd` to require it, `off` for REST checks alone.
    #[arg(long, value_enum, default_value_t = DcsMode::Auto)]
    pub dcs: DcsMode,
    /// etcd endpoints, comma-separated (`https://IP:2379` or `IP:2379`) [default: the inventory's
    /// `etcd` group on `etcd_port`, https when a CA is given or /pg/cert/ca.crt exists].
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub etcd_endpoints: Vec<String>,
    /// CA of etcd's certificate [default: /pg/cert/ca.crt when it exists].
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key for etcd [default: /pg/cert/server.crt and .key when they exist].
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd RBAC user [default: the cluster's name, as Pigsty creates it].
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// etcd password, or `@FILE` to read it from FILE's first line [default: the inventory's
    /// `pg_etcd_password`, else the cluster's name].
    #[arg(long, value_name = "PASS|@FILE")]
    pub etcd_password: Option<String>,
    /// Patroni's DCS namespace [default: the inventory's `pg_namespace`, else /pg].
    #[arg(long)]
    pub etcd_namespace: Option<String>,
    /// Clients on the node itself are balanced by cgroup socket programs attached to this cgroup v2
    /// directory and inherited by every cgroup below it [default: the cgroup v2 root, i.e. every
    /// process of the node].
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Start even when another process (HAProxy still running?) listens on a service port of a
    /// local address; without it, pgsvc refuses to start and names the port and the process.
    #[arg(long)]
    pub takeover: bool,
    /// Own the cluster's VIP in place of vip-manager: add `pg_vip_address` to --iface only while
    /// this node's member holds Patroni's leader key, with gratuitous ARP, and remove it when the
    /// key leaves (needs the DCS). Leave off while vip-manager runs.
    #[arg(long, conflicts_with = "vip")]
    pub own_vip: bool,
    /// With --own-vip: how long a VIP is kept while etcd does not answer (Patroni's `ttl`; after
    /// it the leader key has expired and another member may hold it).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub vip_ttl: u64,
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
        metrics: args.metrics.0,
        metrics_auth: match args.metrics_auth.as_deref() {
            Some(spec) => Some(read_metrics_auth(spec)?),
            None => None,
        },
        pin_dir: args.pin_dir,
        max_flows: args.max_flows,
        keep: args.keep,
        ca_file: args.ca_file,
        check_burst: (args.check_burst > 0).then(|| Duration::from_millis(args.check_burst)),
        timeouts: Timeouts {
            idle_ns: args.idle_timeout.saturating_mul(1_000_000_000),
            ..Timeouts::default()
        },
        dcs: args.dcs,
        etcd: EtcdOverrides {
            endpoints: args.etcd_endpoints,
            ca: args.etcd_ca,
            cert: args.etcd_cert,
            key: args.etcd_key,
            user: args.etcd_user,
            password: args.etcd_password,
            namespace: args.etcd_namespace,
        },
        cgroup: args.cgroup,
        takeover: args.takeover,
        own_vip: args
            .own_vip
            .then(|| Duration::from_secs(args.vip_ttl.max(1))),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(agent::WORKER_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent::run(opts))?;
    Ok(ExitCode::SUCCESS)
}

/// `--metrics`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        return Ok(MetricsAddr(None));
    }
    let s = s
        .strip_prefix("*:")
        .map_or_else(|| s.to_owned(), |port| format!("0.0.0.0:{port}"));
    s.parse::<SocketAddr>()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("{e}: expected IP:PORT, *:PORT or off"))
}

/// `--metrics-auth USER:PASS` or `@FILE` (first line of FILE).
fn read_metrics_auth(spec: &str) -> anyhow::Result<crate::admin::BasicAuth> {
    let text = match spec.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --metrics-auth file {path}"))?,
        None => spec.to_owned(),
    };
    let line = text.lines().next().unwrap_or("").trim();
    crate::admin::BasicAuth::parse(line).map_err(|e| anyhow::anyhow!("--metrics-auth: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_parse_with_stars_and_off() {
        let addr = |s: &str| parse_metrics_addr(s).map(|m| m.0);
        assert_eq!(
            addr("*:9101"),
            Ok(Some("0.0.0.0:9101".parse().expect("addr")))
        );
        assert_eq!(
            addr("198.18.0.2:9101"),
            Ok(Some("198.18.0.2:9101".parse().expect("addr")))
        );
        assert_eq!(
            addr("[::]:9101"),
            Ok(Some("[::]:9101".parse().expect("addr")))
        );
        assert_eq!(addr("off"), Ok(None));
        assert!(addr("9101").is_err());
        assert!(addr("*:http").is_err());
    }

    #[test]
    fn metrics_auth_reads_a_file_or_the_argument() {
        let dir = std::env::temp_dir().join(format!("pgsvc-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("auth");
        std::fs::write(&file, "prom:s3cret\n").expect("auth file");
        let from_file = read_metrics_auth(&format!("@{}", file.display())).expect("file");
        assert!(from_file.accepts(Some("Basic cHJvbTpzM2NyZXQ=")));
        let inline = read_metrics_auth("prom:s3cret").expect("inline");
        assert_eq!(inline, from_file);
        let missing = read_metrics_auth(&format!("@{}", dir.join("nope").display()));
        assert!(missing.is_err());
        assert!(read_metrics_auth("nocolon").is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
