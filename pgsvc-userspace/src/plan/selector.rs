//! JMESPath service selectors, evaluated over a cluster's members as Pigsty's `json_query` does.
//!
//! The input is the list of members' `hostvars` (every inventory variable plus
//! `inventory_hostname`), in inventory order. A selector must yield member objects (or null, which
//! selects nothing); members are identified by `inventory_hostname`, as Pigsty's template does.
//!
//! Pigsty writes literals the legacy way, `` `primary` `` instead of `` `"primary"` ``: Python's
//! jmespath (what Ansible's `json_query` runs) still reads a literal that is not valid JSON as a
//! string, the Rust crate does not, so such literals are rewritten before compiling.

use serde_json::Value as Json;

/// Why a selector could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorError {
    /// The expression does not parse; `offset` is the character position in the expression.
    Syntax { offset: usize, reason: String },
    /// It parses but fails on these members (e.g. a function given the wrong type).
    Runtime { reason: String },
    /// It yields something other than member objects.
    NotMembers { found: String },
}

/// Evaluates `expression` over `members` (a JSON array of member objects) and returns the selected
/// members' `inventory_hostname`s in the order the expression yields them, without repeats.
///
/// # Errors
/// [`SelectorError`] when the expression is invalid or does not select members.
pub fn select(expression: &str, members: &Json) -> Result<Vec<String>, SelectorError> {
    let (rewritten, shifts) = quote_legacy_literals(expression);
    let compiled = jmespath::compile(&rewritten).map_err(|err| SelectorError::Syntax {
        offset: original_offset(err.offset, &shifts),
        reason: err.reason.to_string(),
    })?;
    let result = compiled
        .search(members)
        .map_err(|err| SelectorError::Runtime {
            reason: err.reason.to_string(),
        })?;
    let items = match &*result {
        jmespath::Variable::Null => return Ok(Vec::new()),
        jmespath::Variable::Array(items) => items,
        other => {
            return Err(SelectorError::NotMembers {
                found: format!("a {}", other.get_type()),
            });
        }
    };
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        let name = match &**item {
            jmespath::Variable::Object(fields) => {
                match fields.get("inventory_hostname").map(|v| &**v) {
                    Some(jmespath::Variable::String(name)) => name.clone(),
                    _ => {
                        return Err(SelectorError::NotMembers {
                            found: "an object that is not a cluster member".to_owned(),
                        });
                    }
                }
            }
            other => {
                return Err(SelectorError::NotMembers {
                    found: format!("a list holding a {}", other.get_type()),
                });
            }
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Rewrites every backtick literal that is not valid JSON into a JSON string, as Python's jmespath
/// reads it (leading blanks dropped). Returns the new expression and, for each rewrite, the
/// character offset in the new text after which `added` more characters precede than in the
/// original — to map error positions back.
fn quote_legacy_literals(expression: &str) -> (String, Vec<(usize, isize)>) {
    let mut out = String::with_capacity(expression.len() + 8);
    let mut shifts = Vec::new();
    let mut added: isize = 0;
    let mut chars = expression.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                // Raw strings and quoted identifiers may hold backticks; copy them through.
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '`' => {
                let mut body = String::new();
                let mut closed = false;
                while let Some(d) = chars.next() {
                    match d {
                        '\\' if chars.peek() == Some(&'`') => {
                            body.push('`');
                            chars.next();
                        }
                        '`' => {
                            closed = true;
                            break;
                        }
                        _ => body.push(d),
                    }
                }
                let escaped_len = body.chars().count() + body.matches('`').count();
                let json = if !closed || serde_json::from_str::<Json>(&body).is_ok() {
                    body
                } else {
                    Json::String(body.trim_start().to_owned()).to_string()
                };
                let literal = json.replace('`', "\\`");
                let new_len = literal.chars().count();
                out.push('`');
                out.push_str(&literal);
                if closed {
                    out.push('`');
                }
                if new_len != escaped_len {
                    added += isize::try_from(new_len).unwrap_or(0)
                        - isize::try_from(escaped_len).unwrap_or(0);
                    shifts.push((out.chars().count(), added));
                }
            }
            _ => out.push(c),
        }
    }
    (out, shifts)
}

