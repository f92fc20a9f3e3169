//! How etcd-client's errors become the core's: by gRPC status code, by the few etcd
//! messages that matter, and by the TLS failures that retrying cannot fix.

use crate::error::{Code, Error, Status};

/// Maps an etcd-client error onto the core's error enum, naming the operation; an
/// error etcd answered with a gRPC status keeps its code.
pub(crate) fn classify(err: etcd_client::Error, what: &str) -> Error {
    let code = match &err {
        etcd_client::Error::GRpcStatus(status) => Some(status.code()),
        _ => None,
    };
    if let Some(refused) = certificate_failure(&err, what) {
        return with_code(refused, code);
    }
    with_code(classify_message(err, what), code)
}

/// `error` with etcd's status code, for the variants that carry one.
fn with_code(error: Error, code: Option<Code>) -> Error {
    let keep = |s: Status| Status { code, ..s };
    match error {
        Error::InvalidInstance(s) => Error::InvalidInstance(keep(s)),
        Error::LeaseExpired(s) => Error::LeaseExpired(keep(s)),
        Error::Unavailable(s) => Error::Unavailable(keep(s)),
        Error::Authentication(s) => Error::Authentication(keep(s)),
        Error::CertificateRefused(s) => Error::CertificateRefused(keep(s)),
        Error::Etcd(s) => Error::Etcd(keep(s)),
        other => other,
    }
}

fn classify_message(err: etcd_client::Error, what: &str) -> Error {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
                    Error::Unavailable(format!("{what}: etcd unavailable: {}", describe_status(&status)).into())
                }
                // etcd's back-pressure when its apply loop lags: retry after a pause.
                _ if msg.contains("too many requests") => {
                    Error::Unavailable(format!("{what}: etcd is overloaded: {msg}").into())
                }
                // etcd's --max-request-bytes, or the gRPC message limit just above it: the
                // same request fails on every member, so say what is too large instead.
                _ if msg.contains("request is too large") || msg.contains("larger than max") => {
                    Error::InvalidInstance(format!(
                        "{what}: etcd refused the request as too large ({msg}); an instance must encode \
                         to less than etcd's --max-request-bytes"
                    ).into())
                }
                // Matched on the message whatever the code: an arm limited to InvalidArgument
                // missed it on the read behind a first get_service.
                _ if msg.contains("user name is empty") => Error::Authentication(format!(
                    "{what}: etcd requires authentication but no user name was given (set username and password)"
                ).into()),
                Code::Unknown | Code::Internal if is_transport_message(msg) => {
                    Error::Unavailable(format!("{what}: etcd unavailable: {}", describe_status(&status)).into())
                }
                Code::Unauthenticated => {
                    Error::Authentication(format!("{what}: etcd rejected the credentials: {msg}").into())
                }
                Code::PermissionDenied => {
                    Error::Authentication(format!("{what}: permission denied by etcd: {msg}").into())
                }
                Code::InvalidArgument if msg.contains("authentication failed") => Error::Authentication(
                    format!("{what}: authentication failed: invalid user name or password").into(),
                ),
                Code::FailedPrecondition if msg.contains("authentication is not enabled") => {
                    Error::Authentication(format!(
                        "{what}: credentials were given but authentication is not enabled on this etcd cluster"
                    ).into())
                }
                Code::NotFound if msg.contains("lease not found") => {
                    Error::LeaseExpired(format!("{what}: {msg}").into())
                }
                _ => Error::Etcd(format!("{what}: {}", describe_status(&status)).into()),
            }
        }
        etcd_client::Error::TransportError(e) => {
            Error::Unavailable(format!("{what}: cannot reach etcd: {}", error_chain(&e)).into())
        }
        etcd_client::Error::IoError(e) => {
            Error::Unavailable(format!("{what}: cannot reach etcd: {}", error_chain(&e)).into())
        }
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            Error::LeaseExpired(format!("{what}: {m}").into())
        }
        etcd_client::Error::InvalidUri(e) => {
            Error::InvalidConfig(format!("{what}: invalid etcd endpoint: {e}"))
        }
        other => Error::Etcd(format!("{what}: {}", error_chain(&other)).into()),
    }
}

/// How every certificate failure's message starts (see [`certificate_failure`]).
const TLS_REFUSED: &str = "TLS handshake with etcd failed";

