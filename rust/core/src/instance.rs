//! The service instance record, its wire format and its validation rules.
//!
//! Each registered instance is stored in etcd as one JSON value at
//! `<namespace>/<name>/<id>`. Go services read and write the same keys with
//! `encoding/json`, so this module speaks exactly that dialect:
//!
//! * [`ServiceInstance::to_json`] produces the bytes Go's `json.Marshal` would,
//!   so a value is byte-identical whichever side wrote it.
//! * [`ServiceInstance::from_json`] accepts what Go's `json.Unmarshal` accepts
//!   and yields the same fields, including Go's quirks (case-insensitive field
//!   names, `null` handling, invalid UTF-8 replaced rather than refused).
//!
//! Validation ([`ServiceInstance::validate`]) is separate from decoding on
//! purpose: a watcher must be able to read whatever a Go peer wrote, while
//! registration only accepts instances that make sense as etcd keys and as
//! gRPC dial targets.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{Error, Result};

/// Longest id or name accepted, in bytes. Both end up in an etcd key, and
/// keeping keys short keeps range reads and watch events cheap.
const MAX_SEGMENT_LEN: usize = 512;

/// Bad values longer than this are shortened in error messages so that a
/// megabyte-sized id does not turn into a megabyte-sized exception.
const MAX_SHOWN_LEN: usize = 1024;

/// The only scheme an endpoint may carry; everything else is a bare `host:port`.
const GRPC_SCHEME: &str = "grpc://";
const UNSUPPORTED_SCHEME: &str =
    "has an unsupported scheme: only grpc://host:port or a bare host:port is accepted";

/// Go's decoder refuses JSON nested deeper than this; `serde_json` only limits
/// the levels it builds values for, not the ones it skips.
const GO_MAX_NESTING: usize = 10_000;

/// One registered instance of a service; the value stored at `<namespace>/<name>/<id>`.
///
/// Mirrors the Go struct
///
/// ```go
/// type ServiceInstance struct {
///     ID        string            `json:"id"`
///     Name      string            `json:"name"`
///     Version   string            `json:"version"`
///     Metadata  map[string]string `json:"metadata"`
///     Endpoints []string          `json:"endpoints"`
/// }
/// ```
///
/// Go distinguishes a nil map or slice from an empty one; this model does not,
/// and an empty `metadata` or `endpoints` is written as `null` like Go's nil.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceInstance {
    /// Unique within the service; the last segment of the etcd key.
    pub id: String,
    /// The service this instance belongs to; the middle segment of the etcd key.
    pub name: String,
    /// Free-form version label, not interpreted by the registry.
    pub version: String,
    /// Free-form labels (region, zone, weight, ...); sorted, as Go writes them.
    pub metadata: BTreeMap<String, String>,
    /// Where the instance can be reached: `host:port` or `grpc://host:port`.
    pub endpoints: Vec<String>,
}

impl ServiceInstance {
    /// Encodes the instance exactly as Go's `json.Marshal` does (Go ≥ 1.22).
    ///
    /// Fields come in declaration order without any whitespace, metadata keys
    /// sorted by bytes, an empty map or list as `null`, and strings escaped the
    /// way Go's encoder escapes them by default: `<`, `>`, `&`, U+2028 and
    /// U+2029 as `\u` escapes so the value is safe to embed in HTML/JS, control
    /// characters as short escapes where JSON has them and `\u00xx` otherwise,
    /// and every other character (DEL and all non-ASCII included) as raw UTF-8.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.extend_from_slice(b"{\"id\":");
        write_json_string(&mut out, &self.id);
        out.extend_from_slice(b",\"name\":");
        write_json_string(&mut out, &self.name);
        out.extend_from_slice(b",\"version\":");
        write_json_string(&mut out, &self.version);
        out.extend_from_slice(b",\"metadata\":");
        if self.metadata.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'{');
            for (i, (key, value)) in self.metadata.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(&mut out, key);
                out.push(b':');
                write_json_string(&mut out, value);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"endpoints\":");
        if self.endpoints.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'[');
            for (i, endpoint) in self.endpoints.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(&mut out, endpoint);
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }

    /// Decodes a stored value with the semantics of Go's `json.Unmarshal` into
    /// a zero `ServiceInstance`, so that anything a Go peer wrote reads back
    /// the same here:
    ///
    /// * The top level must be an object, or the literal `null` (which yields
    ///   the default instance, as Go leaves the struct untouched).
    /// * Field names match case-insensitively (ASCII folding plus Go's `ſ`/`K`
    ///   folds); unknown fields are skipped whatever they hold.
    /// * `null` leaves a string field as it was, and resets `metadata` or
    ///   `endpoints` to empty. Repeated fields are applied in order: a later
    ///   string or list replaces an earlier one, a later object is merged into
    ///   the earlier metadata. Inside `metadata` and `endpoints`, a `null`
    ///   element becomes `""`.
    /// * Invalid UTF-8 and unpaired UTF-16 surrogate escapes inside strings
    ///   become U+FFFD (one per offending byte or escape, like Go) instead of
    ///   failing the whole value.
    ///
    /// The result is not validated; call [`ServiceInstance::validate`] for that.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInstance`] for malformed JSON, a top level other than
    /// an object or `null`, trailing data, or a field of the wrong type (the
    /// message names the field).
    pub fn from_json(data: &[u8]) -> Result<ServiceInstance> {
        let text = go_string_semantics(data);
        if exceeds_go_nesting(text.as_bytes()) {
            return Err(Error::InvalidInstance(format!(
                "invalid service instance JSON: nested deeper than {GO_MAX_NESTING} levels"
            )));
        }
        let mut json = serde_json::Deserializer::from_str(&text);
        let instance = json.deserialize_any(InstanceVisitor).map_err(json_error)?;
        json.end().map_err(json_error)?;
        Ok(instance)
    }

    /// Checks that the instance can be registered: `id` and `name` are usable
    /// key segments (see [`validate_segment`]) and there is at least one
    /// endpoint, each of them valid (see [`validate_endpoint`]). `version` and
    /// `metadata` are free-form and not checked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInstance`] describing the first problem found.
    pub fn validate(&self) -> Result<()> {
        validate_segment("id", &self.id)?;
        validate_segment("name", &self.name)?;
        if self.endpoints.is_empty() {
            return Err(Error::InvalidInstance(format!(
                "invalid service instance: at least one endpoint is required (instance {} has none)",
                shown(&self.id)
            )));
        }
        self.endpoints.iter().try_for_each(|e| validate_endpoint(e))
    }

    /// A capacity that fits the encoding without reallocating unless many
    /// characters need escaping.
    fn encoded_len_hint(&self) -> usize {
        // `{"id":"","name":"","version":"","metadata":null,"endpoints":null}`
        const FIXED: usize = 66;
        let strings = self.id.len() + self.name.len() + self.version.len();
        let metadata: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        let endpoints: usize = self.endpoints.iter().map(|e| e.len() + 3).sum();
        FIXED + strings + metadata + endpoints
    }
}