/// Maps a character offset in the rewritten expression back to the original.
fn original_offset(offset: usize, shifts: &[(usize, isize)]) -> usize {
    let added = shifts
        .iter()
        .take_while(|(at, _)| *at <= offset)
        .last()
        .map_or(0, |(_, added)| *added);
    offset.saturating_add_signed(-added)
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;
    use serde_json::json;

    /// pg-test from the Pigsty document, plus variables to probe missing and mistyped values.
    fn members() -> Json {
        json!([
            { "inventory_hostname": "198.18.0.11", "pg_seq": 1, "pg_role": "primary" },
            { "inventory_hostname": "198.18.0.12", "pg_seq": 2, "pg_role": "replica", "pg_weight": 100 },
            { "inventory_hostname": "198.18.0.13", "pg_seq": "3", "pg_role": "replica", "pg_offline_query": true },
            { "inventory_hostname": "198.18.0.14", "pg_seq": 4, "pg_role": "offline", "pg_offline_query": false },
        ])
    }

    #[test]
    fn selector_table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[]",
                &["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"],
            ),
            (
                "[? pg_role == `offline` || pg_offline_query ]",
                &["198.18.0.13", "198.18.0.14"],
            ),
            // pg_offline_query is missing on .11 and .12: null, and !null is true.
            (
                "[? pg_role == `replica` && !pg_offline_query]",
                &["198.18.0.12"],
            ),
            (
                "[? pg_role == `primary` || pg_role == `offline` ]",
                &["198.18.0.11", "198.18.0.14"],
            ),
            // A missing variable is null: never equal to a value, falsy on its own.
            ("[? pg_weight == `100`]", &["198.18.0.12"]),
            ("[? pg_weight]", &["198.18.0.12"]),
            (
                "[? pg_upstream == null]",
                &["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"],
            ),
            // Numbers and strings never compare equal: .13 wrote pg_seq as a quoted string.
            ("[? pg_seq == `3`]", &[]),
            ("[? pg_seq == '3']", &["198.18.0.13"]),
            ("[? pg_seq == `1`]", &["198.18.0.11"]),
            ("[? pg_seq >= `2`]", &["198.18.0.12", "198.18.0.14"]),
            // Matches nothing: valid, an empty service.
            ("[? pg_role == `standby`]", &[]),
            // Order follows the expression.
            (
                "reverse(@)",
                &["198.18.0.14", "198.18.0.13", "198.18.0.12", "198.18.0.11"],
            ),
        ];
        let members = members();
        for (expression, expected) in cases {
            let names =
                select(expression, &members).unwrap_or_else(|e| panic!("{expression}: {e:?}"));
            assert_eq!(names, *expected, "{expression}");
        }
    }

    #[test]
    fn invalid_expressions_report_their_position() {
        let err = select("[? pg_role == ]", &members()).unwrap_err();
        let SelectorError::Syntax { offset, reason } = err else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(offset, 14, "{reason}");
        assert!(reason.starts_with("Parse error"), "{reason}");
    }

    #[test]
    fn legacy_literals_are_quoted() {
        assert_eq!(
            quote_legacy_literals("[? a == `primary`]").0,
            "[? a == `\"primary\"`]"
        );
        assert_eq!(
            quote_legacy_literals("[? a == `1` && b == `\"x\"`]").0,
            "[? a == `1` && b == `\"x\"`]"
        );
        assert_eq!(
            quote_legacy_literals("[? a == 'it`s' || b == ` spaced`]").0,
            "[? a == 'it`s' || b == `\"spaced\"`]"
        );
        assert_eq!(
            quote_legacy_literals("[? a == `true`]").0,
            "[? a == `true`]"
        );
    }

    #[test]
    fn error_offsets_refer_to_the_original_text() {
        // The rewrite of `primary` adds two characters before the error.
        let err = select("[? pg_role == `primary` || ]", &members()).unwrap_err();
        let SelectorError::Syntax { offset, .. } = err else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(offset, 27);
    }

    #[test]
    fn non_member_results_are_rejected() {
        for expression in ["[].pg_seq", "length(@)", "[0]"] {
            let err = select(expression, &members()).unwrap_err();
            assert!(
                matches!(err, SelectorError::NotMembers { .. }),
                "{expression}: {err:?}"
            );
        }
    }

    #[test]
    fn runtime_errors_are_reported() {
        let err = select("[? contains(pg_seq, `1`)]", &members()).unwrap_err();
        assert!(matches!(err, SelectorError::Runtime { .. }), "{err:?}");
    }
}
