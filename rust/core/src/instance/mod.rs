//! The service instance record and its validation rules; the endpoint grammar
//! (`endpoint.rs`), and the wire format: Go's JSON written (`encode.rs`) and read (`decode.rs`).
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

mod decode;
mod encode;
mod endpoint;

use std::collections::BTreeMap;

use crate::error::{Error, Result};
pub use endpoint::{endpoint_target, split_endpoint, validate_endpoint};

/// Longest id or name accepted, in bytes. Both end up in an etcd key, and
/// keeping keys short keeps range reads and watch events cheap.
const MAX_SEGMENT_LEN: usize = 512;

/// Bad values longer than this are shortened in error messages so that a
/// megabyte-sized id does not turn into a megabyte-sized exception.
const MAX_SHOWN_LEN: usize = 1024;

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
            return Err(Error::InvalidInstance(
                format!(
                    "invalid service instance: at least one endpoint is required (instance {} has none)",
                    shown(&self.id)
                )
                .into(),
            ));
        }
        self.endpoints.iter().try_for_each(|e| validate_endpoint(e))
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
        return Err(Error::InvalidInstance(
            format!(
                "invalid service instance: {what} must be at most {MAX_SEGMENT_LEN} bytes (got {} bytes: {})",
                value.len(),
                shown(value)
            )
            .into(),
        ));
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else if value.contains('/') {
        "must not contain '/'"
    } else if value == "." || value == ".." {
        "must not be \".\" or \"..\""
    } else {
        return Ok(());
    };
    Err(Error::InvalidInstance(
        format!("invalid service instance: {what} {problem} (got {})", shown(value)).into(),
    ))
}

/// The instance id a key under `prefix` (`<namespace>/<service>/`) names: its last segment.
/// Keys nested deeper (another `/` after the prefix) or not valid UTF-8 are not instance keys.
pub(crate) fn instance_id<'k>(prefix: &str, key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let id = std::str::from_utf8(rest).ok()?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// `value` quoted and escaped for an error message, shortened if huge.
pub(crate) fn shown(value: &str) -> String {
    if value.len() <= MAX_SHOWN_LEN {
        return format!("{value:?}");
    }
    let mut end = MAX_SHOWN_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes in all)", &value[..end], value.len())
}

/// Builders and decoders shared by the tests of the encoder, the decoder and validation.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::error::Status;

    pub(crate) fn instance(
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

    pub(crate) fn json(instance: &ServiceInstance) -> String {
        String::from_utf8(instance.to_json()).expect("the encoder writes UTF-8")
    }

    pub(crate) fn decode(input: impl AsRef<[u8]>) -> ServiceInstance {
        let input = input.as_ref();
        ServiceInstance::from_json(input)
            .unwrap_or_else(|e| panic!("{:?} should decode: {e}", String::from_utf8_lossy(input)))
    }

    pub(crate) fn decode_error(input: impl AsRef<[u8]>) -> String {
        let input = input.as_ref();
        match ServiceInstance::from_json(input) {
            Ok(decoded) => panic!("{:?} should be refused, got {decoded:?}", String::from_utf8_lossy(input)),
            Err(Error::InvalidInstance(Status { message, .. })) => {
                assert!(message.starts_with("invalid service instance JSON: "), "{message}");
                message
            }
            Err(other) => panic!("wrong error variant: {other:?}"),
        }
    }

    /// The instance of the seed example, as a Go peer registers it.
    pub(crate) fn seed_instance() -> ServiceInstance {
        instance(
            "user-service-001",
            "user-service",
            "1.0.0",
            &[("region", "us-west-1"), ("zone", "zone-a"), ("weight", "100")],
            &["grpc://192.168.1.100:8080"],
        )
    }

    pub(crate) fn invalid_message(result: Result<()>) -> String {
        match result {
            Err(Error::InvalidInstance(Status { message, .. })) => {
                assert!(message.starts_with("invalid service instance: "), "{message}");
                message
            }
            other => panic!("expected InvalidInstance, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn instance_ids_come_from_the_last_key_segment() {
        let prefix = "/genesis/services/user/";
        assert_eq!(instance_id(prefix, b"/genesis/services/user/u-1"), Some("u-1"));
        assert_eq!(instance_id(prefix, b"/genesis/services/user/"), None);
        assert_eq!(instance_id(prefix, b"/genesis/services/user/a/b"), None);
        assert_eq!(instance_id(prefix, b"/genesis/services/other/u-1"), None);
        assert_eq!(instance_id(prefix, b"/genesis/services/user/\xff"), None);
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
