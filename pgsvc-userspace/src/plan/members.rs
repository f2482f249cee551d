//! A cluster's members as its selectors see them, built so that planning stays linear.
//!
//! Every member carries all its variables, among them the cluster's whole `pg_services` list; a
//! JMESPath search copies its input, so evaluating each of S services over the full members costs
//! S × (size of the variables) — quadratic in the number of services (4,000 services took 22 s).
//! A selector can only reach a member's variables by name, or all of them through `@` or `*`; so
//! each selector is evaluated over members holding just the variables it names (plus
//! `inventory_hostname`), and over the full members only when it uses `@` or `*`. Results are
//! cached per expression text: many services share a selector (`[]`).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

use super::selector::{self, SelectorError};
use crate::config::{Host, Node, Value};

/// Most JSON values built for selectors in one plan. Selectors that name their variables need a
/// few per member; one using `@` or `*` needs every variable of every member of its cluster. The
/// bound keeps a hostile inventory (a huge variable under thousands of hosts) from exhausting
/// memory here: 4 million values are a few hundred MB at worst.
pub const MAX_SELECTOR_DATA: usize = 4_000_000;

/// Compiled selectors by text, shared by every cluster of a plan (each cluster has the same four
/// default services: compiling them once matters with thousands of clusters), and what is left of
/// [`MAX_SELECTOR_DATA`].
pub struct Compiled {
    by_text: RefCell<HashMap<String, Result<jmespath::Expression<'static>, SelectorError>>>,
    data_left: Cell<usize>,
}

impl Default for Compiled {
    fn default() -> Self {
        Compiled {
            by_text: RefCell::default(),
            data_left: Cell::new(MAX_SELECTOR_DATA),
        }
    }
}

impl Compiled {
    /// `node` as JSON, charged to the plan's budget; None once it is spent.
    fn json(&self, node: &Node) -> Option<Json> {
        let left = self.data_left.get().checked_sub(1)?;
        self.data_left.set(left);
        Some(match &node.value {
            Value::Seq(items) => Json::Array(
                items
                    .iter()
                    .map(|n| self.json(n))
                    .collect::<Option<Vec<_>>>()?,
            ),
            Value::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| Some((k.scalar_text().unwrap_or_default(), self.json(v)?)))
                    .collect::<Option<serde_json::Map<_, _>>>()?,
            ),
            _ => node.to_json(),
        })
    }

    fn evaluate(&self, expression: &str, members: &Json) -> Result<Vec<String>, SelectorError> {
        let mut by_text = self.by_text.borrow_mut();
        let compiled = by_text
            .entry(expression.to_owned())
            .or_insert_with(|| selector::compile(expression));
        match compiled {
            Ok(compiled) => selector::evaluate(compiled, members),
            Err(err) => Err(err.clone()),
        }
    }
}

pub struct Members<'a> {
    hosts: &'a [&'a Host],
    compiled: &'a Compiled,
    /// All variables of all members (for selectors with `@` or `*`); None past the budget.
    full: OnceCell<Option<Json>>,
    cache: RefCell<HashMap<String, Result<Vec<String>, SelectorError>>>,
}

impl<'a> Members<'a> {
    pub fn new(hosts: &'a [&'a Host], compiled: &'a Compiled) -> Self {
        Members {
            hosts,
            compiled,
            full: OnceCell::new(),
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// [`selector::select`] over these members.
    ///
    /// # Errors
    /// As [`selector::select`].
    pub fn select(&self, expression: &str) -> Result<Vec<String>, SelectorError> {
        if let Some(known) = self.cache.borrow().get(expression) {
            return known.clone();
        }
        selector::check_complexity(expression)?;
        let names = referenced_names(expression);
        let pruned;
        let data = match &names {
            Some(names) => {
                pruned = self.members(Some(names));
                pruned.as_ref()
            }
            None => self.full.get_or_init(|| self.members(None)).as_ref(),
        };
        let result = match data {
            Some(data) => self.compiled.evaluate(expression, data),
            None => Err(SelectorError::TooMuchData {
                reason: format!(
                    "the members' variables it can see add up to more than {MAX_SELECTOR_DATA} values{}",
                    if names.is_none() {
                        " (it uses `@` or `*`, which see every variable; name the variables instead)"
                    } else {
                        ""
                    }
                ),
            }),
        };
        self.cache
            .borrow_mut()
            .insert(expression.to_owned(), result.clone());
        result
    }

    /// The members as JSON: with only the variables in `names` (those they have) when given, else
    /// with all; `inventory_hostname` and `group_names` as Ansible's `hostvars` has them. None when
    /// the plan's budget runs out.
    fn members(&self, names: Option<&HashSet<String>>) -> Option<Json> {
        let mut members = Vec::with_capacity(self.hosts.len());
        for host in self.hosts {
            let mut object = serde_json::Map::new();
            match names {
                // Few names, many variables: look each name up.
                Some(names) => {
                    for name in names {
                        if let Some(value) = host.var(name) {
                            object.insert(name.clone(), self.compiled.json(value)?);
                        }
                    }
                }
                None => {
                    for (name, value) in host.vars() {
                        object.insert(name.to_owned(), self.compiled.json(value)?);
                    }
                }
            }
            if names.is_none_or(|n| n.contains("group_names")) {
                let mut groups = host.groups.clone();
                groups.sort();
                object.insert("group_names".into(), Json::from(groups));
            }
            object.insert("inventory_hostname".into(), Json::String(host.name.clone()));
            members.push(Json::Object(object));
        }
        Some(Json::Array(members))
    }
}

/// Every name `expression` could use to reach a member's variable — bare identifiers and quoted
/// identifiers (function names too, harmlessly) — or None when it can reach all of them (`@`, `*`).
/// Raw strings and literals are skipped: they name no variable.
fn referenced_names(expression: &str) -> Option<HashSet<String>> {
    let mut names = HashSet::new();
    let mut chars = expression.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '@' | '*' => return None,
            '\'' | '`' => {
                // A raw string or a literal: skip to its unescaped end.
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '"' => {
                // A quoted identifier, read as JSON would (escapes included).
                let mut raw = String::from('"');
                while let Some(d) = chars.next() {
                    raw.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            raw.push(e);
                        }
                    } else if d == '"' {
                        break;
                    }
                }
                // Unreadable: the expression will not compile either; keep every variable.
                names.insert(serde_json::from_str::<String>(&raw).ok()?);
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' {
                        word.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                names.insert(word);
            }
            _ => {}
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_wildcards_need_everything() {
        let names = referenced_names("[? pg_role == `primary` || \"pg offline\" && 'raw' ]")
            .expect("no wildcard");
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, ["pg offline", "pg_role"]);
        assert_eq!(referenced_names("reverse(@)"), None);
        assert_eq!(referenced_names("[].*"), None);
        assert!(referenced_names("[? a == '@*' ]").is_some());
    }
}
