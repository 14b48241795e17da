//! Why a handshake failed, normalised across sources: TLS alert descriptions (RFC 8446
//! §6.2, RFC 5246 §7.2) seen on the wire, and OpenSSL's `X509_V_ERR_*` verification
//! codes seen through uprobes. The raw code is always kept next to the reason.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    CertificateExpired,
    CertificateNotYetValid,
    UnknownCa,
    BadCertificate,
    CertificateRevoked,
    CertificateUnknown,
    UnsupportedCertificate,
    HostnameMismatch,
    ProtocolVersion,
    HandshakeFailure,
    InsufficientSecurity,
    UnrecognizedName,
    NoApplicationProtocol,
    CertificateRequired,
    IllegalParameter,
    DecodeError,
    DecryptError,
    InternalError,
    AccessDenied,
    UserCanceled,
    /// The connection closed (or was reset) by the peer before the handshake ended.
    PeerClosed,
    /// This side closed the connection before the handshake ended, without an alert.
    Aborted,
    /// The peer answered with bytes that are not TLS.
    NotTls,
    /// An alert we cannot read (TLS 1.3 encrypts alerts after ServerHello) and no
    /// library-side reason.
    EncryptedAlert,
    /// No progress for too long.
    Stalled,
    Other,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::CertificateExpired => "certificate_expired",
            FailureReason::CertificateNotYetValid => "certificate_not_yet_valid",
            FailureReason::UnknownCa => "unknown_ca",
            FailureReason::BadCertificate => "bad_certificate",
            FailureReason::CertificateRevoked => "certificate_revoked",
            FailureReason::CertificateUnknown => "certificate_unknown",
            FailureReason::UnsupportedCertificate => "unsupported_certificate",
            FailureReason::HostnameMismatch => "hostname_mismatch",
            FailureReason::ProtocolVersion => "protocol_version",
            FailureReason::HandshakeFailure => "handshake_failure",
            FailureReason::InsufficientSecurity => "insufficient_security",
            FailureReason::UnrecognizedName => "unrecognized_name",
            FailureReason::NoApplicationProtocol => "no_application_protocol",
            FailureReason::CertificateRequired => "certificate_required",
            FailureReason::IllegalParameter => "illegal_parameter",
            FailureReason::DecodeError => "decode_error",
            FailureReason::DecryptError => "decrypt_error",
            FailureReason::InternalError => "internal_error",
            FailureReason::AccessDenied => "access_denied",
            FailureReason::UserCanceled => "user_canceled",
            FailureReason::PeerClosed => "peer_closed",
            FailureReason::Aborted => "aborted",
            FailureReason::NotTls => "not_tls",
            FailureReason::EncryptedAlert => "encrypted_alert",
            FailureReason::Stalled => "stalled",
            FailureReason::Other => "other",
        }
    }
}

/// Alert description → (reason, IANA name).
pub fn from_alert(description: u8) -> (FailureReason, &'static str) {
    use FailureReason::*;
    match description {
        0 => (PeerClosed, "close_notify"),
        10 => (Other, "unexpected_message"),
        20 => (Other, "bad_record_mac"),
        22 => (Other, "record_overflow"),
        40 => (HandshakeFailure, "handshake_failure"),
        42 => (BadCertificate, "bad_certificate"),
        43 => (UnsupportedCertificate, "unsupported_certificate"),
        44 => (CertificateRevoked, "certificate_revoked"),
        45 => (CertificateExpired, "certificate_expired"),
        46 => (CertificateUnknown, "certificate_unknown"),
        47 => (IllegalParameter, "illegal_parameter"),
        48 => (UnknownCa, "unknown_ca"),
        49 => (AccessDenied, "access_denied"),
        50 => (DecodeError, "decode_error"),
        51 => (DecryptError, "decrypt_error"),
        70 => (ProtocolVersion, "protocol_version"),
        71 => (InsufficientSecurity, "insufficient_security"),
        80 => (InternalError, "internal_error"),
        86 => (Other, "inappropriate_fallback"),
        90 => (UserCanceled, "user_canceled"),
        109 => (Other, "missing_extension"),
        110 => (Other, "unsupported_extension"),
        112 => (UnrecognizedName, "unrecognized_name"),
        116 => (CertificateRequired, "certificate_required"),
        120 => (NoApplicationProtocol, "no_application_protocol"),
        _ => (Other, "unknown_alert"),
    }
}

/// OpenSSL `X509_V_ERR_*` code → (reason, OpenSSL name).
pub fn from_verify_error(code: u32) -> (FailureReason, &'static str) {
    use FailureReason::*;
    match code {
        2 => (UnknownCa, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT"),
        7 => (BadCertificate, "X509_V_ERR_CERT_SIGNATURE_FAILURE"),
        9 => (CertificateNotYetValid, "X509_V_ERR_CERT_NOT_YET_VALID"),
        10 => (CertificateExpired, "X509_V_ERR_CERT_HAS_EXPIRED"),
        13 => (BadCertificate, "X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD"),
        14 => (BadCertificate, "X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD"),
        18 => (UnknownCa, "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT"),
        19 => (UnknownCa, "X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN"),
        20 => (UnknownCa, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
        21 => (UnknownCa, "X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE"),
        22 => (BadCertificate, "X509_V_ERR_CERT_CHAIN_TOO_LONG"),
        23 => (CertificateRevoked, "X509_V_ERR_CERT_REVOKED"),
        24 => (BadCertificate, "X509_V_ERR_INVALID_CA"),
        26 => (UnsupportedCertificate, "X509_V_ERR_INVALID_PURPOSE"),
        27 => (UnknownCa, "X509_V_ERR_CERT_UNTRUSTED"),
        28 => (BadCertificate, "X509_V_ERR_CERT_REJECTED"),
        62 => (HostnameMismatch, "X509_V_ERR_HOSTNAME_MISMATCH"),
        63 => (HostnameMismatch, "X509_V_ERR_EMAIL_MISMATCH"),
        64 => (HostnameMismatch, "X509_V_ERR_IP_ADDRESS_MISMATCH"),
        _ => (Other, "X509_V_ERR"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_is_the_same_reason_from_both_sources() {
        assert_eq!(from_alert(45).0, FailureReason::CertificateExpired);
        assert_eq!(from_verify_error(10).0, FailureReason::CertificateExpired);
        assert_eq!(from_alert(48).0, from_verify_error(18).0);
        assert_eq!(
            from_alert(70),
            (FailureReason::ProtocolVersion, "protocol_version")
        );
        assert_eq!(from_verify_error(9999).0, FailureReason::Other);
    }
}
