//! Every name the xDS server and its clients agree on, in one place: the `xds:` target a
//! channel dials, and the Listener, Cluster and ClusterLoadAssignment resource names it
//! leads to.
//!
//! A target is `xds:///<scope>/<service>`, or `xds://<authority>/<scope>/<service>` when the
//! process already has an xDS bootstrap of its own and ours is added as an authority.
//! `scope` is a label the caller picks for one registry namespace and one per-target
//! configuration (policy, outlier detection, zone), so that one server can serve every
//! registry in the process without two of them sharing a resource. The service comes last
//! because grpc uses the target's last path segment as the `:authority` of its calls.
//!
//! grpc turns the target path into the Listener name: as is (percent-decoded) without an
//! authority, and `xdstp://<authority>/envoy.config.listener.v3.Listener/<percent-encoded
//! path>` with one (gRFC A47). The Cluster and ClusterLoadAssignment names are ours to
//! choose; they follow the same style so that every resource of a target comes from the
//! same authority.

use prost::Name;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use crate::error::{Error, Result};
use crate::instance::validate_segment;

/// The authority of the library's targets in grpc's bootstrap, beside any of the user's.
pub const AUTHORITY: &str = "genesis-registry";

/// Longest scope accepted; scopes are labels, not data.
const MAX_SCOPE_LEN: usize = 64;

/// The three resource types a grpc client asks for, in the order a server should send
/// them on a change (a cluster before its endpoints, both before the listener that
/// routes to them), so that a client never follows a reference to a resource it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Cluster,
    ClusterLoadAssignment,
    Listener,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 3] =
        [ResourceKind::Cluster, ResourceKind::ClusterLoadAssignment, ResourceKind::Listener];

    /// The protobuf message name, as it appears in `xdstp:` names.
    pub fn message_name(self) -> String {
        match self {
            ResourceKind::Cluster => Cluster::full_name(),
            ResourceKind::ClusterLoadAssignment => ClusterLoadAssignment::full_name(),
            ResourceKind::Listener => Listener::full_name(),
        }
    }

    /// The type URL of discovery requests and responses for this kind.
    pub fn type_url(self) -> String {
        match self {
            ResourceKind::Cluster => Cluster::type_url(),
            ResourceKind::ClusterLoadAssignment => ClusterLoadAssignment::type_url(),
            ResourceKind::Listener => Listener::type_url(),
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.type_url() == type_url)
    }
}

/// One service seen through one scope, optionally under an authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct XdsTarget {
    authority: Option<String>,
    scope: String,
    service: String,
}

impl XdsTarget {
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a scope or authority outside `[A-Za-z0-9._~-]` (so
    /// neither ever needs encoding), and [`Error::InvalidInstance`] for a service name that
    /// registration would refuse.
    pub fn new(authority: Option<&str>, scope: &str, service: &str) -> Result<Self> {
        check_label("xDS scope", scope)?;
        if let Some(authority) = authority {
            check_label("xDS authority", authority)?;
        }
        validate_segment("name", service)?;
        Ok(Self {
            authority: authority.map(str::to_string),
            scope: scope.to_string(),
            service: service.to_string(),
        })
    }

    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// What a channel dials: `xds:///scope/service` or `xds://authority/scope/service`.
    pub fn target_uri(&self) -> String {
        format!("xds://{}/{}", self.authority.as_deref().unwrap_or(""), self.encoded_path())
    }

    /// The name of this target's resource of `kind`.
    pub fn resource_name(&self, kind: ResourceKind) -> String {
        match &self.authority {
            None => format!("{}/{}", self.scope, self.service),
            Some(authority) => format!("xdstp://{authority}/{}/{}", kind.message_name(), self.encoded_path()),
        }
    }

    /// The target a resource name of `kind` belongs to; `None` for a name this module did
    /// not make (another control plane's, or malformed). Percent-escapes are decoded
    /// whatever their case, since grpc, not this module, encodes the Listener name.
    pub fn from_resource_name(kind: ResourceKind, name: &str) -> Option<Self> {
        let (authority, path) = match name.strip_prefix("xdstp://") {
            None => (None, name.to_string()),
            Some(rest) => {
                let (authority, rest) = rest.split_once('/')?;
                let encoded = rest.strip_prefix(&kind.message_name())?.strip_prefix('/')?;
                // Context parameters are not ours to interpret.
                if encoded.contains(['?', '#']) {
                    return None;
                }
                (Some(authority), percent_decode(encoded)?)
            }
        };
        let (scope, service) = path.split_once('/')?;
        Self::new(authority, scope, service).ok()
    }

    /// `scope/service` with the service percent-encoded as a URI path needs it.
    fn encoded_path(&self) -> String {
        format!("{}/{}", self.scope, percent_encode_segment(&self.service))
    }
}

fn check_label(what: &str, value: &str) -> Result<()> {
    let fits = !value.is_empty()
        && value.len() <= MAX_SCOPE_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if fits {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "invalid {what} {value:?}: expected 1 to {MAX_SCOPE_LEN} characters among letters, digits, '.', '_', '~', '-'"
        )))
    }
}

