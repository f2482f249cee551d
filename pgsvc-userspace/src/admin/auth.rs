//! Basic auth for the metrics listener, like HAProxy's `stats auth USER:PASS`.

/// The one accepted `Authorization` header value, `Basic base64(USER:PASS)`.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    expected: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicAuth(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("expected USER:PASS")]
    NoColon,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("the password is empty")]
    EmptyPassword,
}

impl BasicAuth {
    /// Parses `USER:PASS` (the password may contain colons; the user may not).
    pub fn parse(spec: &str) -> Result<Self, AuthError> {
        let (user, pass) = spec.split_once(':').ok_or(AuthError::NoColon)?;
        if user.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        if pass.is_empty() {
            return Err(AuthError::EmptyPassword);
        }
        Ok(Self {
            expected: format!("Basic {}", base64(spec.as_bytes())),
        })
    }

    /// Whether an `Authorization` header value carries these credentials. The scheme name is
    /// case-insensitive; the comparison takes the same time wherever the first difference is.
    pub fn accepts(&self, header: Option<&str>) -> bool {
        let Some(header) = header else {
            return false;
        };
        let header = header.trim();
        let Some((scheme, token)) = header.split_once(' ') else {
            return false;
        };
        let Some(want) = self.expected.strip_prefix("Basic ") else {
            return false;
        };
        let token = token.trim().as_bytes();
        let diff = want
            .as_bytes()
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        scheme.eq_ignore_ascii_case("basic") && token.len() == want.len() && diff == 0
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn accepts_only_the_configured_credentials() {
        let auth = BasicAuth::parse("prometheus:s3cr:et").expect("valid");
        // base64("prometheus:s3cr:et")
        assert!(auth.accepts(Some("Basic cHJvbWV0aGV1czpzM2NyOmV0")));
        assert!(auth.accepts(Some("basic cHJvbWV0aGV1czpzM2NyOmV0")));
        assert!(!auth.accepts(None));
        assert!(!auth.accepts(Some("Basic cHJvbWV0aGV1czpzM2NyOmV1")));
        assert!(!auth.accepts(Some("Basic cHJvbWV0aGV1czpzM2NyOmV0AA==")));
        assert!(!auth.accepts(Some("Bearer cHJvbWV0aGV1czpzM2NyOmV0")));
        assert!(!auth.accepts(Some("Basic")));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert_eq!(BasicAuth::parse("nocolon"), Err(AuthError::NoColon));
        assert_eq!(BasicAuth::parse(":pw"), Err(AuthError::EmptyUser));
        assert_eq!(BasicAuth::parse("user:"), Err(AuthError::EmptyPassword));
    }
}
