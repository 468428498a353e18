//! Where the deliverer may connect: the egress policy, checked before every provider request.
//!
//! - HTTP providers and webhooks: `https://` to public addresses. Plain `http://`, and addresses
//!   that are loopback, private, link-local (cloud metadata services live at 169.254.169.254),
//!   carrier-grade NAT, unspecified or unique-local, only for hosts listed in
//!   `engage.allowed_hosts`.
//! - SMTP is sent without TLS, so its host must be listed in `engage.allowed_hosts` (a relay the
//!   operator trusts, which then speaks TLS onwards).
//!
//! A host name is resolved and every address it resolves to is checked. Pure Rust, no PostgreSQL
//! calls: it runs on the sending threads; the setting is read by the worker's main thread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

/// The policy, from `engage.allowed_hosts`: a comma-separated list of host names or IP
/// addresses, each optionally with `:port`.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allowed: Vec<(String, Option<u16>)>,
}

impl Egress {
    pub fn parse(setting: &str) -> Egress {
        let allowed = setting
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let entry = entry.to_ascii_lowercase();
                match entry.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                        (host.trim_matches(['[', ']']).to_string(), port.parse().ok())
                    }
                    _ => (entry.trim_matches(['[', ']']).to_string(), None),
                }
            })
            .collect();
        Egress { allowed }
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allowed.iter().any(|(h, p)| *h == host && p.is_none_or(|p| p == port))
    }

    /// Checks a provider URL; the error says what was refused and how to allow it.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| format!("\"{}\" is not a URL", crate::rule::error::excerpt(url)))?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            other => return Err(format!("scheme \"{other}\" is not allowed: providers are reached over https")),
        };
        let (host, port) = split_host_port(authority, default_port)?;
        if self.allows(&host, port) {
            return Ok(());
        }
        if scheme == "http" {
            return Err(format!(
                "plain http to {host} is not allowed: use https, or add \"{host}\" to engage.allowed_hosts"
            ));
        }
        self.check_public(&host, port)
    }

    /// Checks a plain (unencrypted) connection, such as SMTP without TLS: only to listed hosts.
    pub fn check_plain(&self, host: &str, port: u16) -> Result<(), String> {
        if self.allows(host, port) {
            Ok(())
        } else {
            Err(format!(
                "a plain connection to {host}:{port} is not allowed: add \"{host}\" to engage.allowed_hosts (a relay you trust)"
            ))
        }
    }

    /// Checks an encrypted connection that is not a URL (SMTP with STARTTLS): public addresses,
    /// or listed hosts.
    pub fn check_encrypted(&self, host: &str, port: u16) -> Result<(), String> {
        if self.allows(host, port) {
            Ok(())
        } else {
            self.check_public(host, port)
        }
    }

    /// Refuses a host whose addresses are not public.
    fn check_public(&self, host: &str, port: u16) -> Result<(), String> {
        let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            // Unresolvable: the request itself fails with a clear transport error.
            Err(_) => (host, port).to_socket_addrs().map(|a| a.map(|s| s.ip()).collect()).unwrap_or_default(),
        };
        match addresses.iter().find(|ip| !is_public(ip)) {
            Some(ip) => Err(format!(
                "{host} is a non-public address ({ip}): add \"{host}\" to engage.allowed_hosts to allow it"
            )),
            None => Ok(()),
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| format!("bad host \"{}\"", crate::rule::error::excerpt(authority)))?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".to_string());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port \"{}\"", crate::rule::error::excerpt(p)))?,
        None => default_port,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Whether an address is on the public internet (not loopback, private, link-local, ...).
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(&v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: &Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)))
}

fn public_v6(ip: &Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_to_public_addresses_only_unless_allowed() {
        let none = Egress::parse("");
        assert!(none.check_url("https://93.184.216.34/hook").is_ok());
        for refused in [
            "http://93.184.216.34/hook",
            "https://127.0.0.1:8443/hook",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "ftp://93.184.216.34/x",
            "https://localhost/x",
            "not a url",
        ] {
            assert!(none.check_url(refused).is_err(), "{refused}");
        }
        let local = Egress::parse(" 127.0.0.1 , sink.internal:8080, [::1]");
        assert!(local.check_url("http://127.0.0.1:55491/hook").is_ok());
        assert!(local.check_url("http://user:pw@127.0.0.1/hook").is_ok());
        assert!(local.check_url("http://sink.internal:8080/x").is_ok());
        assert!(local.check_url("http://sink.internal:8081/x").is_err(), "the port is part of the entry");
        assert!(local.check_url("https://[::1]:9000/x").is_ok());
        assert!(local.check_plain("127.0.0.1", 25).is_ok());
        assert!(none.check_plain("smtp.example.com", 25).is_err());
        let err = none.check_url("https://169.254.169.254/x").unwrap_err();
        assert!(err.contains("engage.allowed_hosts"), "{err}");
    }
}
