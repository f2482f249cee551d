//! A YAML tree that remembers where each node was written.
//!
//! serde_yaml forgets positions once a document is parsed, yet every inventory error has to point at
//! file:line:column. This module builds its own small tree from yaml-rust2's marked events, and
//! resolves plain scalars the way Ansible's loader (PyYAML, YAML 1.1) does, so `yes`/`on` are
//! booleans and `0755` is octal — the values Pigsty's templates would see.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

mod scalar;
use scalar::resolve_scalar;

/// A 1-based line and column in the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_marker(mark: Marker) -> Self {
        Self {
            line: u32::try_from(mark.line()).unwrap_or(u32::MAX),
            // yaml-rust2 counts lines from 1 but columns from 0 (whatever its docs say); editors and
            // compilers count both from 1.
            column: u32::try_from(mark.col().saturating_add(1)).unwrap_or(u32::MAX),
        }
    }
}

/// A node's value; mappings keep their keys' order (Ansible's host order depends on it).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// The YAML type name, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar rendered as text, as Ansible does for mapping keys (host names, group names).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text().as_deref() == Some(key))
            .map(|(_, v)| v)
    }

    /// The node as JSON, the shape JMESPath selectors are evaluated over.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Bounds on what one inventory may expand to. A real Pigsty inventory (the largest shipped
/// examples are ~100 KB, a few thousand nodes, nesting under 12) is far inside all of them; they exist
/// so that a hostile or broken file becomes an error instead of exhausting memory or the stack.
///
/// Nesting deeper than this is refused: the tree is later walked recursively (clone, drop, JSON).
pub const MAX_DEPTH: usize = 64;
/// Nodes after alias and merge-key expansion (each ≈ 40–80 bytes).
pub const MAX_NODES: usize = 1_000_000;
/// Nodes copied by aliases: stops "billion laughs" files early (a 414-byte one expands to 9^9
/// scalars). Real inventories alias a few shared variable maps: thousands of nodes at most.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// Scalar bytes after alias expansion (an aliased 1 MB scalar costs 1 MB per use).
pub const MAX_SCALAR_BYTES: usize = 64 * 1024 * 1024;

/// A YAML syntax (or unsupported construct) error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// The text is valid YAML but exceeds one of the limits above.
    pub limit: bool,
}

impl SyntaxError {
    fn limit(pos: Pos, message: String) -> Self {
        SyntaxError {
            pos,
            message,
            limit: true,
        }
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.pos.line, self.pos.column, self.message)
    }
}

/// A parsed document and what the loader noticed on the way (duplicate keys, last one wins).
#[derive(Debug, Default)]
pub struct Document {
    /// `None` for an empty document.
    pub root: Option<Node>,
    pub duplicate_keys: Vec<(Pos, String)>,
}

/// Parses one YAML document (the first of the stream), within [`MAX_DEPTH`], [`MAX_NODES`] and
/// [`MAX_SCALAR_BYTES`].
///
/// The events are pulled one at a time rather than through yaml-rust2's `load`, which recurses once
/// per nesting level and would overflow the stack on a deeply nested file before any limit applies.
///
/// # Errors
/// A [`SyntaxError`] with the position the scanner stopped at, for an alias to an unknown anchor,
/// or for a document past one of the limits.
pub fn parse(source: &str) -> Result<Document, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    loop {
        let (event, mark) = parser.next_token().map_err(|err| {
            let pos = Pos::from_marker(*err.marker());
            if err.info() == "recursion limit exceeded" {
                // yaml-rust2's scanner stops at 255 levels of flow `[`/`{` before our depth check
                // sees them: the same limit, said the same way.
                SyntaxError::limit(pos, format!("nesting deeper than {MAX_DEPTH} levels"))
            } else {
                SyntaxError {
                    pos,
                    message: err.info().to_owned(),
                    limit: false,
                }
            }
        })?;
        let done = matches!(event, Event::DocumentEnd | Event::StreamEnd);
        builder.on_event(event, mark);
        if let Some(err) = builder.error.take() {
            return Err(err);
        }
        if done {
            break;
        }
    }
    Ok(Document {
        root: builder.root,
        duplicate_keys: builder.duplicate_keys,
    })
}

/// An open collection while events stream in.
enum Frame {
    Seq {
        anchor: usize,
        pos: Pos,
        items: Vec<Node>,
        /// `Builder::nodes` / `Builder::bytes` when it opened: its expanded size is the difference.
        opened: (usize, usize),
    },
    Map {
        anchor: usize,
        pos: Pos,
        entries: Vec<(Node, Node)>,
        /// Key text → index in `entries`, so that each insertion is O(1) (a 40,000-host group
        /// would otherwise compare every key with every earlier one).
        index: HashMap<Option<String>, usize>,
        pending_key: Option<Node>,
        opened: (usize, usize),
    },
}

