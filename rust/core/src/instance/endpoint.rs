//! The endpoint grammar: what registration accepts as an instance endpoint, and the
//! gRPC target a client dials for it. Python asks this grammar (`endpoint_target`)
//! rather than keeping a copy.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::shown;
use crate::error::{Error, Result};

/// The only scheme an endpoint may carry; everything else is a bare `host:port`.
const GRPC_SCHEME: &str = "grpc://";
const UNSUPPORTED_SCHEME: &str =
    "has an unsupported scheme: only grpc://host:port or a bare host:port is accepted";

/// Checks that an endpoint is something a gRPC client can dial directly:
/// `host:port`, optionally prefixed with `grpc://`.
///
/// Other schemes (`http://`, `https://`, `dns:///`, anything with `://`) are
/// refused rather than passed through, because clients would dial them as
/// plain gRPC targets and fail far from the registration that caused it.
/// The host is a DNS hostname (letters, digits, `-`, `.`, `_`), an IPv4
/// address, or an IPv6 address in brackets (`[::1]`); the port is a decimal
/// number in 1..=65535. Paths, queries, user-info, whitespace and control
/// characters are refused.
///
/// # Errors
///
/// [`Error::InvalidInstance`] showing the endpoint and saying what is wrong.
pub fn validate_endpoint(endpoint: &str) -> Result<()> {
    parse_endpoint(endpoint).map(drop).map_err(|problem| {
        Error::InvalidInstance(
            format!("invalid service instance: endpoint {} {problem}", shown(endpoint)).into(),
        )
    })
}

/// Splits a valid endpoint into its host (IPv6 brackets removed, ready for
/// `Ipv6Addr`/resolver use) and port; `None` if [`validate_endpoint`] would
/// refuse it.
#[must_use]
pub fn split_endpoint(endpoint: &str) -> Option<(&str, u16)> {
    parse_endpoint(endpoint).ok()
}

/// The gRPC target of a valid endpoint: `host:port` as written (IPv6 keeps its
/// brackets), without the `grpc://` scheme; `None` if [`validate_endpoint`]
/// would refuse it. Clients dial this, so it must follow the same grammar.
#[must_use]
pub fn endpoint_target(endpoint: &str) -> Option<&str> {
    parse_endpoint(endpoint).ok()?;
    Some(endpoint.strip_prefix(GRPC_SCHEME).unwrap_or(endpoint))
}

/// The endpoint grammar; the error is the tail of a message that starts with
/// the endpoint itself.
fn parse_endpoint(endpoint: &str) -> std::result::Result<(&str, u16), &'static str> {
    if endpoint.is_empty() {
        return Err("must not be empty");
    }
    if endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    let authority = match endpoint.strip_prefix(GRPC_SCHEME) {
        Some(rest) => rest,
        None if endpoint.contains("://") => return Err(UNSUPPORTED_SCHEME),
        None => endpoint,
    };
    if authority.is_empty() {
        return Err("has no host:port");
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err("must be just host:port, without a path, query, fragment or user-info");
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or("has an unterminated '[' in its host")?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err("has an invalid IPv6 address between '[' and ']'");
        }
        let port = after.strip_prefix(':').ok_or("has no :port after its IPv6 host")?;
        (inside, port)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or("has no port: expected host:port")?;
        if host.contains(':') {
            return Err("has an IPv6 host without brackets: write it as [addr]:port, e.g. [::1]:80");
        }
        if host.is_empty() {
            return Err("has no host: expected host:port");
        }
        if !is_ipv4_or_hostname(host) {
            return Err(
                "has an invalid host: expected a DNS hostname, an IPv4 address or a bracketed IPv6 address",
            );
        }
        (host, port)
    };
    let port = parse_port(port).ok_or("has an invalid port: expected a decimal number in 1..=65535")?;
    Ok((host, port))
}

/// A decimal port in 1..=65535; unlike `u16::from_str`, no sign is allowed.
fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are harmless (Go's net package accepts them too), so only
    // the value matters.
    let mut value: u16 = 0;
    for digit in port.bytes() {
        value = value.checked_mul(10)?.checked_add(u16::from(digit - b'0'))?;
    }
    (value != 0).then_some(value)
}