/// Checks one etcd key segment (`what` is "id" or "name" and only used in
/// messages). A segment must be non-empty, at most 512 bytes, free of control
/// characters (U+0000..U+001F, U+007F..U+009F), free of `/` (which would add
/// key levels and let one service's keys collide with another's), and not `.`
/// or `..` (which path-like tooling would resolve away).
///
/// # Errors
///
/// [`Error::InvalidInstance`] naming `what` and showing the bad value.
pub fn validate_segment(what: &str, value: &str) -> Result<()> {
    let problem = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_SEGMENT_LEN {
        return Err(Error::InvalidInstance(format!(
            "invalid service instance: {what} must be at most {MAX_SEGMENT_LEN} bytes (got {} bytes: {})",
            value.len(),
            shown(value)
        )));
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else if value.contains('/') {
        "must not contain '/'"
    } else if value == "." || value == ".." {
        "must not be \".\" or \"..\""
    } else {
        return Ok(());
    };
    Err(Error::InvalidInstance(format!("invalid service instance: {what} {problem} (got {})", shown(value))))
}

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
        Error::InvalidInstance(format!("invalid service instance: endpoint {} {problem}", shown(endpoint)))
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

/// `value` quoted and escaped for an error message, shortened if huge.
fn shown(value: &str) -> String {
    if value.len() <= MAX_SHOWN_LEN {
        return format!("{value:?}");
    }
    let mut end = MAX_SHOWN_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes in all)", &value[..end], value.len())
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// How the encoder treats each byte of a string.
const SAFE: u8 = 0;
const ESCAPE: u8 = 1;
/// First byte of U+2028/U+2029 (`E2 80 A8`/`E2 80 A9`), but also of many
/// characters that are written raw, so the next bytes decide.
const MAYBE_SEPARATOR: u8 = 2;

static BYTE_CLASS: [u8; 256] = {
    let mut table = [SAFE; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = ESCAPE;
        b += 1;
    }
    table[b'"' as usize] = ESCAPE;
    table[b'\\' as usize] = ESCAPE;
    table[b'<' as usize] = ESCAPE;
    table[b'>' as usize] = ESCAPE;
    table[b'&' as usize] = ESCAPE;
    table[0xE2] = MAYBE_SEPARATOR;
    table
};

/// Appends `s` as a JSON string literal escaped like Go's encoder (with its
/// default HTML escaping). Runs of bytes that need no escaping are copied in
/// one go, which is nearly every byte of a typical value.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let width = match BYTE_CLASS[usize::from(byte)] {
            SAFE => {
                i += 1;
                continue;
            }
            MAYBE_SEPARATOR => {
                if bytes.get(i + 1) == Some(&0x80) && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9)) {
                    3
                } else {
                    i += 1;
                    continue;
                }
            }
            _ => 1,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            0xE2 => {
                out.extend_from_slice(b"\\u202");
                out.push(if bytes[i + 2] == 0xA8 { b'8' } else { b'9' });
            }
            // Control characters and `<`, `>`, `&`: all below 0x80, so the
            // escape is always `\u00` plus two hex digits.
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]),
        }
        i += width;
        run_start = i;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

fn json_error(err: serde_json::Error) -> Error {
    Error::InvalidInstance(format!("invalid service instance JSON: {err}"))
}

