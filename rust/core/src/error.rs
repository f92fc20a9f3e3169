//! The one error type of the core. The bindings map each variant to one Python
//! exception class (see `rust/py/errors.rs`); nothing else translates errors.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A configuration value is unusable (namespace, endpoints, timeouts, TLS files).
    InvalidConfig(String),
    /// A service instance (or one of its fields) is not valid for registration.
    InvalidInstance(String),
    /// A TTL below the one-second minimum or otherwise unusable.
    InvalidTtl(String),
    /// The id is already registered in this registry.
    AlreadyRegistered(String),
    /// The id is not registered in this registry.
    NotFound(String),
    /// The registry, watch or connector was closed; the payload names which.
    Closed(String),
    /// A lease this operation depended on no longer exists.
    LeaseExpired(String),
    /// etcd could not be reached (or had no leader) within the deadline.
    Unavailable(String),
    /// etcd refused the credentials, or the user lacks a permission.
    Authentication(String),
    /// A TLS handshake failed over a certificate (untrusted, wrong name, or a client
    /// certificate refused or missing). Final for one member; another member may differ.
    CertificateRefused(String),
    /// Any other error etcd reported.
    Etcd(String),
}

impl Error {
    /// Whether retrying the same call on another member may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// Whether etcd (or its TLS) refused this client: waiting longer will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Authentication(_) | Error::CertificateRefused(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m)
            | Error::InvalidInstance(m)
            | Error::InvalidTtl(m)
            | Error::LeaseExpired(m)
            | Error::Unavailable(m)
            | Error::Authentication(m)
            | Error::CertificateRefused(m)
            | Error::Etcd(m) => f.write_str(m),
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
