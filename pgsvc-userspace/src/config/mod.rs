//! Reading a Pigsty (Ansible YAML) inventory into hosts with their effective variables.
//!
//! Owns the Ansible side of the contract: groups under `all.children` (nested to any depth),
//! `all.vars`, group `vars`, and per-host variables keyed by the host's address; variable precedence
//! as Ansible applies it (all < parent group < child group < host; siblings by
//! `ansible_group_priority`, then name); host order as Ansible's `hostvars` iterates (first
//! appearance in the file). Every value keeps its source position so later stages can say
//! file:line:column. Nothing here knows what a PostgreSQL service is — that is `plan`.

mod groups;
pub mod haproxy;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use groups::{GroupReader, Merged};
pub use yaml::{Node, Pos, Value};

/// A place in an inventory file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// What a warning is about; `pgsvc check` fails on the kinds where [`WarningKind::fails_check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The same key twice in one mapping (the last one wins, as in Ansible).
    DuplicateKey,
    /// A key in a group that Ansible ignores (not `hosts`, `vars` or `children`).
    UnexpectedKey,
    /// A service field Pigsty does not know: Pigsty ignores it silently, so a typo (`chek:`) would
    /// fall back to a default without anyone noticing.
    UnknownServiceField,
    /// A `default-server` keyword pgsvc does not implement.
    UnknownServerOption,
    /// A value pgsvc accepts but some HAProxy versions reject (e.g. `fastinter 0.5s`).
    HaproxyCompat,
    /// A selector that matched no member: valid, but the service has no server.
    EmptyService,
    /// An inventory `pg_role` other than primary, replica or offline.
    UnknownRole,
    /// An HAProxy directive or section outside the subset that is safe to ignore (logging,
    /// process settings, the HTTP stats/exporter proxy).
    IgnoredDirective,
}

impl WarningKind {
    /// Whether `pgsvc check` treats this warning as invalid input. Pigsty silently ignores unknown
    /// service fields; check is stricter so that a misspelt field does not go unnoticed.
    pub fn fails_check(self) -> bool {
        matches!(self, WarningKind::UnknownServiceField)
    }
}

/// Something worth telling the operator that does not stop the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub kind: WarningKind,
    pub at: Option<Location>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{at}: warning: {}", self.message),
            None => write!(f, "warning: {}", self.message),
        }
    }
}

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read inventory: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: YAML syntax error: {message}")]
    Syntax { at: Location, message: String },
    /// Valid YAML, but past one of the bounds in [`yaml`] or [`MAX_HOSTS`].
    #[error("{at}: inventory too large: {message}")]
    Limit { at: Location, message: String },
    #[error(
        "{path}: inventory too large: {size} bytes, the limit is {limit} bytes (16 MiB; real inventories are a few hundred KB at most)"
    )]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{file}: inventory is empty: no hosts under `all`")]
    Empty { file: Arc<str> },
    #[error("{at}: {what} must be a mapping, found {found}")]
    NotAMapping {
        at: Location,
        what: String,
        found: &'static str,
    },
    #[error("{at}: {what} must be a scalar name, found {found}")]
    BadName {
        at: Location,
        what: &'static str,
        found: &'static str,
    },
}

/// Largest inventory file read: 16 MiB. Real inventories are tens to hundreds of KB; the bound keeps
/// what one file can make the parser allocate (tree, positions, per-host copies) to a few hundred
/// MiB at worst, and turns a wrong path (a log, a disk image) into a clear error.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most hosts in one inventory. Pigsty's largest deployments have a few thousand nodes; planning is
/// linear (40,000 hosts take ~4 s in a debug build) but each host costs a few KB once planned, so
/// the bound also caps that memory (~150 MB).
pub const MAX_HOSTS: usize = 50_000;

/// One variable as written, with where it was written.
pub type Vars = Vec<(String, Arc<Node>)>;