/// Encodes every byte a URI path segment may not hold as is (RFC 3986 `pchar`), as
/// grpc does; `/` is encoded too, though service names cannot contain one.
fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        let allowed = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte);
        if allowed {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `None` for a truncated or non-hex escape, or bytes that are not UTF-8.
fn percent_decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_targets_use_the_path_as_every_resource_name() {
        let target = XdsTarget::new(None, "r1.p0", "user-service").unwrap();
        assert_eq!(target.target_uri(), "xds:///r1.p0/user-service");
        for kind in ResourceKind::ALL {
            assert_eq!(target.resource_name(kind), "r1.p0/user-service");
            assert_eq!(XdsTarget::from_resource_name(kind, "r1.p0/user-service"), Some(target.clone()));
        }
    }

    #[test]
    fn authority_targets_use_xdstp_names_per_type() {
        let target = XdsTarget::new(Some("genesis-registry"), "r1", "user service").unwrap();
        assert_eq!(target.target_uri(), "xds://genesis-registry/r1/user%20service");
        assert_eq!(
            target.resource_name(ResourceKind::Listener),
            "xdstp://genesis-registry/envoy.config.listener.v3.Listener/r1/user%20service"
        );
        assert_eq!(
            target.resource_name(ResourceKind::Cluster),
            "xdstp://genesis-registry/envoy.config.cluster.v3.Cluster/r1/user%20service"
        );
        assert_eq!(
            target.resource_name(ResourceKind::ClusterLoadAssignment),
            "xdstp://genesis-registry/envoy.config.endpoint.v3.ClusterLoadAssignment/r1/user%20service"
        );
        for kind in ResourceKind::ALL {
            assert_eq!(
                XdsTarget::from_resource_name(kind, &target.resource_name(kind)),
                Some(target.clone())
            );
        }
        // Lower-case escapes (or none where none are needed) name the same target.
        let lower = "xdstp://genesis-registry/envoy.config.listener.v3.Listener/r1/user%20service";
        assert_eq!(XdsTarget::from_resource_name(ResourceKind::Listener, lower), Some(target.clone()));
        let unicode = XdsTarget::new(Some("a"), "s", "café").unwrap();
        let name = unicode.resource_name(ResourceKind::Listener);
        assert!(name.ends_with("/s/caf%C3%A9"), "{name}");
        assert_eq!(
            XdsTarget::from_resource_name(ResourceKind::Listener, &name.replace("%C3%A9", "%c3%a9")),
            Some(unicode)
        );
    }

    #[test]
    fn foreign_or_malformed_names_belong_to_no_target() {
        for (kind, name) in [
            (ResourceKind::Listener, "no-scope"),
            (ResourceKind::Listener, "/svc"),
            (ResourceKind::Listener, "bad scope/svc"),
            (ResourceKind::Listener, "s/a/b"),
            (ResourceKind::Cluster, "xdstp://a/envoy.config.listener.v3.Listener/s/svc"),
            (ResourceKind::Listener, "xdstp://a/envoy.config.listener.v3.Listener/s/svc?x=1"),
            (ResourceKind::Listener, "xdstp://a/envoy.config.listener.v3.Listener/s/sv%2"),
            (ResourceKind::Listener, "xdstp://a/envoy.config.listener.v3.Listener/s/%FF"),
            (ResourceKind::Listener, "xdstp://a/envoy.config.listener.v3.Listener/s/a%2Fb"),
            (ResourceKind::Listener, "xdstp://a"),
        ] {
            assert_eq!(XdsTarget::from_resource_name(kind, name), None, "{name}");
        }
    }

    #[test]
    fn refuses_labels_that_would_need_encoding() {
        for (authority, scope) in
            [(None, ""), (None, "a/b"), (None, "a b"), (Some("x:1"), "s"), (Some(""), "s")]
        {
            assert!(matches!(XdsTarget::new(authority, scope, "svc"), Err(Error::InvalidConfig(_))));
        }
        assert!(matches!(XdsTarget::new(None, "s", "a/b"), Err(Error::InvalidInstance(_))));
    }

    #[test]
    fn kinds_know_their_type_urls() {
        assert_eq!(
            ResourceKind::Listener.type_url(),
            "type.googleapis.com/envoy.config.listener.v3.Listener"
        );
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::from_type_url(&kind.type_url()), Some(kind));
        }
        assert_eq!(
            ResourceKind::from_type_url("type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
            None
        );
    }
}
