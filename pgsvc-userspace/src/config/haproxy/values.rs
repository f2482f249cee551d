//! The values of single directives: modes, counts, addresses, `server` lines.

use std::net::Ipv4Addr;

use super::parse::{At, Server};
use super::{HaproxyError, Line};

pub(super) fn mode(line: &Line) -> Result<bool, HaproxyError> {
    match line.words.get(1).map(String::as_str) {
        Some("tcp") if line.words.len() == 2 => Ok(false),
        Some("http") if line.words.len() == 2 => Ok(true),
        _ => Err(line.error("expected `mode tcp`")),
    }
}

pub(super) fn count(line: &Line, index: usize) -> Result<u32, HaproxyError> {
    if line.words.len() != index + 1 {
        return Err(line.error("expected one number"));
    }
    line.words[index].parse().map_err(|_| {
        line.error(format!(
            "`{}` is not a number 0..=4294967295",
            line.words[index]
        ))
    })
}

pub(super) fn balance(line: &Line) -> Result<At<String>, HaproxyError> {
    match line.words.get(1).map(String::as_str) {
        Some(b @ ("roundrobin" | "leastconn" | "source")) if line.words.len() == 2 => {
            Ok((b.to_owned(), line.at.clone()))
        }
        _ => {
            Err(line.error("pgsvc balances `roundrobin`, `leastconn` or `source` (read as maglev)"))
        }
    }
}

pub(super) fn rest(line: &Line, from: usize) -> Result<At<String>, HaproxyError> {
    if line.words.len() <= from {
        return Err(line.error("needs a value"));
    }
    Ok((line.words[from..].join(" "), line.at.clone()))
}

/// `timeout check T` → `Some(T)`; the other timeouts of the subset → `None`.
pub(super) fn timeout(line: &Line) -> Result<Option<At<String>>, HaproxyError> {
    match (line.words.get(1).map(String::as_str), line.words.len()) {
        (Some("check"), 3) => Ok(Some((line.words[2].clone(), line.at.clone()))),
        (
            Some(
                "connect" | "queue" | "client" | "server" | "tunnel" | "client-fin" | "server-fin",
            ),
            3,
        ) => Ok(None),
        _ => Err(line.error("unknown or unsupported timeout")),
    }
}

/// `http-check send meth M uri U`: (M, U).
pub(super) fn pairs(line: &Line) -> Result<(Option<String>, Option<String>), HaproxyError> {
    let (mut meth, mut uri) = (None, None);
    let mut words = line.words[2..].iter();
    while let Some(key) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| line.error(format!("`{key}` needs a value")))?;
        match key.as_str() {
            "meth" => meth = Some(value.clone()),
            "uri" => uri = Some(value.clone()),
            _ => return Err(line.error(format!("`{key}` is outside the subset"))),
        }
    }
    Ok((meth, uri))
}

pub(super) fn address(
    line: &Line,
    text: &str,
    any: bool,
) -> Result<(Option<Ipv4Addr>, u16), HaproxyError> {
    let bad = || {
        line.error(format!(
            "`{text}` is not IPV4:PORT{} (hostnames and IPv6 are outside the subset)",
            if any { " or *:PORT" } else { "" }
        ))
    };
    let (ip, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    if any && (ip == "*" || ip.is_empty()) {
        return Ok((None, port));
    }
    Ok((Some(ip.parse().map_err(|_| bad())?), port))
}

pub(super) fn bind(line: &Line) -> Result<(Option<Ipv4Addr>, u16), HaproxyError> {
    if line.words.len() != 2 {
        return Err(line.error(
            "expected `bind IP:PORT` (bind options and address lists are outside the subset)",
        ));
    }
    address(line, &line.words[1], true)
}

pub(super) fn server(line: &Line) -> Result<Server, HaproxyError> {
    let w = &line.words;
    if w.len() < 3 {
        return Err(line.error("expected `server NAME IP:PORT check …`"));
    }
    let (addr, port) = address(line, &w[2], false)?;
    let mut s = Server {
        name: w[1].clone(),
        at: line.at.clone(),
        addr: addr.ok_or_else(|| line.error("a server needs an address"))?,
        port,
        check_port: None,
        check_tls: false,
        ca_file: None,
        weight: None,
        backup: false,
    };
    let mut check = false;
    let mut words = w[3..].iter();
    while let Some(key) = words.next() {
        let mut value = || {
            words
                .next()
                .ok_or_else(|| line.error(format!("server keyword `{key}` needs a value")))
        };
        match key.as_str() {
            "check" => check = true,
            "check-ssl" => s.check_tls = true,
            "ca-file" => s.ca_file = Some(value()?.clone()),
            "backup" => s.backup = true,
            "port" => {
                let v = value()?;
                s.check_port = Some(
                    v.parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| line.error(format!("check port `{v}` is not 1..=65535")))?,
                );
            }
            "weight" => {
                let v = value()?;
                s.weight = Some(
                    v.parse()
                        .ok()
                        .filter(|w| *w <= 256)
                        .ok_or_else(|| line.error(format!("weight `{v}` is not 0..=256")))?,
                );
            }
            other => {
                return Err(line.error(format!("server keyword `{other}` is outside the subset (check, check-ssl, ca-file, port, weight, backup)")));
            }
        }
    }
    if !check {
        return Err(line.error("server without `check`: pgsvc routes only to servers it checks"));
    }
    Ok(s)
}
