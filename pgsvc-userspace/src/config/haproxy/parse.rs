//! The directives of the subset (see the parent module), section by section. Values stay as
//! written where their meaning belongs to the plan (times, `default-server` lines); addresses,
//! ports and counts are checked here, where the line is known.

use std::net::Ipv4Addr;

use super::values::{balance, bind, count, mode, pairs, rest, server, timeout};
use super::{HaproxyError, Line};
use crate::config::{Location, Warning, WarningKind};

/// The whole configuration, every file read.
#[derive(Clone, Debug, Default)]
pub struct HaproxyConfig {
    /// `global` `maxconn`.
    pub global_maxconn: Option<u32>,
    /// TCP `listen` sections in file order.
    pub listens: Vec<Listen>,
}

/// A value with the line it came from.
pub type At<T> = (T, Location);

/// A `defaults` section: what every `listen` after it starts from.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub http: bool,
    pub maxconn: Option<u32>,
    pub balance: Option<At<String>>,
    pub default_server: Option<At<String>>,
    /// `timeout check` as written.
    pub timeout_check: Option<At<String>>,
}

/// One TCP `listen` section.
#[derive(Clone, Debug)]
pub struct Listen {
    pub name: String,
    pub at: Location,
    /// `None` address: `*`.
    pub bind: Option<At<(Option<Ipv4Addr>, u16)>>,
    pub maxconn: Option<u32>,
    /// `roundrobin`, `leastconn` or `source` (from the listen, else from its defaults).
    pub balance: Option<At<String>>,
    pub httpchk: bool,
    /// `http-check send … uri` (or `option httpchk METH URI`).
    pub check_uri: Option<At<String>>,
    pub allbackups: bool,
    /// The `defaults` `default-server` line followed by the listen's own.
    pub default_server: Option<At<String>>,
    pub timeout_check: Option<At<String>>,
    pub servers: Vec<Server>,
    /// The defaults the listen started from.
    pub defaults: Defaults,
}

/// One `server` line.
#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    pub at: Location,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `port` (else the server's own port, as in HAProxy).
    pub check_port: Option<u16>,
    pub check_tls: bool,
    pub ca_file: Option<String>,
    pub weight: Option<u32>,
    pub backup: bool,
}

const SECTIONS: [&str; 13] = [
    "global",
    "defaults",
    "listen",
    "frontend",
    "backend",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "cache",
    "http-errors",
    "ring",
    "program",
];

const GLOBAL_IGNORED: [&str; 24] = [
    "log",
    "log-send-hostname",
    "stats",
    "daemon",
    "master-worker",
    "user",
    "group",
    "uid",
    "gid",
    "chroot",
    "pidfile",
    "nbthread",
    "nbproc",
    "cpu-map",
    "ulimit-n",
    "ca-base",
    "crt-base",
    "hard-stop-after",
    "description",
    "node",
    "setenv",
    "presetenv",
    "spread-checks",
    "quiet",
];

const OPTIONS_IGNORED: [&str; 8] = [
    "dontlognull",
    "dontlog-normal",
    "tcplog",
    "httplog",
    "redispatch",
    "tcpka",
    "clitcpka",
    "srvtcpka",
];

/// Reads files one after the other, keeping the current `defaults`.
#[derive(Default)]
pub struct Reader {
    config: HaproxyConfig,
    defaults: Defaults,
    warnings: Vec<Warning>,
}

impl Reader {
    /// Reads one file's lines.
    ///
    /// # Errors
    /// The first directive outside the subset.
    pub fn file(&mut self, lines: &[Line]) -> Result<(), HaproxyError> {
        let mut start = None;
        for (i, line) in lines.iter().enumerate() {
            if SECTIONS.contains(&line.words[0].as_str()) {
                if let Some(s) = start {
                    self.section(&lines[s], &lines[s + 1..i])?;
                }
                start = Some(i);
            } else if start.is_none() {
                return Err(line.error("directive outside any section (expected `global`, `defaults` or `listen` first)"));
            }
        }
        if let Some(s) = start {
            self.section(&lines[s], &lines[s + 1..])?;
        }
        Ok(())
    }

