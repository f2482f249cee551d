//! Ansible's group tree: reading `all.children` (nested to any depth, groups linked by name),
//! group and host variables, and resolving each host's effective variables with Ansible's
//! precedence. Linear in the inventory: lookups are indexed, group depths memoised without
//! recursion, and hosts with the same groups share one merge of their variables.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{ConfigError, Host, MAX_HOSTS, Node, Pos, Value, Vars, Warning, WarningKind, at};

/// Variables after precedence, indexed by name.
#[derive(Clone, Debug, Default)]
pub(super) struct Merged {
    pub(super) vars: Vars,
    pub(super) index: HashMap<String, usize>,
}

impl Merged {
    /// Ansible's default `hash_behaviour=replace`: a later definition replaces the whole value.
    pub(super) fn merge(&mut self, from: &Vars) {
        for (key, value) in from {
            match self.index.get(key) {
                Some(&i) => self.vars[i].1 = Arc::clone(value),
                None => {
                    self.index.insert(key.clone(), self.vars.len());
                    self.vars.push((key.clone(), Arc::clone(value)));
                }
            }
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|&i| self.vars[i].1.as_ref())
    }
}

#[derive(Default)]
struct Group {
    name: String,
    vars: Vars,
    parents: Vec<usize>,
    /// Host names with the variables written under this group's `hosts`.
    hosts: Vec<(String, Vars)>,
}

pub(super) struct GroupReader<'a> {
    file: &'a Arc<str>,
    groups: Vec<Group>,
    index: HashMap<String, usize>,
    /// Host names in first-appearance order, with where they first appear.
    host_order: Vec<(String, Pos)>,
    seen_hosts: HashSet<String>,
    warnings: &'a mut Vec<Warning>,
}

impl<'a> GroupReader<'a> {
    pub(super) fn new(file: &'a Arc<str>, warnings: &'a mut Vec<Warning>) -> Self {
        GroupReader {
            file,
            groups: Vec::new(),
            index: HashMap::new(),
            host_order: Vec::new(),
            seen_hosts: HashSet::new(),
            warnings,
        }
    }

    pub(super) fn group_id(&mut self, name: &str) -> usize {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        self.groups.push(Group {
            name: name.to_owned(),
            ..Group::default()
        });
        self.index.insert(name.to_owned(), self.groups.len() - 1);
        self.groups.len() - 1
    }

    pub(super) fn link(&mut self, parent: usize, child: usize) {
        if parent != child && !self.groups[child].parents.contains(&parent) {
            self.groups[child].parents.push(parent);
        }
    }

    pub(super) fn name(&self, key: &Node, what: &'static str) -> Result<String, ConfigError> {
        key.scalar_text().ok_or(ConfigError::BadName {
            at: at(self.file, key.pos),
            what,
            found: key.type_name(),
        })
    }

