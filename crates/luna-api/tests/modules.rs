//! The crate's modules as ARCHITECTURE.md describes them, read from its
//! sources: routes only through handler annotations, answers' JSON only in
//! `view/`, one audit module that uses no other, and no cycle among the
//! top-level modules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

fn sources() -> Vec<(std::path::PathBuf, String)> {
    fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 20, "{files:?}");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

/// Only `view/` writes an answer's JSON: elsewhere a `Serialize` derive
/// is a request body's (it also deserializes; its fingerprint makes an
/// idempotent create), the error body (`error.rs`) or a token's claims
/// (`auth.rs`).
#[test]
fn every_answer_body_is_written_in_view() {
    let allowed = ["src/error.rs", "src/auth.rs"];
    for (file, text) in sources() {
        if allowed.iter().any(|a| file.ends_with(a)) || file.parent().is_some_and(|d| d.ends_with("src/view"))
        {
            continue;
        }
        for line in text
            .lines()
            .filter(|l| l.contains("derive(") && l.contains("Serialize"))
        {
            assert!(
                line.contains("Deserialize"),
                "{}: an answer body outside view/: {line}",
                file.display()
            );
        }
    }
}

/// Every route is a handler with its method and path written on it,
/// registered with `service`: a `route`/`resource` registration would make
/// a path the router knows and its annotation does not (the console's
/// included, though it is not in the document).
#[test]
fn no_route_is_registered_outside_a_handler_annotation() {
    for (file, text) in sources() {
        for registration in [
            "web::put()",
            "web::patch()",
            "web::delete()",
            "web::method(",
            "web::scope(",
            "web::Resource::new(",
            "actix_web::Resource::new(",
            ".route(",
            "web::resource(",
            "web::route(",
            "web::get()",
            "web::post()",
        ] {
            assert!(
                !text.contains(registration),
                "{} registers a route with {registration}",
                file.display()
            );
        }
    }
}

/// The audit module is what the middleware and the handlers both call; it uses none of them (nor any other module of the crate), so
/// none of them forms a cycle through it.
#[test]
fn the_audit_module_depends_on_no_other_module_of_the_crate() {
    let (file, text) = sources()
        .into_iter()
        .find(|(f, _)| f.ends_with("src/audit.rs"))
        .unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        assert!(!line.contains("crate::"), "{}: {line}", file.display());
    }
}

/// The top-level modules each module of the crate names: every
/// `crate::x` path, and the first names in `use crate::{x, y::{…}}` lists
/// however nested, in the whole file but for its `#[cfg(test)]` modules.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources() {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let module = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "testing" {
            continue;
        }
        let code = without_test_modules(&text);
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(list) => named.extend(first_names_in_group(list)),
                None => named.extend(identifier(rest)),
            }
        }
        named.remove(&module);
        graph.entry(module).or_default().extend(named);
    }
    graph
}

/// A leading identifier (any case: `crate::ApiError` names a re-export of lib.rs).
fn identifier(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The names at the top level of a `{…}` group (`text` starts after its
/// `{`): `a, b::{c, d}, e` gives a, b, e.
fn first_names_in_group(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut depth, mut expecting) = (0, true);
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if expecting && depth == 0 && !c.is_whitespace() => {
                names.extend(identifier(&text[at..]));
                expecting = false;
            }
            _ => {}
        }
    }
    names
}

/// The file without its `#[cfg(test)] mod … { … }` blocks, wherever they are.
fn without_test_modules(text: &str) -> String {
    let mut kept = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else { break };
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    kept.push_str(rest);
    kept
}

#[test]
fn the_graph_reader_sees_nested_groups_and_skips_test_modules() {
    assert_eq!(
        first_names_in_group("a, b::{c, d::{e}}, Error}"),
        ["a", "b", "Error"]
    );
    let text = "use crate::x;\n#[cfg(test)]\nmod tests { use crate::y; fn f() { crate::z(); } }\nfn g() { crate::w::h(); }";
    let code = without_test_modules(text);
    assert!(
        code.contains("crate::x")
            && code.contains("crate::w")
            && !code.contains("crate::y")
            && !code.contains("crate::z"),
        "{code}"
    );
}

/// The module graph has no cycle, so each module can be read knowing only
/// those it uses. (This checks for cycles only, not a given layering.)
#[test]
fn the_modules_of_the_crate_form_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 12, "{graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|m| m == module) {
            panic!("a cycle of modules: {} -> {module}", path[at..].join(" -> "));
        }
        path.push(module.to_owned());
        for next in graph
            .get(module)
            .into_iter()
            .flatten()
            .filter(|m| graph.contains_key(*m))
        {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(module.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}
