//! The one error type of the core. The bindings map each variant to one Python
//! exception class (see `rust/py/errors.rs`); nothing else translates errors.
//!
//! Errors that come from etcd keep the gRPC status code etcd (or the channel) answered
//! with, in a [`Status`], so callers can branch on the code instead of on the message.

use std::fmt;

pub use tonic::Code;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error's message, and the gRPC status code when etcd answered with one (a timeout,
/// an unreachable member or a value found invalid here has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub message: String,
    pub code: Option<Code>,
}

impl Status {
    pub fn new(message: impl Into<String>, code: Option<Code>) -> Self {
        Self { message: message.into(), code }
    }
}

impl From<String> for Status {
    fn from(message: String) -> Self {
        Self { message, code: None }
    }
}

impl From<&str> for Status {
    fn from(message: &str) -> Self {
        Self { message: message.to_string(), code: None }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A configuration value is unusable (namespace, endpoints, timeouts, TLS files).
    InvalidConfig(String),
    /// A service instance (or one of its fields) is not valid for registration.
    InvalidInstance(Status),
    /// A TTL below the one-second minimum or otherwise unusable.
    InvalidTtl(String),
    /// The id is already registered in this registry.
    AlreadyRegistered(String),
    /// The id is not registered in this registry.
    NotFound(String),
    /// The registry, watch or connector was closed; the payload names which.
    Closed(String),
    /// A lease this operation depended on no longer exists.
    LeaseExpired(Status),
    /// etcd could not be reached (or had no leader) within the deadline.
    Unavailable(Status),
    /// etcd refused the credentials, or the user lacks a permission.
    Authentication(Status),
    /// A TLS handshake failed over a certificate (untrusted, wrong name, or a client
    /// certificate refused or missing). Final for one member; another member may differ.
    CertificateRefused(Status),
    /// Any other error etcd reported.
    Etcd(Status),
    /// The core's xDS server could not start (its loopback listener could not be bound).
    XdsServer(String),
}

impl Error {
    /// Whether retrying the same call on another member may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// The gRPC status code etcd answered with, for errors that came from etcd with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::InvalidInstance(s)
            | Error::LeaseExpired(s)
            | Error::Unavailable(s)
            | Error::Authentication(s)
            | Error::CertificateRefused(s)
            | Error::Etcd(s) => s.code,
            _ => None,
        }
    }

    /// Whether etcd (or its TLS) refused this client: waiting longer will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Authentication(_) | Error::CertificateRefused(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m) | Error::InvalidTtl(m) | Error::XdsServer(m) => f.write_str(m),
            Error::InvalidInstance(s)
            | Error::LeaseExpired(s)
            | Error::Unavailable(s)
            | Error::Authentication(s)
            | Error::CertificateRefused(s)
            | Error::Etcd(s) => f.write_str(&s.message),
            Error::AlreadyRegistered(id) => {
                write!(f, "service instance {id:?} is already registered in this registry")
            }
            Error::NotFound(id) => {
                write!(f, "service instance {id:?} is not registered in this registry")
            }
            Error::Closed(what) => write!(f, "{what} is closed"),
        }
    }
}

impl std::error::Error for Error {}