/// An anchored node and what one more use of it costs.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    root: Option<Node>,
    error: Option<SyntaxError>,
    duplicate_keys: Vec<(Pos, String)>,
    /// Nodes and scalar bytes built so far, aliases counted at their expanded size.
    nodes: usize,
    bytes: usize,
    /// Nodes copied by aliases so far.
    alias_nodes: usize,
}

impl Builder {
    /// Charges `nodes` and `bytes` to the budget; false (and an error) past a limit.
    fn charge(&mut self, nodes: usize, bytes: usize, pos: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(nodes);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > MAX_NODES {
            self.error = Some(SyntaxError::limit(
                pos,
                format!(
                    "the document expands to more than {MAX_NODES} nodes (aliases counted at their expanded size)"
                ),
            ));
        } else if self.bytes > MAX_SCALAR_BYTES {
            self.error = Some(SyntaxError::limit(
                pos,
                format!(
                    "the document's scalars expand to more than {} MiB (aliases counted at their expanded size)",
                    MAX_SCALAR_BYTES >> 20
                ),
            ));
        }
        self.error.is_none()
    }

    fn open(&mut self, pos: Pos) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            self.error = Some(SyntaxError::limit(
                pos,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
            return false;
        }
        self.charge(1, 0, pos)
    }

    fn push_node(&mut self, node: Node, anchor: usize, opened: (usize, usize)) {
        if anchor != 0 {
            let anchored = Anchored {
                node: node.clone(),
                nodes: self.nodes - opened.0,
                bytes: self.bytes - opened.1,
            };
            self.anchors.insert(anchor, anchored);
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                index,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => insert_entry(entries, index, key, node, &mut self.duplicate_keys),
            },
        }
    }
}

/// Inserts a mapping entry; `<<` merges (PyYAML supports them, and Ansible inventories use them).
fn insert_entry(
    entries: &mut Vec<(Node, Node)>,
    index: &mut HashMap<Option<String>, usize>,
    key: Node,
    value: Node,
    duplicates: &mut Vec<(Pos, String)>,
) {
    if key.as_str() == Some("<<") {
        let sources: Vec<Node> = match value.value {
            Value::Seq(items) => items,
            other => vec![Node {
                value: other,
                pos: value.pos,
            }],
        };
        for source in sources {
            let Value::Map(merged) = source.value else {
                continue;
            };
            for (k, v) in merged {
                // Explicit keys win over merged ones.
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    index.entry(k.scalar_text())
                {
                    slot.insert(entries.len());
                    entries.push((k, v));
                }
            }
        }
        return;
    }
    let text = key.scalar_text();
    if let Some(&i) = index.get(&text) {
        duplicates.push((key.pos, text.unwrap_or_default()));
        entries[i] = (key, value);
    } else {
        index.insert(text, entries.len());
        entries.push((key, value));
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = Pos::from_marker(mark);
        let opened = (self.nodes, self.bytes);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                if !self.charge(1, text.len(), pos) {
                    return;
                }
                let value = resolve_scalar(text, style, tag.as_ref());
                self.push_node(Node { value, pos }, anchor, opened);
            }
            Event::SequenceStart(anchor, _) => {
                if self.open(pos) {
                    self.stack.push(Frame::Seq {
                        anchor,
                        pos,
                        items: Vec::new(),
                        opened,
                    });
                }
            }
            Event::MappingStart(anchor, _) => {
                if self.open(pos) {
                    self.stack.push(Frame::Map {
                        anchor,
                        pos,
                        entries: Vec::new(),
                        index: HashMap::new(),
                        pending_key: None,
                        opened,
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor, opened) = match self.stack.pop() {
                    Some(Frame::Seq {
                        anchor,
                        pos,
                        items,
                        opened,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            pos,
                        },
                        anchor,
                        opened,
                    ),
                    Some(Frame::Map {
                        anchor,
                        pos,
                        entries,
                        opened,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(entries),
                            pos,
                        },
                        anchor,
                        opened,
                    ),
                    None => return,
                };
                self.push_node(node, anchor, opened);
            }
            Event::Alias(id) => {
                let Some((nodes, bytes)) = self.anchors.get(&id).map(|a| (a.nodes, a.bytes)) else {
                    self.error = Some(SyntaxError {
                        pos,
                        message: "alias to an unknown anchor".to_owned(),
                        limit: false,
                    });
                    return;
                };
                // Charged before the copy is made: the budget is checked, never the memory.
                self.alias_nodes = self.alias_nodes.saturating_add(nodes);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    self.error = Some(SyntaxError::limit(
                        pos,
                        format!(
                            "aliases expand to more than {MAX_ALIAS_NODES} nodes (\"billion laughs\")"
                        ),
                    ));
                    return;
                }
                if !self.charge(nodes, bytes, pos) {
                    return;
                }
                if let Some(node) = self.anchors.get(&id).map(|a| a.node.clone()) {
                    self.push_node(Node { pos, ..node }, 0, opened);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests;
