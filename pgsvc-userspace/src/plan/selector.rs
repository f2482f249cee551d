//! JMESPath service selectors, evaluated over a cluster's members as Pigsty's `json_query` does.
//!
//! The input is the list of members' `hostvars` (every inventory variable plus
//! `inventory_hostname`), in inventory order. A selector must yield member objects (or null, which
//! selects nothing); members are identified by `inventory_hostname`, as Pigsty's template does.
//!
//! Pigsty writes literals the legacy way, `` `primary` `` instead of `` `"primary"` ``: Python's
//! jmespath (what Ansible's `json_query` runs) still reads a literal that is not valid JSON as a
//! string, the Rust crate does not, so such literals are rewritten before compiling.

use std::collections::HashSet;

use serde_json::Value as Json;

/// Longest selector accepted, in bytes. Pigsty's own are under 60; a selector is one expression
/// written by hand, and the JMESPath parser and evaluator are recursive, so size is bounded first.
pub const MAX_SELECTOR_LEN: usize = 4096;
/// Most brackets and operators (`( [ { ! & | . = < >`, each character counted) in one selector.
/// Every one of them can add a level to the syntax tree, and the JMESPath parser, evaluator and
/// the tree's drop all recurse over that depth — a chain `a || a || …` as much as nested
/// parentheses; nothing else adds depth. Pigsty's own selectors have at most 5. Measured in a
/// debug build (frames are largest there), 64 levels need under 768 KiB of stack: inside an async
/// worker's 2 MiB. Checked before the expression is parsed, so a selector nested 10,000 deep is an
/// error here, not a stack overflow there.
pub const MAX_SELECTOR_NESTING: usize = 64;

/// Why a selector could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorError {
    /// The expression does not parse; `offset` is the character position in the expression.
    Syntax { offset: usize, reason: String },
    /// It parses but fails on these members (e.g. a function given the wrong type).
    Runtime { reason: String },
    /// It yields something other than member objects.
    NotMembers { found: String },
    /// Longer than [`MAX_SELECTOR_LEN`] or with more than [`MAX_SELECTOR_NESTING`] levels.
    TooComplex { reason: String },
    /// The data it would be evaluated over is past the plan's bound (see `plan::members`).
    TooMuchData { reason: String },
}

/// Refuses a selector the recursive JMESPath parser should not be given; see the limits above.
///
/// # Errors
/// [`SelectorError::TooComplex`] with what is over the limit.
pub fn check_complexity(expression: &str) -> Result<(), SelectorError> {
    if expression.len() > MAX_SELECTOR_LEN {
        return Err(SelectorError::TooComplex {
            reason: format!(
                "{} bytes long, the limit is {MAX_SELECTOR_LEN}",
                expression.len()
            ),
        });
    }
    let mut nesting = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expression.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '(' | '[' | '{' | '!' | '&' | '|' | '.' | '=' | '<' | '>' => nesting += 1,
            _ => {}
        }
    }
    if nesting > MAX_SELECTOR_NESTING {
        return Err(SelectorError::TooComplex {
            reason: format!(
                "{nesting} brackets and operators (each can nest the expression one level deeper), the limit is {MAX_SELECTOR_NESTING}"
            ),
        });
    }
    Ok(())
}

/// The expression for an error message: whole when short, else its start and its length.
pub fn abbreviate(expression: &str) -> String {
    const SHOWN: usize = 80;
    if expression.chars().count() <= SHOWN {
        return expression.to_owned();
    }
    let start: String = expression.chars().take(SHOWN).collect();
    format!("{start}… ({} bytes)", expression.len())
}

/// Evaluates `expression` over `members` (a JSON array of member objects) and returns the selected
/// members' `inventory_hostname`s in the order the expression yields them, without repeats.
///
/// # Errors
/// [`SelectorError`] when the expression is invalid or does not select members.
pub fn select(expression: &str, members: &Json) -> Result<Vec<String>, SelectorError> {
    evaluate(&compile(expression)?, members)
}

/// A selector checked against the limits and compiled.
///
/// # Errors
/// [`SelectorError::TooComplex`] or [`SelectorError::Syntax`].
pub fn compile(expression: &str) -> Result<jmespath::Expression<'static>, SelectorError> {
    check_complexity(expression)?;
    let (rewritten, shifts) = quote_legacy_literals(expression);
    jmespath::compile(&rewritten).map_err(|err| SelectorError::Syntax {
        offset: original_offset(err.offset, &shifts),
        reason: err.reason.to_string(),
    })
}

/// Evaluates a compiled selector as [`select`] does.
///
/// # Errors
/// [`SelectorError::Runtime`] or [`SelectorError::NotMembers`].
pub fn evaluate(
    compiled: &jmespath::Expression<'static>,
    members: &Json,
) -> Result<Vec<String>, SelectorError> {
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
    let mut seen = HashSet::with_capacity(items.len());
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
        if seen.insert(name.clone()) {
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
