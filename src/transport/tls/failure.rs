//! Handshake and record failures in one line an operator can act on: what
//! the worker logs ([`describe`]) and what the manager reports
//! ([`describe_server`]). Each line says which side's setting to check; none
//! repeats key material or certificate contents beyond rustls's own text.

use rustls::CertificateError;

/// A handshake or record failure in one line an operator can act on.
pub fn describe(err: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "the manager's certificate is not signed by a trusted CA (check --tls-ca)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the manager's certificate does not match the server name ({cert}); check the endpoint's host or --tls-server-name")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the manager's certificate has expired ({cert})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the manager's certificate is not valid yet ({cert})")
            }
            other => format!("the manager's certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the manager requires a client certificate (set --tls-cert and --tls-key)".into()
        }
        rustls::Error::AlertReceived(A::UnknownCA) => {
            "the manager does not trust our client certificate (alert unknown_ca)".into()
        }
        rustls::Error::AlertReceived(A::BadCertificate | A::CertificateUnknown) => {
            "the manager rejected our client certificate".into()
        }
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            "the manager rejected our client certificate as expired".into()
        }
        rustls::Error::AlertReceived(A::ProtocolVersion) => {
            "the manager does not speak TLS 1.3".into()
        }
        rustls::Error::AlertReceived(alert) => format!("the manager sent the alert {alert:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the manager does not speak TLS here ({err})")
        }
        other => other.to_string(),
    }
}

/// A server-side handshake failure described from the manager's side.
pub fn describe_server(err: &rustls::Error) -> String {
    match err {
        rustls::Error::NoCertificatesPresented => {
            "the worker presented no client certificate".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the worker's client certificate is not signed by --tls-client-ca".into()
        }
        rustls::Error::InvalidCertificate(other) => {
            format!("the worker's client certificate was rejected: {other}")
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => {
            "the worker does not trust the manager's certificate (alert unknown_ca)".into()
        }
        rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate | rustls::AlertDescription::CertificateUnknown,
        ) => "the worker rejected the manager's certificate (wrong name?)".into(),
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => {
            "the worker rejected the manager's certificate as expired".into()
        }
        rustls::Error::AlertReceived(alert) => format!("the worker sent the alert {alert:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the worker does not speak TLS here ({err})")
        }
        other => other.to_string(),
    }
}
