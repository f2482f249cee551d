//! Where each cluster's etcd is and how to log in to it — the way Pigsty configures vip-manager and
//! Patroni for that cluster: endpoints = the `etcd` group's hosts on `etcd_port` (2379), TLS with
//! `/pg/cert/ca.crt` and the client pair `/pg/cert/server.{crt,key}` when they exist (https; plain
//! http without a CA), RBAC user = the cluster name, password = `pg_etcd_password` (default: the
//! cluster name), key namespace = `pg_namespace` (`/pg`). Every piece can be overridden with an
//! `--etcd-*` flag; with HAProxy files as the source only the flags say where etcd is.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::{config, plan::ConfigSource};

/// Where Pigsty puts each node's certificates.
pub const PIGSTY_CERT_DIR: &str = "/pg/cert";
/// Pigsty's `etcd_port` and `pg_namespace` defaults.
pub const DEFAULT_ETCD_PORT: u16 = 2379;
pub const DEFAULT_NAMESPACE: &str = "/pg";

/// `--dcs`: whether to watch the leader key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DcsMode {
    /// Watch etcd when the inventory (or `--etcd-endpoints`) names it; REST checks alone otherwise.
    #[default]
    Auto,
    /// Watch etcd; no endpoint is an error.
    Etcd,
    /// REST checks alone, exactly as without a DCS.
    Off,
}

/// `--etcd-*` flags: each one replaces what the inventory says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdOverrides {
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub namespace: Option<String>,
}

/// How one cluster's watch reaches etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// URLs (`https://198.18.0.5:2379`).
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    /// Client certificate and key (both or neither).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// RBAC user and password.
    pub user: Option<(String, String)>,
    pub namespace: String,
}

impl std::fmt::Debug for EtcdSettings {
    // The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("ca", &self.ca)
            .field("identity", &self.identity)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("namespace", &self.namespace)
            .finish()
    }
}

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error(
        "--dcs etcd: no etcd endpoint for cluster {cluster} (the inventory has no `etcd` group; give --etcd-endpoints)"
    )]
    NoEndpoints { cluster: String },
    #[error("--etcd-cert and --etcd-key go together (one of them is missing)")]
    HalfIdentity,
    #[error("reading the inventory for the etcd settings")]
    Inventory {
        #[source]
        source: config::ConfigError,
    },
    #[error("{path}: cannot read the etcd password file")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The etcd settings of each of `clusters`; empty when the DCS is off or, in auto mode, nowhere to
/// be found.
///
/// # Errors
/// [`SettingsError`]: `--dcs etcd` without endpoints, half a client identity, an unreadable
/// inventory.
pub fn settings_for_clusters(
    source: &ConfigSource,
    clusters: &[String],
    mode: DcsMode,
    flags: &EtcdOverrides,
) -> Result<Vec<(String, EtcdSettings)>, SettingsError> {
    if mode == DcsMode::Off {
        return Ok(Vec::new());
    }
    let inventory = match source {
        ConfigSource::Inventory(path) => Some(
            config::load_inventory(path)
                .map_err(|source| SettingsError::Inventory { source })?
                .0,
        ),
        ConfigSource::Haproxy(_) => None,
    };
    let mut out = Vec::new();
    for cluster in clusters {
        let found = inventory
            .as_ref()
            .map(|inv| from_inventory(inv, cluster))
            .unwrap_or_default();
        let s = resolve(cluster, found, flags, Path::new(PIGSTY_CERT_DIR))?;
        match s {
            Some(s) => out.push((cluster.clone(), s)),
            None if mode == DcsMode::Etcd => {
                return Err(SettingsError::NoEndpoints {
                    cluster: cluster.clone(),
                });
            }
            None => {}
        }
    }
    Ok(out)
}

/// What the inventory says about one cluster's etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromInventory {
    /// `host:port` of every `etcd` group member.
    pub hosts: Vec<String>,
    pub password: Option<String>,
    pub namespace: Option<String>,
}

