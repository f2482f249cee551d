//! Unit tests of the watch's pure parts: TLS classification (the keys and the view: `dcs/keys.rs`).
use super::*;

#[test]
fn only_certificate_and_handshake_failures_are_tls_errors() {
    assert!(is_tls("invalid peer certificate: UnknownIssuer"));
    assert!(is_tls("received fatal alert: BadCertificate"));
    assert!(!is_tls(
        "tcp connect error: Connection refused (os error 111)"
    ));
    assert!(!is_tls(
        "h2 protocol error: peer closed connection without sending TLS close_notify"
    ));
}