/// One inventory host with its effective variables (all precedence applied).
#[derive(Clone, Debug)]
pub struct Host {
    /// `inventory_hostname`: for Pigsty, the host's IP address.
    pub name: String,
    /// Where the host key first appears.
    pub at: Location,
    /// Names of the groups the host belongs to, directly or through children (without `all`).
    pub groups: Vec<String>,
    /// Its groups' variables after precedence, shared by every host with the same groups: a big
    /// `all.vars` is held once, not once per host.
    inherited: Arc<Merged>,
    /// Its own variables (under `hosts:`), over the inherited ones.
    own: Merged,
}

impl Host {
    /// The effective value of a variable.
    pub fn var(&self, name: &str) -> Option<&Node> {
        self.own.get(name).or_else(|| self.inherited.get(name))
    }

    /// Every effective variable, in Ansible's order (inherited first, then the host's new ones).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Node)> {
        let inherited = self.inherited.vars.iter().map(|(k, v)| {
            let value = self.own.get(k).unwrap_or(v.as_ref());
            (k.as_str(), value)
        });
        let new = self
            .own
            .vars
            .iter()
            .filter(|(k, _)| !self.inherited.index.contains_key(k))
            .map(|(k, v)| (k.as_str(), v.as_ref()));
        inherited.chain(new)
    }

    /// The host as Pigsty's selectors see it in `hostvars`: its variables plus the magic
    /// `inventory_hostname` and `group_names`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object: serde_json::Map<String, serde_json::Value> = self
            .vars()
            .map(|(k, v)| (k.to_owned(), v.to_json()))
            .collect();
        object.insert(
            "inventory_hostname".into(),
            serde_json::Value::String(self.name.clone()),
        );
        let mut groups = self.groups.clone();
        groups.sort();
        object.insert("group_names".into(), serde_json::Value::from(groups));
        serde_json::Value::Object(object)
    }
}

/// A whole inventory, hosts in `hostvars` order.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// How the file is named in messages.
    pub file: Arc<str>,
    pub hosts: Vec<Host>,
}

impl Inventory {
    /// Turns a node position into a location in this inventory's file.
    pub fn loc(&self, pos: Pos) -> Location {
        at(&self.file, pos)
    }
}

fn at(file: &Arc<str>, pos: Pos) -> Location {
    Location {
        file: Arc::clone(file),
        line: pos.line,
        column: pos.column,
    }
}

/// Reads and parses an inventory file.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, otherwise as [`parse_inventory`].
pub fn load_inventory(path: &Path) -> Result<(Inventory, Vec<Warning>), ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| ConfigError::FileTooLarge {
        path: path.to_owned(),
        size,
        limit: MAX_FILE_BYTES,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    if size > MAX_FILE_BYTES {
        return Err(too_large(size));
    }
    // The size may change between the check and the read (or lie, for a pipe): read at most one
    // byte past the limit and look again.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > MAX_FILE_BYTES {
        return Err(too_large(read));
    }
    let source = String::from_utf8(bytes).map_err(|err| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", err.utf8_error().valid_up_to()),
        ))
    })?;
    parse_inventory(&source, &path.display().to_string())
}

