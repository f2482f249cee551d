//! A one-member etcd (Debian's etcd-server) in a test namespace, and a client to write Patroni's
//! leader key from the test, for the netns tests that drive leader-key fencing.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions};

use crate::{guard::ChildGuard, netns::NsWorker};

pub const ETCD: &str = "/usr/bin/etcd";
pub const LEADER_KEY: &str = "/pg/pg-test/leader";

/// An etcd serving `http://{addr}:2379` in namespace `ns`; process and data removed on drop.
pub struct Etcd {
    pub proc: ChildGuard,
    url: String,
    worker: NsWorker<()>,
    dir: PathBuf,
}

/// Whether the etcd binary is installed (`cargo xtask setup` installs it).
pub fn available() -> bool {
    Path::new(ETCD).exists()
}

impl Etcd {
    /// Starts etcd as `ns_cmd` builds commands in the namespace, with its data under `dir`, and
    /// writes the leader key for `holder` once it answers.
    pub fn start(
        ns_name: &str,
        ns_cmd: impl Fn(&str) -> std::process::Command,
        addr: std::net::Ipv4Addr,
        dir: &Path,
        holder: &str,
    ) -> Self {
        let data = dir.join("etcd");
        let log_path = dir.join("etcd.log");
        let log = std::fs::File::create(&log_path).expect("etcd log");
        let url = format!("http://{addr}:2379");
        let peer = format!("http://{addr}:2380");
        let mut cmd = ns_cmd(ETCD);
        cmd.args(["--name", "dcs-test", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("dcs-test={peer}")])
            .stdout(Stdio::null())
            .stderr(log);
        let etcd = Self {
            proc: ChildGuard::spawn(cmd),
            url,
            worker: NsWorker::start(ns_name, || ()),
            dir: data,
        };
        let t0 = Instant::now();
        while etcd.put(LEADER_KEY, holder).is_err() {
            assert!(
                // Generous: the machine may be busy with parallel builds and tests.
                t0.elapsed() < Duration::from_secs(40),
                "etcd did not start; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` with a client (as `user`, when given) inside the namespace, each step bounded
    /// (connect and request 3 s).
    ///
    /// # Errors
    /// etcd unreachable, slow or refusing the request.
    pub fn with<R: Send + 'static>(
        &self,
        user: Option<(&str, &str)>,
        f: impl AsyncFnOnce(&mut Client) -> Result<R, etcd_client::Error> + Send + 'static,
    ) -> Result<R, etcd_client::Error> {
        let user = user.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let url = self.url.clone();
        self.worker.run(move |_| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut o = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
                if let Some((u, p)) = user {
                    o = o.with_user(u, p);
                }
                let mut c =
                    tokio::time::timeout(Duration::from_secs(3), Client::connect([url], Some(o)))
                        .await
                        .map_err(|_| {
                            etcd_client::Error::InvalidArgs("connect timed out".into())
                        })??;
                tokio::time::timeout(Duration::from_secs(3), f(&mut c))
                    .await
                    .map_err(|_| etcd_client::Error::InvalidArgs("request timed out".into()))?
            })
        })
    }

    /// Writes `key` = `value`.
    ///
    /// # Errors
    /// etcd unreachable or slow (3 s).
    pub fn put(&self, key: &str, value: &str) -> Result<(), etcd_client::Error> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with(None, async move |c| {
            c.put(key, value, None).await.map(|_| ())
        })
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// etcd unreachable or slow (3 s).
    pub fn delete(&self, key: &str) -> Result<(), etcd_client::Error> {
        let key = key.to_owned();
        self.with(None, async move |c| c.delete(key, None).await.map(|_| ()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.proc
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