/// Whether `host` is a dotted-quad IPv4 address or a DNS hostname.
///
/// Anything made only of digits and dots must be a proper IPv4 address:
/// resolvers read `10.1` or `167772161` as addresses too, so accepting them as
/// "hostnames" would register an address nobody meant.
fn is_ipv4_or_hostname(host: &str) -> bool {
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host.parse::<Ipv4Addr>().is_ok();
    }
    // One trailing dot marks a fully qualified name and is allowed.
    let name = host.strip_suffix('.').unwrap_or(host);
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::invalid_message;
    use super::*;

    #[test]
    fn accepts_valid_endpoints_and_splits_them() {
        for (endpoint, host, port) in [
            ("127.0.0.1:9001", "127.0.0.1", 9001),
            ("grpc://127.0.0.1:9001", "127.0.0.1", 9001),
            ("grpc://192.168.1.100:8080", "192.168.1.100", 8080),
            ("localhost:1", "localhost", 1),
            ("h:65535", "h", 65535),
            ("h:080", "h", 80),
            ("user-service.default.svc.cluster.local:50051", "user-service.default.svc.cluster.local", 50051),
            ("my_host.example:443", "my_host.example", 443),
            ("_grpc._tcp.example.com:443", "_grpc._tcp.example.com", 443),
            ("example.com.:443", "example.com.", 443),
            ("Host-1.EXAMPLE:7", "Host-1.EXAMPLE", 7),
            ("host.123:7", "host.123", 7),
            ("[::1]:80", "::1", 80),
            ("grpc://[::1]:80", "::1", 80),
            ("[2001:db8::8a2e:370:7334]:443", "2001:db8::8a2e:370:7334", 443),
            ("[::ffff:10.0.0.1]:80", "::ffff:10.0.0.1", 80),
        ] {
            validate_endpoint(endpoint).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(split_endpoint(endpoint), Some((host, port)), "{endpoint}");
        }
    }

    #[test]
    fn refuses_bad_endpoints_showing_the_value() {
        for (endpoint, problem) in [
            ("", "must not be empty"),
            ("http://h:1", "only grpc://host:port or a bare host:port is accepted"),
            ("https://h:1", "only grpc://host:port or a bare host:port is accepted"),
            ("dns:///h:1", "only grpc://host:port or a bare host:port is accepted"),
            ("GRPC://h:1", "only grpc://host:port or a bare host:port is accepted"),
            ("unix://tmp/sock", "only grpc://host:port or a bare host:port is accepted"),
            ("grpc://", "has no host:port"),
            ("h", "has no port"),
            ("grpc://h", "has no port"),
            ("h:", "invalid port"),
            ("h:0", "invalid port"),
            ("h:65536", "invalid port"),
            ("h:99999999999999999999", "invalid port"),
            ("h:port", "invalid port"),
            ("h:+80", "invalid port"),
            ("h:-1", "invalid port"),
            (":80", "has no host"),
            ("::1:80", "IPv6 host without brackets"),
            ("[::1]", "no :port"),
            ("[::1]80", "no :port"),
            ("[::1:80", "unterminated '['"),
            ("[not-ip]:80", "invalid IPv6 address"),
            ("[127.0.0.1]:80", "invalid IPv6 address"),
            ("[fe80::1%eth0]:80", "invalid IPv6 address"),
            ("h:80/path", "without a path"),
            ("grpc://h:80/", "without a path"),
            ("h:80?q=1", "without a path"),
            ("h:80#frag", "without a path"),
            ("user@h:80", "without a path"),
            ("h 1:80", "whitespace"),
            (" h:80", "whitespace"),
            ("h:80\n", "whitespace"),
            ("h\u{0}:80", "control characters"),
            ("h\u{a0}:80", "whitespace"),
            ("ex*ample:80", "invalid host"),
            ("exämple:80", "invalid host"),
            ("-h:80", "invalid host"),
            ("h-:80", "invalid host"),
            ("a..b:80", "invalid host"),
            (".a:80", "invalid host"),
            ("a.b..:80", "invalid host"),
            ("256.0.0.1:80", "invalid host"),
            ("10.1:80", "invalid host"),
            ("1.2.3.4.5:80", "invalid host"),
            ("127.0.0.01:80", "invalid host"),
            ("123:80", "invalid host"),
            (&format!("{}.com:80", "a".repeat(64)), "invalid host"),
            (&format!("{}a:80", "a.".repeat(127)), "invalid host"),
        ] {
            let message = invalid_message(validate_endpoint(endpoint));
            assert!(message.contains(&format!("{endpoint:?}")), "{message}");
            assert!(message.contains(problem), "{endpoint:?}: {message}");
            assert_eq!(split_endpoint(endpoint), None, "{endpoint:?}");
        }
        assert_eq!(
            invalid_message(validate_endpoint("http://h:1")),
            "invalid service instance: endpoint \"http://h:1\" has an unsupported scheme: \
             only grpc://host:port or a bare host:port is accepted"
        );
    }
}