    /// The configuration read, with its warnings.
    ///
    /// # Errors
    /// [`HaproxyError::NoListen`] when no TCP `listen` was read.
    pub fn finish(self, names: &str) -> Result<(HaproxyConfig, Vec<Warning>), HaproxyError> {
        if self.config.listens.is_empty() {
            return Err(HaproxyError::NoListen {
                files: names.to_owned(),
            });
        }
        Ok((self.config, self.warnings))
    }

    fn ignore(&mut self, line: &Line, why: &str) {
        self.warnings.push(Warning {
            kind: WarningKind::IgnoredDirective,
            at: Some(line.at.clone()),
            message: format!("`{}` ignored: {why}", line.text()),
        });
    }

    fn section(&mut self, head: &Line, body: &[Line]) -> Result<(), HaproxyError> {
        let kind = head.words[0].as_str();
        let interpreted = match kind {
            "global" | "defaults" => true,
            "listen" | "frontend" | "backend" => !self.is_http(body),
            _ => false,
        };
        if interpreted && let Some(line) = std::iter::once(head).chain(body).find(|l| l.quoted) {
            return Err(line.error(
                "quotes and backslash escapes are not supported (pgsvc reads the subset Pigsty writes)",
            ));
        }
        match kind {
            "global" => self.global(body),
            "defaults" => self.defaults_section(head, body),
            "listen" | "frontend" | "backend" => {
                if self.is_http(body) {
                    self.ignore(
                        head,
                        "an HTTP proxy (the stats page or exporter): pgsvc serves /metrics itself",
                    );
                    return Ok(());
                }
                if kind != "listen" {
                    return Err(head.error(
                        "TCP `frontend`/`backend` sections are outside the subset (pgsvc reads `listen` sections, as Pigsty writes them)",
                    ));
                }
                self.listen(head, body)
            }
            _ => {
                self.ignore(head, "this section does not change where connections go");
                Ok(())
            }
        }
    }

    /// Whether a proxy section is in `mode http` (its own `mode`, else its defaults').
    fn is_http(&self, body: &[Line]) -> bool {
        body.iter()
            .rev()
            .find(|l| l.words[0] == "mode")
            .map_or(self.defaults.http, |l| {
                l.words.get(1).is_some_and(|m| m == "http")
            })
    }

    fn global(&mut self, body: &[Line]) -> Result<(), HaproxyError> {
        for line in body {
            let key = line.words[0].as_str();
            if key == "maxconn" {
                self.config.global_maxconn = Some(count(line, 1)?);
            } else if GLOBAL_IGNORED.contains(&key)
                || key.starts_with("ssl-default-")
                || key.starts_with("tune.")
            {
                self.ignore(line, "a process setting without meaning for pgsvc");
            } else {
                return Err(line.error("unknown or unsupported `global` directive"));
            }
        }
        Ok(())
    }

    fn defaults_section(&mut self, head: &Line, body: &[Line]) -> Result<(), HaproxyError> {
        if head.words.len() > 1 {
            return Err(head.error("named defaults sections are outside the subset"));
        }
        let mut d = Defaults::default();
        for line in body {
            match line.words[0].as_str() {
                "mode" => d.http = mode(line)?,
                "maxconn" => d.maxconn = Some(count(line, 1)?),
                "balance" => d.balance = Some(balance(line)?),
                "default-server" => d.default_server = Some(rest(line, 1)?),
                "timeout" => {
                    if let Some(t) = timeout(line)? {
                        d.timeout_check = Some(t);
                    }
                }
                "retries" => {
                    count(line, 1)?;
                }
                "log" | "description" => self.ignore(line, "logging is pgsvc's own"),
                "option" => self.option_ignored(line)?,
                _ => return Err(line.error("unknown or unsupported `defaults` directive")),
            }
        }
        self.defaults = d;
        Ok(())
    }