    /// The entries of a mapping; `null` (an empty section, `hosts:` with nothing under it) is empty.
    pub(super) fn mapping<'n>(
        &self,
        node: &'n Node,
        what: &str,
    ) -> Result<&'n [(Node, Node)], ConfigError> {
        match &node.value {
            Value::Null => Ok(&[]),
            Value::Map(entries) => Ok(entries),
            _ => Err(ConfigError::NotAMapping {
                at: at(self.file, node.pos),
                what: what.to_owned(),
                found: node.type_name(),
            }),
        }
    }

    fn vars(&self, node: &Node, what: &str) -> Result<Vars, ConfigError> {
        self.mapping(node, what)?
            .iter()
            .map(|(k, v)| Ok((self.name(k, "a variable name")?, Arc::new(v.clone()))))
            .collect()
    }

    pub(super) fn read_group(&mut self, id: usize, node: &Node) -> Result<(), ConfigError> {
        let group_name = self.groups[id].name.clone();
        for (key, value) in self.mapping(node, &format!("group `{group_name}`"))? {
            match key.scalar_text().as_deref() {
                Some("vars") => {
                    let vars = self.vars(value, &format!("`{group_name}.vars`"))?;
                    merge_vars(&mut self.groups[id].vars, &vars);
                }
                Some("hosts") => {
                    let what = format!("`{group_name}.hosts`");
                    for (host_key, host_vars) in self.mapping(value, &what)? {
                        let host = self.name(host_key, "a host name")?;
                        let vars = self.vars(host_vars, &format!("host `{host}`"))?;
                        if self.seen_hosts.insert(host.clone()) {
                            if self.host_order.len() >= MAX_HOSTS {
                                return Err(ConfigError::Limit {
                                    at: at(self.file, host_key.pos),
                                    message: format!("more than {MAX_HOSTS} hosts"),
                                });
                            }
                            self.host_order.push((host.clone(), host_key.pos));
                        }
                        self.groups[id].hosts.push((host, vars));
                    }
                }
                Some("children") => {
                    let what = format!("`{group_name}.children`");
                    for (child_key, child) in self.mapping(value, &what)? {
                        let child_name = self.name(child_key, "a group name")?;
                        let child_id = self.group_id(&child_name);
                        self.link(id, child_id);
                        self.read_group(child_id, child)?;
                    }
                }
                other => self.warnings.push(Warning {
                    kind: WarningKind::UnexpectedKey,
                    at: Some(at(self.file, key.pos)),
                    message: format!(
                        "unexpected key `{}` in group `{group_name}` (Ansible only reads hosts, vars and children)",
                        other.unwrap_or("?")
                    ),
                }),
            }
        }
        Ok(())
    }

    /// Depth of every group below `all` (the longest path of parents, as Ansible counts it),
    /// memoised and without recursion: groups can be chained by name to any length, and a diamond
    /// of parents must not be walked once per path. A cycle (Ansible refuses them) ends the walk.
    fn depths(&self) -> Vec<usize> {
        const TODO: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;
        let mut state = vec![TODO; self.groups.len()];
        let mut depth = vec![0usize; self.groups.len()];
        for start in 0..self.groups.len() {
            if state[start] != TODO {
                continue;
            }
            // (group, index of the next parent to look at)
            let mut stack = vec![(start, 0usize)];
            state[start] = OPEN;
            while let Some(&mut (id, ref mut next)) = stack.last_mut() {
                if let Some(&parent) = self.groups[id].parents.get(*next) {
                    *next += 1;
                    match state[parent] {
                        TODO => {
                            state[parent] = OPEN;
                            stack.push((parent, 0));
                        }
                        // DONE: its depth is final; OPEN: a cycle, counted as a root.
                        _ => depth[id] = depth[id].max(depth[parent] + 1),
                    }
                } else {
                    state[id] = DONE;
                    stack.pop();
                    if let Some(&(child, _)) = stack.last() {
                        depth[child] = depth[child].max(depth[id] + 1);
                    }
                }
            }
        }
        depth
    }

    /// `id` and every group above it, each once; `stamp`/`mark` make it O(ancestors).
    fn ancestors(&self, id: usize, mark: &mut [usize], stamp: usize, out: &mut Vec<usize>) {
        let mut todo = vec![id];
        while let Some(g) = todo.pop() {
            if mark[g] == stamp {
                continue;
            }
            mark[g] = stamp;
            out.push(g);
            todo.extend(self.groups[g].parents.iter().copied());
        }
    }

    pub(super) fn resolve_hosts(&self) -> Vec<Host> {
        let depths = self.depths();
        let priorities: Vec<i64> = self
            .groups
            .iter()
            .map(|group| {
                group
                    .vars
                    .iter()
                    .find(|(k, _)| k == "ansible_group_priority")
                    .and_then(|(_, v)| match v.value {
                        Value::Int(i) => Some(i),
                        _ => None,
                    })
                    .unwrap_or(1)
            })
            .collect();
        // Per host: the groups listing it and its variables there, in group then file order.
        let mut listed: HashMap<&str, Vec<(usize, &Vars)>> = HashMap::new();
        for (id, group) in self.groups.iter().enumerate() {
            for (host, vars) in &group.hosts {
                listed.entry(host.as_str()).or_default().push((id, vars));
            }
        }
        let mut mark = vec![0usize; self.groups.len()];
        let mut hosts = Vec::with_capacity(self.host_order.len());
        // Hosts with the same groups (every member of a cluster) share one merge of their variables.
        let mut merged: HashMap<Vec<usize>, Arc<Merged>> = HashMap::new();
        for (n, (name, pos)) in self.host_order.iter().enumerate() {
            let listings = listed.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            let mut member_of = Vec::new();
            for &(id, _) in listings {
                self.ancestors(id, &mut mark, n + 1, &mut member_of);
            }
            let mut ordered: Vec<(usize, i64, &str, usize)> = member_of
                .iter()
                .map(|&id| {
                    let name = self.groups[id].name.as_str();
                    (depths[id], priorities[id], name, id)
                })
                .collect();
            ordered.sort_unstable();
            let ids: Vec<usize> = ordered.iter().map(|&(_, _, _, id)| id).collect();
            let inherited = Arc::clone(merged.entry(ids).or_insert_with_key(|ids| {
                let mut vars = Merged::default();
                for &id in ids {
                    vars.merge(&self.groups[id].vars);
                }
                Arc::new(vars)
            }));
            // Host variables last; a host listed under several groups merges them in file order.
            let mut own = Merged::default();
            for &(_, host_vars) in listings {
                own.merge(host_vars);
            }
            let groups = ordered
                .iter()
                .map(|&(_, _, n, _)| n.to_owned())
                .filter(|n| n != "all")
                .collect();
            hosts.push(Host {
                name: name.clone(),
                at: at(self.file, *pos),
                groups,
                inherited,
                own,
            });
        }
        hosts
    }
}

/// Merges a group's `vars:` section into what earlier sections of the same group set (a group can
/// appear more than once); the later one wins, as in [`Merged::merge`].
fn merge_vars(into: &mut Vars, from: &Vars) {
    let mut merged = Merged {
        index: into
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect(),
        vars: std::mem::take(into),
    };
    merged.merge(from);
    *into = merged.vars;
}