/// Rewrites the input so that `serde_json`, which is strict about text, decodes
/// strings the way Go does: every byte that is not part of valid UTF-8 becomes
/// one U+FFFD, and every `\uXXXX` escape of a UTF-16 surrogate that is not
/// part of a proper pair becomes `\ufffd`. Outside string literals such bytes
/// are a syntax error either way. Valid input (the normal case) is borrowed
/// after one validation pass and one scan for backslashes.
fn go_string_semantics(data: &[u8]) -> Cow<'_, str> {
    let mut text = match std::str::from_utf8(data) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(replace_invalid_utf8_per_byte(data)),
    };
    let lone = lone_surrogate_escapes(text.as_bytes());
    if !lone.is_empty() {
        let owned = text.to_mut();
        for at in lone {
            owned.replace_range(at..at + 4, "fffd");
        }
    }
    text
}

/// Whether the JSON text opens more than [`GO_MAX_NESTING`] arrays or objects
/// inside each other, which Go refuses even in fields it would skip. Only an
/// input longer than the limit can do that, so typical values are not scanned.
fn exceeds_go_nesting(bytes: &[u8]) -> bool {
    if bytes.len() <= GO_MAX_NESTING {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > GO_MAX_NESTING {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Like `String::from_utf8_lossy`, except that it emits one U+FFFD per invalid
/// byte (Go's decoder does) rather than one per maximal invalid sequence.
fn replace_invalid_utf8_per_byte(data: &[u8]) -> String {
    let mut text = String::with_capacity(data.len() + 16);
    for chunk in data.utf8_chunks() {
        text.push_str(chunk.valid());
        for _ in chunk.invalid() {
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    text
}

/// Offsets of the four hex digits of every `\u` escape that encodes a UTF-16
/// surrogate without its partner. Go decodes such an escape to U+FFFD and
/// then reads the following escape on its own; `serde_json` refuses it.
///
/// Backslashes only occur inside strings in valid JSON, and each one starts an
/// escape, so skipping escape by escape keeps `\\ud800` (an escaped backslash
/// followed by text) from being mistaken for an escape.
fn lone_surrogate_escapes(bytes: &[u8]) -> Vec<usize> {
    fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(digits, 16).ok()
    }
    let is_high = |unit: u16| (0xD800..0xDC00).contains(&unit);
    let is_low = |unit: u16| (0xDC00..0xE000).contains(&unit);

    let mut lone = Vec::new();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\\') {
        let escape = i + offset;
        if bytes.get(escape + 1) != Some(&b'u') {
            // A one-character escape (or a syntax error serde_json reports).
            i = (escape + 2).min(bytes.len());
            continue;
        }
        let Some(unit) = hex4(bytes, escape + 2) else {
            i = escape + 2;
            continue;
        };
        i = escape + 6;
        if is_high(unit) && bytes.get(i..i + 2) == Some(b"\\u") && hex4(bytes, i + 2).is_some_and(is_low) {
            i += 6;
        } else if is_high(unit) || is_low(unit) {
            lone.push(escape + 2);
        }
    }
    lone
}

/// The struct fields, as matched by Go: exact names first, then folded.
#[derive(Clone, Copy)]
enum Field {
    Id,
    Name,
    Version,
    Metadata,
    Endpoints,
    Unknown,
}

impl Field {
    fn from_key(key: &str) -> Field {
        const FIELDS: [(&str, Field); 5] = [
            ("id", Field::Id),
            ("name", Field::Name),
            ("version", Field::Version),
            ("metadata", Field::Metadata),
            ("endpoints", Field::Endpoints),
        ];
        FIELDS
            .iter()
            .find(|(name, _)| *name == key)
            .or_else(|| FIELDS.iter().find(|(name, _)| go_fold_eq(key, name)))
            .map_or(Field::Unknown, |&(_, field)| field)
    }
}

/// Whether `key` equals the lowercase ASCII `name` under Go's field-name
/// folding (`bytes.EqualFold`): ASCII case, plus the only two non-ASCII
/// characters that fold to ASCII letters, U+017F (ſ) to `s` and U+212A
/// (Kelvin sign) to `k`.
fn go_fold_eq(key: &str, name: &str) -> bool {
    let folded = |c: char| match c {
        '\u{17F}' => Some(b's'),
        '\u{212A}' => Some(b'k'),
        c if c.is_ascii() => Some((c as u8).to_ascii_lowercase()),
        _ => None,
    };
    let mut chars = key.chars();
    name.bytes().all(|expected| chars.next().and_then(folded) == Some(expected)) && chars.next().is_none()
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(Field::from_key(key))
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The top-level value: an object, or `null` for the zero instance.
struct InstanceVisitor;

impl<'de> Visitor<'de> for InstanceVisitor {
    type Value = ServiceInstance;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<ServiceInstance, E> {
        Ok(ServiceInstance::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServiceInstance, A::Error> {
        let mut instance = ServiceInstance::default();
        // `instance.endpoints` doubles as Go's slice backing array, which can
        // hold more elements than the current length (see `EndpointsInto`).
        let mut endpoints_len = 0;
        while let Some(field) = map.next_key::<Field>()? {
            let (slot, what) = match field {
                Field::Id => (&mut instance.id, "\"id\""),
                Field::Name => (&mut instance.name, "\"name\""),
                Field::Version => (&mut instance.version, "\"version\""),
                Field::Metadata => {
                    map.next_value_seed(MetadataInto(&mut instance.metadata))?;
                    continue;
                }
                Field::Endpoints => {
                    endpoints_len = map.next_value_seed(EndpointsInto(&mut instance.endpoints))?;
                    continue;
                }
                Field::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            // Go leaves a string field untouched when the value is null.
            if let Some(value) = map.next_value_seed(NullableString { what })? {
                *slot = value;
            }
        }
        instance.endpoints.truncate(endpoints_len);
        Ok(instance)
    }
}

/// A JSON string, or `None` for `null`; anything else is an error that says
/// `what` was expected to be a string.
struct NullableString {
    what: &'static str,
}

impl<'de> DeserializeSeed<'de> for NullableString {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Visitor<'_> for NullableString {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string or null for {}", self.what)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Some(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Some(value))
    }
}

/// Decodes `metadata` into an existing map, as Go does: `null` empties it, an
/// object adds to (rather than replaces) what an earlier `metadata` field
/// left, and a `null` value is stored as `""`.
struct MetadataInto<'a>(&'a mut BTreeMap<String, String>);

impl<'de> DeserializeSeed<'de> for MetadataInto<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetadataInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings or null for \"metadata\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.clear();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const WHAT: NullableString = NullableString { what: "a \"metadata\" value" };
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(WHAT)?.unwrap_or_default();
            self.0.insert(key, value);
        }
        Ok(())
    }
}

/// Decodes `endpoints` the way Go decodes into an existing slice, returning
/// the new length. The vector plays the part of Go's backing array: Go
/// overwrites elements in place and only shortens the length, so a `null`
/// element keeps whatever an earlier `endpoints` field left at that index (or
/// `""` past its end). `null` and `[]` both start over with an empty slice.
struct EndpointsInto<'a>(&'a mut Vec<String>);