/// Parses inventory text; `file` is only used to name positions in messages.
///
/// # Errors
/// A YAML syntax error, a group or `vars` that is not a mapping, or an inventory without hosts.
pub fn parse_inventory(source: &str, file: &str) -> Result<(Inventory, Vec<Warning>), ConfigError> {
    let file: Arc<str> = Arc::from(file);
    if source.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::Limit {
            at: at(&file, Pos { line: 1, column: 1 }),
            message: format!(
                "{} bytes of text, the limit is {MAX_FILE_BYTES}",
                source.len()
            ),
        });
    }
    let doc = yaml::parse(source).map_err(|err| {
        let at = at(&file, err.pos);
        if err.limit {
            ConfigError::Limit {
                at,
                message: err.message,
            }
        } else {
            ConfigError::Syntax {
                at,
                message: err.message,
            }
        }
    })?;
    let mut warnings: Vec<Warning> = doc
        .duplicate_keys
        .iter()
        .map(|(pos, key)| Warning {
            kind: WarningKind::DuplicateKey,
            at: Some(at(&file, *pos)),
            message: format!("duplicate key `{key}`: the last one wins"),
        })
        .collect();
    let Some(root) = doc.root.filter(|r| r.value != Value::Null) else {
        return Err(ConfigError::Empty { file });
    };
    let mut reader = GroupReader::new(&file, &mut warnings);
    let entries = reader.mapping(&root, "the inventory")?;
    let all = reader.group_id("all");
    for (key, value) in entries {
        let name = reader.name(key, "a group name")?;
        if name == "all" {
            reader.read_group(all, value)?;
        } else {
            // A top-level group other than `all` is, in Ansible, a child of `all`.
            let id = reader.group_id(&name);
            reader.link(all, id);
            reader.read_group(id, value)?;
        }
    }
    let hosts = reader.resolve_hosts();
    if hosts.is_empty() {
        return Err(ConfigError::Empty { file });
    }
    Ok((Inventory { file, hosts }, warnings))
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;

    fn inv(src: &str) -> Inventory {
        parse_inventory(src, "inv.yml").unwrap().0
    }

    #[test]
    fn host_over_group_over_all() {
        let i = inv(
            "all:\n  vars: { a: all, b: all, c: all }\n  children:\n    g:\n      vars: { b: group, c: group }\n      hosts:\n        198.18.0.1: { c: host }\n",
        );
        let h = &i.hosts[0];
        assert_eq!(h.var("a").unwrap().as_str(), Some("all"));
        assert_eq!(h.var("b").unwrap().as_str(), Some("group"));
        assert_eq!(h.var("c").unwrap().as_str(), Some("host"));
        assert_eq!(h.groups, vec!["g".to_owned()]);
    }

    #[test]
    fn child_group_beats_parent_and_siblings_go_by_name() {
        let i = inv(
            "all:\n  children:\n    parent:\n      vars: { x: parent, y: parent }\n      children:\n        kid:\n          vars: { x: kid }\n          hosts: { 198.18.0.1: }\n    zeta: { vars: { y: zeta }, hosts: { 198.18.0.1: } }\n    alpha: { vars: { y: alpha }, hosts: { 198.18.0.1: } }\n",
        );
        let h = &i.hosts[0];
        assert_eq!(h.var("x").unwrap().as_str(), Some("kid"));
        // parent, alpha and zeta are all at depth 1: sorted by name, zeta is applied last.
        assert_eq!(h.var("y").unwrap().as_str(), Some("zeta"));
    }

    #[test]
    fn hosts_keep_first_appearance_order() {
        let i = inv(
            "all:\n  children:\n    a: { hosts: { 198.18.0.3: , 198.18.0.1: } }\n    b: { hosts: { 198.18.0.2: , 198.18.0.3: } }\n",
        );
        let names: Vec<&str> = i.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["198.18.0.3", "198.18.0.1", "198.18.0.2"]);
    }

    #[test]
    fn empty_inventories_are_errors() {
        for src in [
            "",
            "all: {}\n",
            "all:\n  children:\n    g: { vars: { a: 1 } }\n",
        ] {
            let err = parse_inventory(src, "inv.yml").unwrap_err();
            assert!(matches!(err, ConfigError::Empty { .. }), "{src:?}: {err}");
        }
    }

    #[test]
    fn syntax_error_has_file_line_column() {
        let err = parse_inventory("all:\n  vars: [\n", "x.yml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("x.yml:"), "{text}");
        assert!(matches!(err, ConfigError::Syntax { .. }));
    }

    #[test]
    fn non_mapping_vars_are_located() {
        let err = parse_inventory("all:\n  vars: [1, 2]\n", "x.yml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yml:2:9: `all.vars` must be a mapping, found a list"
        );
    }

    #[test]
    fn unexpected_group_keys_are_warned() {
        let (_, warnings) =
            parse_inventory("all:\n  hostz: {}\n  hosts: { 198.18.0.1: }\n", "x.yml").unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].kind, WarningKind::UnexpectedKey);
        assert!(
            warnings[0]
                .to_string()
                .starts_with("x.yml:2:3: warning: unexpected key `hostz`")
        );
    }
}
