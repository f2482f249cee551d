//! The source layout rules of issue 8, checked by `cargo xtask test` (they run as xtask's unit
//! tests): every source file of the agent and of the XDP program is at most [`MAX_LINES`] lines,
//! test files excepted, and no top-level module of the agent imports a module that imports it back.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::path::{Path, PathBuf};

    /// One screenful of concern per file, roughly: what issue 8 asked for.
    const MAX_LINES: usize = 500;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Test modules live in files of their own (`tests.rs`, `<module>/tests.rs`, `tests/…`).
    fn is_test_file(path: &Path) -> bool {
        path.file_name()
            .is_some_and(|n| n == "tests.rs" || n.to_string_lossy().ends_with("_tests.rs"))
            || path.components().any(|c| c.as_os_str() == "tests")
    }

    fn sources(krate: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        rust_files(&crate::workspace_root().join(krate).join("src"), &mut files);
        files.sort();
        files
    }

    #[test]
    fn every_source_file_is_at_most_500_lines_tests_excepted() {
        let mut long = Vec::new();
        let mut seen = 0;
        for krate in ["pgsvc-userspace", "pgsvc-ebpf"] {
            for path in sources(krate) {
                seen += 1;
                if is_test_file(&path) {
                    continue;
                }
                let text = fs::read_to_string(&path).expect("readable source");
                let lines = text.lines().count();
                if lines > MAX_LINES {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
        assert!(seen > 50, "found only {seen} source files: wrong root?");
        assert!(long.is_empty(), "over {MAX_LINES} lines: {long:#?}");
    }

    /// `crate::NAME` references of every top-level module of the agent's library, by module.
    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = crate::workspace_root().join("pgsvc-userspace").join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in sources("pgsvc-userspace") {
            if is_test_file(&path) {
                continue;
            }
            let Ok(rel) = path.strip_prefix(&src) else {
                continue;
            };
            let module = rel
                .components()
                .next()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_owned()
                })
                .unwrap_or_default();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = fs::read_to_string(&path).expect("readable source");
            // Only the code before the file's test module: tests may reach anywhere.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let code = code.as_str();
            let uses = graph.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
            // `use crate::{a, b::c, d::{e, f}}` groups: the first segment of each element.
            for (i, _) in code.match_indices("crate::{") {
                let mut depth = 0usize;
                let mut element = String::new();
                for c in code[i + 8..].chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            add_first_segment(&element, &module, uses);
                            element.clear();
                            continue;
                        }
                        _ => {}
                    }
                    element.push(c);
                }
                add_first_segment(&element, &module, uses);
            }
        }
        graph
    }

    fn add_first_segment(element: &str, module: &str, uses: &mut BTreeSet<String>) {
        let first: String = element
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !first.is_empty() && first != module && first != "self" {
            uses.insert(first);
        }
    }

    #[test]
    fn no_module_imports_a_module_that_imports_it_back() {
        let graph = module_graph();
        assert!(
            graph.contains_key("agent") && graph.contains_key("datapath"),
            "{graph:?}"
        );
        let mut cycles = Vec::new();
        for (a, uses) in &graph {
            for b in uses {
                if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                    cycles.push(format!("{a} <-> {b}"));
                }
            }
        }
        assert!(
            cycles.is_empty(),
            "modules that import each other: {cycles:?}"
        );
    }
}
