//! Where the upstream is: the URL taken apart once, at start-up, into what each layer needs.
//!
//! - the resolver needs the host (a DNS name, or an IP literal that needs no lookup) and the port;
//! - TLS needs the server name to verify the certificate against (RFC 6125: a DNS name or an IP address);
//! - the request needs the path and the `Host` header value.
//!
//! Only the URL forms a work endpoint needs are accepted (RFC 3986 §3, restricted):
//! `http[s]://host[:port][/path][?query]`, where host is a DNS name, an IPv4 address or `[IPv6]`.
//! Userinfo (`user:pass@`) and fragments are rejected rather than ignored: a credential in the URL would
//! otherwise be silently dropped, and a fragment is never sent to a server anyway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls_pki_types::{DnsName, ServerName};

/// The path asked for when the URL has none (or just `/`).
const DEFAULT_PATH: &str = "/api/work";

/// The upstream's host, as the URL spelled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// A DNS name, lower-cased; needs a lookup.
    Name(String),
    /// An IP literal; connects directly.
    Ip(IpAddr),
}

/// The parsed upstream URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `https`: speak TLS after connecting.
    pub tls: bool,
    pub host: Host,
    pub port: u16,
    /// Path and query, as sent in the request line: `/api/work`, `/x?y=1`.
    pub path_and_query: String,
    /// The `Host` header value (RFC 9110 §7.2): host, `[v6]` in brackets, and the port only when it is not the
    /// scheme's default.
    pub host_header: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("invalid upstream URL {url:?}: {why}");

        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected http://host/... or https://host/..."))?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (false, 80),
            "https" => (true, 443),
            _ => return Err(bad("only http and https are supported")),
        };
        if rest.contains('#') {
            return Err(bad("remove the #fragment: it is never sent to a server"));
        }

        // The authority runs up to the first '/' or '?' (RFC 3986 §3.2).
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(bad("user:password@ in the URL is not supported"));
        }

        let (host, port) = split_host_port(authority).map_err(&bad)?;
        let port = match port {
            None => default_port,
            Some(digits) => parse_port(digits)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
        };

        // The query (from its '?') stays as it came; an empty path, or just "/", is DEFAULT_PATH.
        let (path, query) =
            path_and_query.split_at(path_and_query.find('?').unwrap_or(path_and_query.len()));
        let path = match path {
            "" | "/" => DEFAULT_PATH,
            path => path,
        };
        let path_and_query = format!("{path}{query}");
        // The request line is `GET <target> HTTP/1.1`: a space or control byte would break it (RFC 9112 §3.2).
        if !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the path may hold only visible ASCII; percent-encode anything else",
            ));
        }

        let mut host_header = match &host {
            Host::Name(name) => name.clone(),
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        };
        if port != default_port {
            host_header = format!("{host_header}:{port}");
        }

        Ok(Target {
            tls,
            host,
            port,
            path_and_query,
            host_header,
        })
    }

    /// The name the server's certificate must match: its DNS name, or its IP address for an IP literal.
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, String> {
        match &self.host {
            Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
            Host::Name(name) => DnsName::try_from(name.clone())
                .map(ServerName::DnsName)
                .map_err(|_| format!("{name:?} is not a valid DNS name for TLS")),
        }
    }
}

/// Splits `host[:port]` or `[v6][:port]`, returning the host and the port digits if any.
fn split_host_port(authority: &str) -> Result<(Host, Option<&str>), &'static str> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| "invalid IPv6 address between [ ]")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after ']'")?),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }

    if authority.matches(':').count() > 1 {
        return Err("an IPv6 address must be written in [brackets]");
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("missing host");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Host::Ip(IpAddr::V4(ip)), port));
    }
    // RFC 1123 host names: letters, digits, '-' and '.'.
    let valid_name = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with(['.', '-'])
        && !host.contains("..");
    if !valid_name {
        return Err(
            "the host must be a DNS name, an IPv4 address, or an IPv6 address in [brackets]",
        );
    }
    Ok((Host::Name(host.to_ascii_lowercase()), port))
}

/// `1*DIGIT`, 1..=65535. `u16::from_str` alone would also accept a leading `+`.
fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn the_real_upstream_url_parses_to_https_port_443() {
        let t = parse("https://exponea-engineering-assignment.appspot.com/api/work");
        assert!(t.tls);
        assert_eq!(
            t.host,
            Host::Name("exponea-engineering-assignment.appspot.com".into())
        );
        assert_eq!(t.port, 443);
        assert_eq!(t.path_and_query, "/api/work");
        assert_eq!(t.host_header, "exponea-engineering-assignment.appspot.com");
    }

    #[test]
    fn an_empty_path_or_slash_means_api_work() {
        assert_eq!(parse("http://example.com").path_and_query, "/api/work");
        assert_eq!(parse("http://example.com/").path_and_query, "/api/work");
        assert_eq!(
            parse("http://example.com?x=1").path_and_query,
            "/api/work?x=1"
        );
        assert_eq!(
            parse("http://example.com/other?x=1&y").path_and_query,
            "/other?x=1&y"
        );
    }

    #[test]
    fn the_host_header_carries_the_port_only_when_not_default() {
        assert_eq!(parse("http://Example.COM:80/").host_header, "example.com");
        assert_eq!(
            parse("http://example.com:8080/").host_header,
            "example.com:8080"
        );
        assert_eq!(parse("https://example.com:443/").host_header, "example.com");
        assert_eq!(
            parse("https://example.com:80/").host_header,
            "example.com:80"
        );
    }

    #[test]
    fn ip_literals_need_no_lookup_and_name_the_tls_server_by_address() {
        let v4 = parse("http://127.0.0.1:3000/api/work");
        assert_eq!(
            (v4.host.clone(), v4.port),
            (Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), 3000)
        );
        assert_eq!(v4.host_header, "127.0.0.1:3000");

        let v6 = parse("https://[::1]:8443");
        assert_eq!(v6.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(v6.host_header, "[::1]:8443");
        assert!(matches!(v6.server_name(), Ok(ServerName::IpAddress(_))));
        assert_eq!(parse("https://[::1]").port, 443);

        assert!(matches!(
            parse("https://localhost").server_name(),
            Ok(ServerName::DnsName(_))
        ));
    }

    #[test]
    fn rejects_what_it_cannot_send_with_a_message_naming_the_problem() {
        let cases = [
            ("ftp://example.com/", "only http and https"),
            ("example.com/api/work", "expected http://"),
            ("http://user:pw@example.com/", "user:password@"),
            ("http://example.com/#top", "fragment"),
            ("http:///api/work", "missing host"),
            ("http://example.com:0/", "port"),
            ("http://example.com:99999/", "port"),
            ("http://example.com:+80/", "port"),
            ("http://example.com:/", "port"),
            ("http://::1/", "[brackets]"),
            ("http://[::1/", "missing ']'"),
            ("http://[::1]x/", "after ']'"),
            ("http://exa mple.com/", "DNS name"),
            ("http://example.com/a b", "visible ASCII"),
        ];
        for (url, needle) in cases {
            match Target::parse(url) {
                Ok(t) => panic!("{url} parsed as {t:?}"),
                Err(e) => assert!(e.contains(needle), "{url}: {e:?} should mention {needle:?}"),
            }
        }
    }
}