/// A TLS handshake that failed over a certificate, as [`Error::CertificateRefused`].
///
/// etcd-client reports these as an unavailable channel, which the retry loops would
/// retry until the dial timeout; but an untrusted server certificate, a name it does
/// not cover, or a client certificate etcd refuses stay so on every attempt. Failing
/// at once, with the cause and what to check, beats a timeout that hides it.
fn certificate_failure(err: &etcd_client::Error, what: &str) -> Option<Error> {
    let text = match err {
        etcd_client::Error::GRpcStatus(status) => describe_status(status),
        etcd_client::Error::TransportError(e) => error_chain(e),
        _ => return None,
    };
    let cause = text.split(": transport error").next().unwrap_or(&text);
    let hint = if text.contains("invalid peer certificate") {
        if text.contains("not valid for name") {
            "etcd's certificate does not cover the name it was reached by (set server_name to a name it covers)"
        } else {
            "etcd's certificate is not trusted (check the CA file: it must have signed etcd's certificate)"
        }
    } else if text.contains("received fatal alert: CertificateRequired")
        || (text.contains("received fatal alert:")
            && [
                "BadCertificate",
                "UnknownCA",
                "UnsupportedCertificate",
                "CertificateUnknown",
                "AccessDenied",
            ]
            .iter()
            .any(|alert| text.contains(alert)))
    {
        "etcd refused the client certificate, or wanted one and got none (set cert_file and key_file to a certificate its CA signed)"
    } else {
        return None;
    };
    Some(Error::CertificateRefused(format!("{what}: {TLS_REFUSED}: {hint}: {cause}").into()))
}

fn is_transport_message(msg: &str) -> bool {
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "tcp connect",
        "goaway",
        "stream no longer needed",
    ]
    .iter()
    .any(|needle| msg.to_ascii_lowercase().contains(needle))
}

fn describe_status(status: &tonic::Status) -> String {
    let mut text = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// An error and its causes, joined, so that TLS and socket failures say what happened.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::worth_retrying;

    #[test]
    fn status_codes_map_to_errors() {
        let unavailable = classify(tonic::Status::unavailable("etcdserver: no leader").into(), "put");
        assert!(
            matches!(unavailable, Error::Unavailable(ref m) if m.message.contains("no leader") && m.message.starts_with("put"))
        );
        let auth = classify(
            tonic::Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")
                .into(),
            "connect",
        );
        assert!(matches!(auth, Error::Authentication(_)));
        let anonymous =
            classify(tonic::Status::invalid_argument("etcdserver: user name is empty").into(), "list");
        assert!(matches!(anonymous, Error::Authentication(ref m) if m.message.contains("no user name")));
        let lease = classify(tonic::Status::not_found("etcdserver: requested lease not found").into(), "put");
        assert!(matches!(lease, Error::LeaseExpired(_)));
        let denied =
            classify(tonic::Status::permission_denied("etcdserver: permission denied").into(), "put");
        assert!(matches!(denied, Error::Authentication(ref m) if m.message.contains("permission denied")));
    }

    #[test]
    fn errors_from_a_status_keep_its_code_and_others_have_none() {
        let cases = [
            (tonic::Status::unavailable("etcdserver: no leader"), Code::Unavailable),
            (tonic::Status::permission_denied("etcdserver: permission denied"), Code::PermissionDenied),
            (tonic::Status::unauthenticated("etcdserver: invalid auth token"), Code::Unauthenticated),
            (tonic::Status::not_found("etcdserver: requested lease not found"), Code::NotFound),
            (tonic::Status::invalid_argument("etcdserver: user name is empty"), Code::InvalidArgument),
            (tonic::Status::unavailable("invalid peer certificate: UnknownIssuer"), Code::Unavailable),
            (tonic::Status::data_loss("etcdserver: corrupt"), Code::DataLoss),
            (tonic::Status::invalid_argument("etcdserver: request is too large"), Code::InvalidArgument),
        ];
        for (status, code) in cases {
            let error = classify(status.into(), "put");
            assert_eq!(error.code(), Some(code), "{error}");
        }
        let keep_alive =
            classify(etcd_client::Error::LeaseKeepAliveError("lease not found".into()), "keep-alive");
        assert!(matches!(keep_alive, Error::LeaseExpired(_)) && keep_alive.code().is_none());
        assert_eq!(Error::InvalidTtl("0s".into()).code(), None);
    }

    #[test]
    fn certificate_failures_are_not_retried() {
        let untrusted =
            classify(tonic::Status::unavailable("invalid peer certificate: UnknownIssuer").into(), "connect");
        assert!(
            matches!(untrusted, Error::CertificateRefused(ref m) if m.message.contains("not trusted") && m.message.contains("UnknownIssuer")),
            "{untrusted}"
        );
        assert!(!untrusted.is_retryable());
        assert!(!worth_retrying(&untrusted, 1) && worth_retrying(&untrusted, 3));
        let denied = Error::Authentication("put: permission denied by etcd".into());
        assert!(!worth_retrying(&denied, 3));
        let name = classify(
            tonic::Status::unavailable(
                "invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for ...",
            )
            .into(),
            "connect",
        );
        assert!(
            matches!(name, Error::CertificateRefused(ref m) if m.message.contains("server_name")),
            "{name}"
        );
        let refused =
            classify(tonic::Status::unavailable("received fatal alert: BadCertificate").into(), "connect");
        assert!(
            matches!(refused, Error::CertificateRefused(ref m) if m.message.contains("client certificate")),
            "{refused}"
        );
        // A handshake cut short is not a certificate problem: it may be a member restarting.
        let eof = classify(tonic::Status::unavailable("tls handshake eof").into(), "connect");
        assert!(eof.is_retryable(), "{eof}");
    }
}
