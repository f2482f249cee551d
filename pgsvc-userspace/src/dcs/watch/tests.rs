//! Unit tests of the watch's pure parts: Patroni's failsafe setting, the view, TLS classification.
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

#[test]
fn failsafe_mode_is_read_from_patronis_config() {
    assert!(failsafe_mode(br#"{"ttl":30,"failsafe_mode":true}"#));
    assert!(!failsafe_mode(br#"{"ttl":30,"failsafe_mode":false}"#));
    assert!(!failsafe_mode(br#"{"ttl":30}"#));
    assert!(!failsafe_mode(b"not json"));
}

#[test]
fn without_a_leader_failsafe_mode_falls_back_to_rest_checks() {
    assert_eq!(view(None, false), LeaderView::Leader(None));
    assert!(matches!(view(None, true), LeaderView::Fallback(r) if r.contains("failsafe_mode")));
    assert_eq!(
        view(Some("pg-test-1"), true),
        LeaderView::Leader(Some("pg-test-1".into()))
    );
}