impl<'de> DeserializeSeed<'de> for EndpointsInto<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EndpointsInto<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings or null for \"endpoints\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        self.0.clear();
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        const WHAT: NullableString = NullableString { what: "an \"endpoints\" element" };
        let backing = self.0;
        let mut len = 0;
        while let Some(element) = seq.next_element_seed(WHAT)? {
            match (element, backing.get_mut(len)) {
                (Some(value), Some(slot)) => *slot = value,
                (Some(value), None) => backing.push(value),
                (None, Some(_)) => {}
                (None, None) => backing.push(String::new()),
            }
            len += 1;
        }
        if len == 0 {
            backing.clear();
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(
        id: &str,
        name: &str,
        version: &str,
        metadata: &[(&str, &str)],
        endpoints: &[&str],
    ) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            metadata: metadata.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
            endpoints: endpoints.iter().map(|&e| e.into()).collect(),
        }
    }

    fn json(instance: &ServiceInstance) -> String {
        String::from_utf8(instance.to_json()).expect("the encoder writes UTF-8")
    }

    fn decode(input: impl AsRef<[u8]>) -> ServiceInstance {
        let input = input.as_ref();
        ServiceInstance::from_json(input)
            .unwrap_or_else(|e| panic!("{:?} should decode: {e}", String::from_utf8_lossy(input)))
    }

    fn decode_error(input: impl AsRef<[u8]>) -> String {
        let input = input.as_ref();
        match ServiceInstance::from_json(input) {
            Ok(decoded) => panic!("{:?} should be refused, got {decoded:?}", String::from_utf8_lossy(input)),
            Err(Error::InvalidInstance(message)) => {
                assert!(message.starts_with("invalid service instance JSON: "), "{message}");
                message
            }
            Err(other) => panic!("wrong error variant: {other:?}"),
        }
    }

    // -- Encoding --------------------------------------------------------------
    //
    // Every expected value in this section was produced by Go's encoding/json
    // (json.Marshal of the Go struct, Go 1.19) and compared byte for byte.
    // Go 1.19 writes \b and \f as \u0008 and \u000c; Go 1.22 and later write
    // the short forms, which is what is expected here.

    fn seed_instance() -> ServiceInstance {
        instance(
            "user-service-001",
            "user-service",
            "1.0.0",
            &[("region", "us-west-1"), ("zone", "zone-a"), ("weight", "100")],
            &["grpc://192.168.1.100:8080"],
        )
    }

    #[test]
    fn encodes_the_seed_example_like_go() {
        assert_eq!(
            json(&seed_instance()),
            r#"{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":{"region":"us-west-1","weight":"100","zone":"zone-a"},"endpoints":["grpc://192.168.1.100:8080"]}"#
        );
    }

    #[test]
    fn encodes_empty_metadata_and_endpoints_as_null() {
        let mut without_metadata = seed_instance();
        without_metadata.metadata.clear();
        assert_eq!(
            json(&without_metadata),
            r#"{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":null,"endpoints":["grpc://192.168.1.100:8080"]}"#
        );
        assert_eq!(
            json(&ServiceInstance::default()),
            r#"{"id":"","name":"","version":"","metadata":null,"endpoints":null}"#
        );
    }

    #[test]
    fn escapes_html_characters() {
        let html = instance("<a href=\"x\">&amp;</a>", "a&b", "<>", &[], &[]);
        assert_eq!(
            json(&html),
            r#"{"id":"\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e","name":"a\u0026b","version":"\u003c\u003e","metadata":null,"endpoints":null}"#
        );
    }

    #[test]
    fn escapes_quotes_and_backslashes() {
        let quoted = instance(r#"C:\path\"q""#, r"\\", "\"", &[], &[]);
        assert_eq!(
            json(&quoted),
            r#"{"id":"C:\\path\\\"q\"","name":"\\\\","version":"\"","metadata":null,"endpoints":null}"#
        );
    }

    #[test]
    fn escapes_control_characters_but_not_del_or_c1() {
        let controls = instance(
            "\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{e}\u{1b}\u{1f}",
            "a\u{7f}b",
            "\u{80}\u{85}\u{9f}\u{a0}",
            &[],
            &[],
        );
        assert_eq!(
            json(&controls),
            concat!(
                r#"{"id":"\u0000\u0001\u0007\b\t\n\u000b\f\r\u000e\u001b\u001f","#,
                "\"name\":\"a\u{7f}b\",\"version\":\"\u{80}\u{85}\u{9f}\u{a0}\",",
                r#""metadata":null,"endpoints":null}"#
            )
        );
    }

    #[test]
    fn escapes_each_ascii_control_character_like_go() {
        for byte in 0u8..0x20 {
            let expected = match byte {
                0x08 => "\\b".to_owned(),
                0x09 => "\\t".to_owned(),
                0x0A => "\\n".to_owned(),
                0x0C => "\\f".to_owned(),
                0x0D => "\\r".to_owned(),
                _ => format!("\\u{byte:04x}"),
            };
            let mut out = Vec::new();
            write_json_string(&mut out, &format!("x{}y", char::from(byte)));
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"x{expected}y\""), "byte {byte:#04x}");
        }
    }

    #[test]
    fn escapes_only_the_two_line_separators_among_non_ascii() {
        let separators = instance(
            "\u{2027}\u{2028}\u{2029}\u{202a}",
            "line\u{2028}sep\u{2029}para",
            "\u{20ac}\u{2000}\u{e280}",
            &[],
            &[],
        );
        assert_eq!(
            json(&separators),
            concat!(
                "{\"id\":\"\u{2027}\\u2028\\u2029\u{202a}\",",
                r#""name":"line\u2028sep\u2029para","#,
                "\"version\":\"\u{20ac}\u{2000}\u{e280}\",",
                r#""metadata":null,"endpoints":null}"#
            )
        );
        // A separator cut short at the end of a string is not one.
        let mut out = Vec::new();
        write_json_string(&mut out, "\u{2028}\u{2029}");
        assert_eq!(out, b"\"\\u2028\\u2029\"");
    }

    #[test]
    fn writes_other_non_ascii_raw() {
        let unicode = instance("café", "中文服务", "😀\u{feff}\u{fffd}\u{10ffff}", &[], &[]);
        assert_eq!(
            json(&unicode),
            "{\"id\":\"café\",\"name\":\"中文服务\",\"version\":\"😀\u{feff}\u{fffd}\u{10ffff}\",\"metadata\":null,\"endpoints\":null}"
        );
    }

    #[test]
    fn escapes_metadata_keys_and_sorts_them_by_bytes() {
        let tricky = instance(
            "m",
            "n",
            "v",
            &[("<k>", "v&"), ("a\"b", "\\"), ("é", "中"), ("", ""), ("Z", "\n"), ("a", "\u{2028}")],
            &["[::1]:80", "h\"x", "", "<script>"],
        );
        assert_eq!(
            json(&tricky),
            r#"{"id":"m","name":"n","version":"v","metadata":{"":"","\u003ck\u003e":"v\u0026","Z":"\n","a":"\u2028","a\"b":"\\","é":"中"},"endpoints":["[::1]:80","h\"x","","\u003cscript\u003e"]}"#
        );
    }

    // -- Round trip --------------------------------------------------------------

    /// A small deterministic generator, so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn string(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a", "Z", "0", "-", "/", ":", " ", "\"", "\\", "<", ">", "&", "\u{0}", "\u{8}", "\u{c}",
                "\n", "\r", "\t", "\u{1f}", "\u{7f}", "\u{85}", "é", "中", "😀", "\u{2028}", "\u{2029}",
                "\u{202a}", "\u{fffd}", "\\u", "ud800", "\u{17f}",
            ];
            (0..self.below(10)).map(|_| PIECES[self.below(PIECES.len())]).collect()
        }

        fn instance(&mut self) -> ServiceInstance {
            ServiceInstance {
                id: self.string(),
                name: self.string(),
                version: self.string(),
                metadata: (0..self.below(4)).map(|_| (self.string(), self.string())).collect(),
                endpoints: (0..self.below(4)).map(|_| self.string()).collect(),
            }
        }
    }

    #[test]
    fn round_trips_varied_instances() {
        let mut fixed = vec![
            seed_instance(),
            ServiceInstance::default(),
            instance("", "", "", &[("", "")], &[""]),
            instance("\u{0}", "\u{2028}", "\\ud800", &[("\u{7f}", "<>&")], &["\"", "\\"]),
        ];
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        fixed.extend((0..2000).map(|_| rng.instance()));
        for original in fixed {
            let encoded = original.to_json();
            assert_eq!(ServiceInstance::from_json(&encoded).unwrap(), original);
            // An independent decoder must read the same strings back.
            let value: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
            assert_eq!(value["id"], original.id.as_str());
            assert_eq!(value["version"], original.version.as_str());
        }
    }

    // -- Decoding ------------------------------------------------------------------
    //
    // Every behaviour below was checked against Go's json.Unmarshal into the Go
    // struct (Go 1.19), besides a differential run over a million generated
    // inputs.

    #[test]
    fn decodes_what_it_encodes_from_the_seed() {
        let text = r#"{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":{"region":"us-west-1","weight":"100","zone":"zone-a"},"endpoints":["grpc://192.168.1.100:8080"]}"#;
        assert_eq!(decode(text), seed_instance());
    }

    #[test]
    fn top_level_null_and_empty_object_give_the_default() {
        for text in ["null", " null ", "\t\r\nnull\n", "{}", " { } "] {
            assert_eq!(decode(text), ServiceInstance::default(), "{text:?}");
        }
    }

    #[test]
    fn refuses_anything_but_an_object_or_null() {
        for text in [
            "",
            "  ",
            "[]",
            "[{}]",
            "1",
            "-0.5",
            "\"x\"",
            "true",
            "nul",
            "nulll",
            "{} x",
            "{}{}",
            "null null",
            r#"{"id":"a"}garbage"#,
            "\u{feff}{}",
            "{'id':'a'}",
        ] {
            decode_error(text);
        }
        assert!(decode_error("[]").contains("expected a JSON object or null"));
        assert!(decode_error("{} x").contains("trailing"));
    }

    #[test]
    fn refuses_malformed_objects() {
        for text in [
            r#"{"id":"a""#,
            r#"{"id":"a",}"#,
            r#"{"id":01}"#,
            r#"{"id" "x"}"#,
            r#"{"id":"x" "name":"y"}"#,
            r#"{"id":-}"#,
            r#"{"endpoints":["a"]]"#,
            r#"{"metadata":{"a":"b"}"#,
            r#"{"id":"\x"}"#,
            r#"{"id":"\u12"}"#,
            r#"{"id":"\uZZZZ"}"#,
            r#"{"id":"\uD800\uZZZZ"}"#,
            "{\"id\":\"tab\there\"}",
            "{\"id\":\"nul\u{0}\"}",
        ] {
            decode_error(text);
        }
    }

    #[test]
    fn matches_field_names_case_insensitively() {
        let text = r#"{"ID":"a","NAME":"b","Version":"c","MetaData":{"k":"v"},"EndPoints":["e"]}"#;
        assert_eq!(decode(text), instance("a", "b", "c", &[("k", "v")], &["e"]));
        // Go folds U+017F (long s) to 's' as well.
        let long_s = "{\"verſion\":\"1\",\"endpointſ\":[\"x\"],\"ENDPOINTſ\":[\"y\"]}";
        assert_eq!(decode(long_s), instance("", "", "1", &[], &["y"]));
        // Escapes in names are decoded before matching.
        assert_eq!(decode(r#"{"\u0069d":"x","n\u0061me":"y"}"#).name, "y");
        // Other Unicode look-alikes are different names.
        assert_eq!(decode("{\"İd\":\"x\",\"ıd\":\"y\",\"ids\":\"z\"}").id, "");
        assert!(go_fold_eq("\u{212a}ey", "key"));
        assert!(!go_fold_eq("key", "keys"));
        assert!(!go_fold_eq("keys", "key"));
    }

    #[test]
    fn ignores_unknown_fields_of_any_shape() {
        let text = r#"{"x":{"y":[1,2,{"z":null}]},"y":[{}],"z":1e999,"w":-0.5e-3,"v":true,"":"","id":"after-unknown","\ud800":"\udc00"}"#;
        assert_eq!(decode(text).id, "after-unknown");
        let deep = format!(
            r#"{{"x":{}{},"y":{}1{},"id":"deep"}}"#,
            "[".repeat(1000),
            "]".repeat(1000),
            r#"{"a":"#.repeat(1000),
            "}".repeat(1000)
        );
        assert_eq!(decode(deep).id, "deep");
    }

    #[test]
    fn refuses_nesting_deeper_than_go_allows() {
        // The enclosing object is level one, so Go takes 9999 arrays in "x"
        // and refuses 10000.
        let nested =
            |levels: usize| format!(r#"{{"x":{}{},"id":"deep"}}"#, "[".repeat(levels), "]".repeat(levels));
        assert_eq!(decode(nested(9_999)).id, "deep");
        assert!(decode_error(nested(10_000)).contains("nested deeper than 10000 levels"));
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"x":"{}","id":"ok"}}"#, "[".repeat(20_000));
        assert_eq!(decode(quoted).id, "ok");
        let escaped = format!(r#"{{"x":"\\\"{}","id":"ok"}}"#, "[".repeat(20_000));
        assert_eq!(decode(escaped).id, "ok");
    }

    #[test]
    fn missing_and_null_fields_default() {
        assert_eq!(decode(r#"{"id":"a"}"#), instance("a", "", "", &[], &[]));
        let nulls = r#"{"id":null,"name":null,"version":null,"metadata":null,"endpoints":null}"#;
        assert_eq!(decode(nulls), ServiceInstance::default());
    }

    #[test]
    fn repeated_fields_apply_in_order_like_go() {
        assert_eq!(decode(r#"{"id":"a","id":"b"}"#).id, "b");
        assert_eq!(decode(r#"{"id":"a","ID":"b"}"#).id, "b");
        // null leaves a string as it was.
        assert_eq!(decode(r#"{"id":"a","id":null}"#).id, "a");
        assert_eq!(decode(r#"{"ID":"x","id":"y","Id":null}"#).id, "y");
    }

    #[test]
    fn metadata_nulls_merges_and_resets_like_go() {
        let metadata = |text: &str| decode(text).metadata;
        let map = |pairs: &[(&str, &str)]| instance("", "", "", pairs, &[]).metadata;
        assert_eq!(metadata(r#"{"metadata":{"a":null}}"#), map(&[("a", "")]));
        assert_eq!(metadata(r#"{"metadata":{"a":"x","a":null}}"#), map(&[("a", "")]));
        assert_eq!(
            metadata(r#"{"metadata":{"":"empty-key","k":"v"}}"#),
            map(&[("", "empty-key"), ("k", "v")])
        );
        // A second object is merged into the first; null empties the map.
        assert_eq!(
            metadata(r#"{"metadata":{"a":"1"},"metadata":{"b":"2"}}"#),
            map(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(metadata(r#"{"metadata":{"a":"1"},"metadata":{"a":null}}"#), map(&[("a", "")]));
        assert_eq!(metadata(r#"{"metadata":{"a":"1"},"metadata":{}}"#), map(&[("a", "1")]));
        assert_eq!(
            metadata(r#"{"metadata":{"a":"1"},"metadata":null,"metadata":{"b":"2"}}"#),
            map(&[("b", "2")])
        );
    }

    #[test]
    fn endpoints_nulls_and_repeats_like_go() {
        let endpoints = |text: &str| decode(text).endpoints;
        assert_eq!(endpoints(r#"{"endpoints":[null]}"#), [""]);
        assert_eq!(endpoints(r#"{"endpoints":["a",null,"b"]}"#), ["a", "", "b"]);
        assert_eq!(endpoints(r#"{"endpoints":[]}"#), Vec::<String>::new());
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":["c"]}"#), ["c"]);
        // Go decodes into the existing slice in place: a null element keeps
        // what an earlier list left at that index...
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":[null]}"#), ["a"]);
        assert_eq!(
            endpoints(r#"{"endpoints":["a","b"],"endpoints":["c"],"endpoints":[null,null]}"#),
            ["c", "b"]
        );
        // ...but an empty list or null starts over.
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":[],"endpoints":[null,null]}"#), ["", ""]);
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":null,"endpoints":[null]}"#), [""]);
    }

    #[test]
    fn refuses_wrong_types_naming_the_field() {
        for (text, named) in [
            (r#"{"id":5}"#, "\"id\""),
            (r#"{"id":true}"#, "\"id\""),
            (r#"{"id":{}}"#, "\"id\""),
            (r#"{"id":[]}"#, "\"id\""),
            (r#"{"Name":1.5}"#, "\"name\""),
            (r#"{"version":false}"#, "\"version\""),
            (r#"{"metadata":[]}"#, "\"metadata\""),
            (r#"{"metadata":"x"}"#, "\"metadata\""),
            (r#"{"metadata":{"a":5}}"#, "\"metadata\" value"),
            (r#"{"metadata":{"a":{}}}"#, "\"metadata\" value"),
            (r#"{"endpoints":{}}"#, "\"endpoints\""),
            (r#"{"endpoints":"x"}"#, "\"endpoints\""),
            (r#"{"endpoints":[5]}"#, "\"endpoints\" element"),
            (r#"{"endpoints":[[]]}"#, "\"endpoints\" element"),
            (r#"{"id":5,"name":"still-decoded-by-go"}"#, "\"id\""),
        ] {
            let message = decode_error(text);
            assert!(message.contains(named), "{text}: {message}");
        }
    }

    #[test]
    fn decodes_escapes_and_raw_del() {
        assert_eq!(decode(r#"{"id":"a\/b\u00e9\u4e2d"}"#).id, "a/bé中");
        assert_eq!(decode(r#"{"id":"\u0000\u001f"}"#).id, "\u{0}\u{1f}");
        assert_eq!(decode(r#"{"id":"\ud83d\ude00"}"#).id, "😀");
        assert_eq!(decode("{\"id\":\"del\u{7f}\"}").id, "del\u{7f}");
    }

    #[test]
    fn replaces_invalid_utf8_one_replacement_per_byte_like_go() {
        let id = |bytes: &[u8]| {
            let mut text = b"{\"id\":\"".to_vec();
            text.extend_from_slice(bytes);
            text.extend_from_slice(b"\"}");
            decode(text).id
        };
        assert_eq!(id(b"bad\xff\xfeutf8"), "bad\u{fffd}\u{fffd}utf8");
        // A truncated sequence is one replacement per byte in Go, where
        // `String::from_utf8_lossy` would write a single one.
        assert_eq!(id(b"trunc\xe4\xb8."), "trunc\u{fffd}\u{fffd}.");
        assert_eq!(id(b"trunc4\xf0\x9f\x98."), "trunc4\u{fffd}\u{fffd}\u{fffd}.");
        assert_eq!(id(b"surr\xed\xa0\x80."), "surr\u{fffd}\u{fffd}\u{fffd}.");
        assert_eq!(id(b"overlong\xc0\x80."), "overlong\u{fffd}\u{fffd}.");
        assert_eq!(id(b"end\xe4"), "end\u{fffd}");
        // In other places invalid bytes are skipped or refused as Go does.
        assert_eq!(decode(b"{\"x\":\"\xff\",\"id\":\"ok\"}").id, "ok");
        assert_eq!(decode(b"{\"i\xffd\":\"k\"}").id, "");
        decode_error(b"{\"id\":\"a\"}\xff");
        decode_error(b"\xff{}");
    }

    #[test]
    fn replaces_unpaired_surrogate_escapes_like_go() {
        let id = |escaped: &str| decode(format!(r#"{{"id":"{escaped}"}}"#)).id;
        assert_eq!(id(r"\ud800"), "\u{fffd}");
        assert_eq!(id(r"\udc00"), "\u{fffd}");
        assert_eq!(id(r"\ud800\u0041"), "\u{fffd}A");
        assert_eq!(id(r"\ud800x"), "\u{fffd}x");
        assert_eq!(id(r"\ud800\n"), "\u{fffd}\n");
        assert_eq!(id(r"\udc00\ud800"), "\u{fffd}\u{fffd}");
        // The second escape of a failed pair starts its own pair.
        assert_eq!(id(r"\ud800\ud800\udc00"), "\u{fffd}\u{10000}");
        assert_eq!(id(r"\uDBFF\uDFFF"), "\u{10ffff}");
        // An escaped backslash followed by text is not an escape.
        assert_eq!(id(r"\\ud800"), r"\ud800");
        assert_eq!(id(r"\\\ud800"), "\\\u{fffd}");
        assert_eq!(
            decode(r#"{"metadata":{"\ud800":"\udfff"}}"#).metadata,
            instance("", "", "", &[("\u{fffd}", "\u{fffd}")], &[]).metadata
        );
    }

    #[test]
    fn borrows_valid_input_unchanged() {
        assert!(matches!(go_string_semantics(br#"{"id":"\\ud800\n\u00e9\ud83d\ude00"}"#), Cow::Borrowed(_)));
    }

    // -- Validation ----------------------------------------------------------------

    fn invalid_message(result: Result<()>) -> String {
        match result {
            Err(Error::InvalidInstance(message)) => {
                assert!(message.starts_with("invalid service instance: "), "{message}");
                message
            }
            other => panic!("expected InvalidInstance, got {other:?}"),
        }
    }

    #[test]
    fn accepts_valid_segments() {
        for value in [
            "a",
            "user-service-001",
            "...",
            ".a",
            "a b",
            "café",
            "中文",
            "a:b@c",
            &"x".repeat(MAX_SEGMENT_LEN),
        ] {
            validate_segment("id", value).unwrap();
        }
    }

    #[test]
    fn refuses_bad_segments_showing_the_value() {
        let long = "y".repeat(MAX_SEGMENT_LEN + 1);
        for (value, shown_as, problem) in [
            ("", "\"\"", "must not be empty"),
            ("a/b", "\"a/b\"", "must not contain '/'"),
            ("/", "\"/\"", "must not contain '/'"),
            (".", "\".\"", "must not be \".\" or \"..\""),
            ("..", "\"..\"", "must not be \".\" or \"..\""),
            ("a\u{0}b", "\"a\\0b\"", "control characters"),
            ("tab\t", "\"tab\\t\"", "control characters"),
            ("del\u{7f}", "\"del\\u{7f}\"", "control characters"),
            ("c1\u{85}", "\"c1\\u{85}\"", "control characters"),
            (&long, &format!("{long:?}"), "at most 512 bytes (got 513 bytes"),
        ] {
            let message = invalid_message(validate_segment("name", value));
            assert!(message.contains("name "), "{message}");
            assert!(message.contains(shown_as), "{message} should show {shown_as}");
            assert!(message.contains(problem), "{message}");
        }
        assert_eq!(
            invalid_message(validate_segment("id", "a/b")),
            r#"invalid service instance: id must not contain '/' (got "a/b")"#
        );
    }

    #[test]
    fn shortens_huge_values_in_messages() {
        let huge = "z".repeat(1 << 20);
        let message = invalid_message(validate_segment("id", &huge));
        assert!(message.len() < 2 * MAX_SHOWN_LEN, "{}", message.len());
        assert!(message.contains("1048576 bytes"), "{message}");
        // Cutting never splits a character.
        let wide = "é".repeat(MAX_SHOWN_LEN);
        assert!(shown(&wide).contains("... (2048 bytes in all)"));
    }

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

    #[test]
    fn validates_whole_instances() {
        seed_instance().validate().unwrap();
        instance("a", "b", "", &[], &["[::1]:80", "h:1"]).validate().unwrap();

        let mut bad = seed_instance();
        bad.id = String::new();
        assert!(invalid_message(bad.validate()).contains("id must not be empty"));

        let mut bad = seed_instance();
        bad.name = "a/b".into();
        assert!(invalid_message(bad.validate()).contains(r#"name must not contain '/' (got "a/b")"#));

        let mut bad = seed_instance();
        bad.endpoints.clear();
        let message = invalid_message(bad.validate());
        assert!(message.contains("at least one endpoint"), "{message}");
        assert!(message.contains("\"user-service-001\""), "{message}");

        let mut bad = seed_instance();
        bad.endpoints.push("http://h:1".into());
        assert!(invalid_message(bad.validate()).contains("\"http://h:1\""));

        // Decoding does not validate: a Go peer's odd value is still readable.
        let odd = decode(r#"{"id":"a/b","name":"..","endpoints":["http://x"]}"#);
        assert_eq!(odd.id, "a/b");
        odd.validate().unwrap_err();
    }
}