    fn option_ignored(&mut self, line: &Line) -> Result<(), HaproxyError> {
        match line.words.get(1).map(String::as_str) {
            Some(o) if OPTIONS_IGNORED.contains(&o) => {
                self.ignore(line, "no effect on routing");
                Ok(())
            }
            _ => Err(line.error("option outside the subset")),
        }
    }

    fn listen(&mut self, head: &Line, body: &[Line]) -> Result<(), HaproxyError> {
        let [_, name] = head.words.as_slice() else {
            return Err(
                head.error("expected `listen NAME` (a bind address on this line is not supported)")
            );
        };
        if let Some(first) = self.config.listens.iter().find(|l| &l.name == name) {
            return Err(head.error(format!(
                "listen `{name}` is already defined at {}",
                first.at
            )));
        }
        let d = self.defaults.clone();
        let mut l = Listen {
            name: name.clone(),
            at: head.at.clone(),
            bind: None,
            maxconn: None,
            balance: d.balance.clone(),
            httpchk: false,
            check_uri: None,
            allbackups: false,
            default_server: d.default_server.clone(),
            timeout_check: d.timeout_check.clone(),
            servers: Vec::new(),
            defaults: d,
        };
        for line in body {
            let w = &line.words;
            match w[0].as_str() {
                "mode" => {
                    mode(line)?;
                }
                "bind" => {
                    if l.bind.is_some() {
                        return Err(line.error("a second `bind`: pgsvc serves one address per service (use `*:PORT` for every address)"));
                    }
                    l.bind = Some((bind(line)?, line.at.clone()));
                }
                "maxconn" => l.maxconn = Some(count(line, 1)?),
                "balance" => l.balance = Some(balance(line)?),
                "option" => match w.get(1).map(String::as_str) {
                    Some("httpchk") => {
                        l.httpchk = true;
                        match w.len() {
                            2 => {}
                            4 if w[2] == "OPTIONS" => l.check_uri = Some((w[3].clone(), line.at.clone())),
                            _ => return Err(line.error("expected `option httpchk` or `option httpchk OPTIONS URI` (pgsvc checks with OPTIONS)")),
                        }
                    }
                    Some("http-keep-alive") if w.len() == 2 => {}
                    Some("allbackups") if w.len() == 2 => l.allbackups = true,
                    _ => self.option_ignored(line)?,
                },
                "http-check" => match w.get(1).map(String::as_str) {
                    Some("send") => {
                        let (meth, uri) = pairs(line)?;
                        if meth.as_deref() != Some("OPTIONS") || uri.is_none() {
                            return Err(line.error("expected `http-check send meth OPTIONS uri URI` (pgsvc checks Patroni with OPTIONS)"));
                        }
                        l.check_uri = uri.map(|u| (u, line.at.clone()));
                    }
                    Some("expect") if w.len() == 4 && w[2] == "status" && w[3] == "200" => {}
                    _ => return Err(line.error("pgsvc supports `http-check send meth OPTIONS uri URI` and `http-check expect status 200`")),
                },
                "default-server" => {
                    let (own, at) = rest(line, 1)?;
                    l.default_server = Some(match l.defaults.default_server.as_ref() {
                        Some((base, _)) => (format!("{base} {own}"), at),
                        None => (own, at),
                    });
                }
                "timeout" => match timeout(line)? {
                    Some(t) => l.timeout_check = Some(t),
                    None => self.ignore(line, "only `timeout check` is read per listen"),
                },
                "server" => l.servers.push(server(line)?),
                "log" | "description" => self.ignore(line, "logging is pgsvc's own"),
                _ => return Err(line.error("unknown or unsupported `listen` directive")),
            }
        }
        if l.bind.is_none() {
            return Err(head.error("listen has no `bind IP:PORT`"));
        }
        if !l.httpchk {
            return Err(head.error("listen has no `option httpchk`: pgsvc checks every server over HTTP, as Pigsty configures it"));
        }
        if l.check_uri.is_none() {
            return Err(
                head.error("listen has no check URI (`http-check send meth OPTIONS uri URI`)")
            );
        }
        self.config.listens.push(l);
        Ok(())
    }
}