/// The `etcd` group's members and the cluster's `pg_etcd_password` and `pg_namespace`.
#[must_use]
pub fn from_inventory(inv: &config::Inventory, cluster: &str) -> FromInventory {
    let text = |h: &config::Host, name: &str| h.var(name).and_then(config::Node::scalar_text);
    let hosts = inv
        .hosts
        .iter()
        .filter(|h| h.groups.iter().any(|g| g == "etcd"))
        .map(|h| {
            let port = text(h, "etcd_port")
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(DEFAULT_ETCD_PORT);
            format!("{}:{port}", h.name)
        })
        .collect();
    let member = inv
        .hosts
        .iter()
        .find(|h| text(h, "pg_cluster").as_deref() == Some(cluster));
    FromInventory {
        hosts,
        password: member.and_then(|h| text(h, "pg_etcd_password")),
        namespace: member.and_then(|h| text(h, "pg_namespace")),
    }
}

/// Inventory values under the flags, with Pigsty's defaults (`cert_dir`'s files when present).
///
/// # Errors
/// Half a client identity, an unreadable `@FILE` password.
pub fn resolve(
    cluster: &str,
    found: FromInventory,
    flags: &EtcdOverrides,
    cert_dir: &Path,
) -> Result<Option<EtcdSettings>, SettingsError> {
    let hosts = if flags.endpoints.is_empty() {
        found.hosts
    } else {
        flags.endpoints.clone()
    };
    if hosts.is_empty() {
        return Ok(None);
    }
    let existing = |name: &str| Some(cert_dir.join(name)).filter(|p| p.is_file());
    let ca = flags.ca.clone().or_else(|| existing("ca.crt"));
    let identity = match (&flags.cert, &flags.key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => existing("server.crt").zip(existing("server.key")),
        _ => return Err(SettingsError::HalfIdentity),
    };
    let scheme = if ca.is_some() { "https" } else { "http" };
    let endpoints = hosts
        .iter()
        .map(|h| {
            if h.contains("://") {
                h.clone()
            } else {
                format!("{scheme}://{h}")
            }
        })
        .collect();
    let password = match flags.password.as_deref() {
        Some(p) => p.strip_prefix('@').map_or_else(
            || Ok(p.to_owned()),
            |path| {
                std::fs::read_to_string(path)
                    .map(|t| t.lines().next().unwrap_or("").trim().to_owned())
                    .map_err(|source| SettingsError::PasswordFile {
                        path: PathBuf::from(path),
                        source,
                    })
            },
        )?,
        None => found.password.unwrap_or_else(|| cluster.to_owned()),
    };
    let user = flags.user.clone().unwrap_or_else(|| cluster.to_owned());
    Ok(Some(EtcdSettings {
        endpoints,
        ca,
        identity,
        user: Some((user, password)),
        namespace: flags
            .namespace
            .clone()
            .or(found.namespace)
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = "all:
  children:
    etcd:
      hosts:
        198.18.0.5: { etcd_seq: 1 }
        198.18.0.6: { etcd_seq: 2, etcd_port: 2479 }
      vars: { etcd_cluster: etcd }
    pg-test:
      hosts:
        198.18.0.11: { pg_seq: 1, pg_role: primary }
      vars: { pg_cluster: pg-test, pg_etcd_password: s3cret }
    pg-other:
      hosts:
        198.18.0.21: { pg_seq: 1, pg_role: primary }
      vars: { pg_cluster: pg-other }
  vars: { pg_namespace: /svc }
";

    fn inv() -> config::Inventory {
        config::parse_inventory(INV, "pigsty.yml")
            .expect("inventory")
            .0
    }

    fn no_certs() -> PathBuf {
        std::env::temp_dir().join("pgsvc-no-such-cert-dir")
    }

    #[test]
    fn the_inventory_gives_etcd_hosts_password_and_namespace() {
        let f = from_inventory(&inv(), "pg-test");
        assert_eq!(f.hosts, ["198.18.0.5:2379", "198.18.0.6:2479"]);
        assert_eq!(f.password.as_deref(), Some("s3cret"));
        assert_eq!(f.namespace.as_deref(), Some("/svc"));
        let s = resolve("pg-test", f, &EtcdOverrides::default(), &no_certs())
            .expect("settings")
            .expect("endpoints");
        assert_eq!(
            s.endpoints,
            ["http://198.18.0.5:2379", "http://198.18.0.6:2479"]
        );
        assert_eq!(s.user, Some(("pg-test".into(), "s3cret".into())));
        assert_eq!(s.namespace, "/svc");
        assert!(s.ca.is_none() && s.identity.is_none());
    }

    #[test]
    fn the_password_defaults_to_the_cluster_name_as_in_pigsty() {
        let f = from_inventory(&inv(), "pg-other");
        let s = resolve("pg-other", f, &EtcdOverrides::default(), &no_certs())
            .expect("settings")
            .expect("endpoints");
        assert_eq!(s.user, Some(("pg-other".into(), "pg-other".into())));
    }

    #[test]
    fn pigsty_cert_files_turn_https_on_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("pgsvc-dcs-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for f in ["ca.crt", "server.crt", "server.key"] {
            std::fs::write(dir.join(f), "x").expect("file");
        }
        let f = from_inventory(&inv(), "pg-test");
        let s = resolve("pg-test", f.clone(), &EtcdOverrides::default(), &dir)
            .expect("settings")
            .expect("endpoints");
        assert_eq!(s.endpoints[0], "https://198.18.0.5:2379");
        assert_eq!(s.ca, Some(dir.join("ca.crt")));
        assert_eq!(
            s.identity,
            Some((dir.join("server.crt"), dir.join("server.key")))
        );
        let flags = EtcdOverrides {
            endpoints: vec!["http://198.18.1.1:2379".into(), "198.18.1.2:2379".into()],
            user: Some("root".into()),
            password: Some("pw".into()),
            namespace: Some("/x".into()),
            ..EtcdOverrides::default()
        };
        let s = resolve("pg-test", f, &flags, &dir)
            .expect("settings")
            .expect("endpoints");
        assert_eq!(
            s.endpoints,
            ["http://198.18.1.1:2379", "https://198.18.1.2:2379"]
        );
        assert_eq!(s.user, Some(("root".into(), "pw".into())));
        assert_eq!(s.namespace, "/x");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn half_an_identity_is_refused() {
        let flags = EtcdOverrides {
            endpoints: vec!["198.18.1.1:2379".into()],
            cert: Some("/c".into()),
            ..EtcdOverrides::default()
        };
        let e = resolve("c", FromInventory::default(), &flags, &no_certs());
        assert!(matches!(e, Err(SettingsError::HalfIdentity)));
    }

    #[test]
    fn without_etcd_anywhere_auto_watches_nothing_and_etcd_mode_refuses() {
        let dir = std::env::temp_dir().join(format!("pgsvc-dcs-inv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pigsty.yml");
        std::fs::write(
            &path,
            "all:\n  children:\n    pg-test:\n      hosts:\n        198.18.0.11: { pg_seq: 1, pg_role: primary }\n      vars: { pg_cluster: pg-test }\n",
        )
        .expect("inventory");
        let src = ConfigSource::Inventory(path);
        let clusters = ["pg-test".to_owned()];
        let none = settings_for_clusters(&src, &clusters, DcsMode::Auto, &EtcdOverrides::default())
            .expect("auto");
        assert!(none.is_empty());
        let off = settings_for_clusters(&src, &clusters, DcsMode::Off, &EtcdOverrides::default())
            .expect("off");
        assert!(off.is_empty());
        let e = settings_for_clusters(&src, &clusters, DcsMode::Etcd, &EtcdOverrides::default());
        let msg = e.expect_err("no endpoints").to_string();
        assert!(
            msg.contains("pg-test") && msg.contains("--etcd-endpoints"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
