//! No cryptoki type crosses the crate's edge: every item the crate makes
//! public (a `pub` function's signature, a `pub` struct's `pub` fields, every
//! field of a `pub` enum's variants, a `pub` trait's methods, a trait
//! implemented for a public type, a `pub use`) is read from the sources and
//! must name no type of `cryptoki` or `cryptoki-sys`, by path or by a name a
//! file imported from them. Callers ask `TokenError` what a failure means.
//! The `testing` feature's module is outside the rule: it hands tests a raw
//! cryptoki session on purpose (`raw_user_session`, what another program on
//! the token would do), and the server never enables it.
//!
//! It reads sources, not the compiler's view of the API (rustdoc's JSON
//! needs a nightly toolchain): it does not see a trait impl's associated
//! types, an inherent impl's generics or `pub const`s, a type's generic
//! bounds, names a file takes from its parent by `use super::*`, glob
//! imports from cryptoki, or items a macro makes. None of those carries a
//! cryptoki type today.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const BINDINGS: [&str; 2] = ["cryptoki", "cryptoki_sys"];

/// The names a file imports from the bindings (`use cryptoki::error::{Error as CryptokiError}` gives `CryptokiError`).
fn imported_from_bindings(file: &syn::File) -> HashSet<String> {
    fn walk(tree: &syn::UseTree, from_bindings: bool, names: &mut HashSet<String>) {
        match tree {
            syn::UseTree::Path(p) => {
                let root = from_bindings || BINDINGS.contains(&p.ident.to_string().as_str());
                walk(&p.tree, root, names);
            }
            syn::UseTree::Name(n) if from_bindings => {
                names.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) if from_bindings => {
                names.insert(r.rename.to_string());
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| walk(t, from_bindings, names)),
            _ => {}
        }
    }
    let mut names = HashSet::new();
    for item in &file.items {
        if let syn::Item::Use(u) = item {
            walk(&u.tree, false, &mut names);
        }
    }
    names
}

/// Every path in a piece of a public signature that reaches the bindings.
struct BindingPaths<'a> {
    imported: &'a HashSet<String>,
    found: Vec<String>,
}

impl<'ast> Visit<'ast> for BindingPaths<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first() {
            let first = first.ident.to_string();
            if BINDINGS.contains(&first.as_str()) || self.imported.contains(&first) {
                let spelled: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
                self.found.push(spelled.join("::"));
            }
        }
        syn::visit::visit_path(self, path);
    }
}

fn is_public(vis: &syn::Visibility) -> bool {
    matches!(vis, syn::Visibility::Public(_))
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The parts of `items` another crate can see, each checked for the bindings.
fn check_items(items: &[syn::Item], file: &Path, imported: &HashSet<String>, problems: &mut Vec<String>) {
    let found = std::cell::RefCell::new(Vec::new());
    let check = |what: String, visit: &dyn Fn(&mut BindingPaths)| {
        let mut paths = BindingPaths {
            imported,
            found: Vec::new(),
        };
        visit(&mut paths);
        for path in paths.found {
            found
                .borrow_mut()
                .push(format!("{}: {what} names {path}", file.display()));
        }
    };
    for item in items {
        match item {
            syn::Item::Fn(f) if is_public(&f.vis) && !is_test_only(&f.attrs) => {
                check(format!("fn {}", f.sig.ident), &|v| v.visit_signature(&f.sig));
            }
            syn::Item::Struct(s) if is_public(&s.vis) => {
                for field in s.fields.iter().filter(|f| is_public(&f.vis)) {
                    check(format!("struct {}", s.ident), &|v| v.visit_type(&field.ty));
                }
            }
            syn::Item::Enum(e) if is_public(&e.vis) => {
                check(format!("enum {}", e.ident), &|v| {
                    e.variants
                        .iter()
                        .for_each(|variant| v.visit_fields(&variant.fields))
                });
            }
            syn::Item::Type(t) if is_public(&t.vis) => {
                check(format!("type {}", t.ident), &|v| v.visit_type(&t.ty));
            }
            syn::Item::Const(c) if is_public(&c.vis) => {
                check(format!("const {}", c.ident), &|v| v.visit_type(&c.ty));
            }
            syn::Item::Static(s) if is_public(&s.vis) => {
                check(format!("static {}", s.ident), &|v| v.visit_type(&s.ty));
            }
            syn::Item::Trait(t) if is_public(&t.vis) => {
                check(format!("trait {}", t.ident), &|v| v.visit_item_trait(t));
            }
            syn::Item::Use(u) if is_public(&u.vis) => {
                check("pub use".to_owned(), &|v| v.visit_use_tree(&u.tree));
                if let syn::UseTree::Path(p) = &u.tree {
                    if BINDINGS.contains(&p.ident.to_string().as_str()) {
                        found
                            .borrow_mut()
                            .push(format!("{}: re-exports {}", file.display(), p.ident));
                    }
                }
            }
            syn::Item::Impl(i) if !is_test_only(&i.attrs) => match &i.trait_ {
                // A trait implemented for a type is as public as the type.
                Some((_, trait_path, _)) => {
                    check("impl".to_owned(), &|v| {
                        v.visit_path(trait_path);
                        v.visit_type(&i.self_ty);
                    });
                }
                None => {
                    for inner in &i.items {
                        if let syn::ImplItem::Fn(f) = inner {
                            if is_public(&f.vis) {
                                check(format!("fn {}", f.sig.ident), &|v| v.visit_signature(&f.sig));
                            }
                        }
                    }
                }
            },
            syn::Item::Mod(m) if !is_test_only(&m.attrs) => {
                if let Some((_, inner)) = &m.content {
                    check_items(inner, file, imported, &mut found.borrow_mut());
                }
            }
            _ => {}
        }
    }
    problems.extend(found.into_inner());
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_cryptoki_type_crosses_the_crates_edge() {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 10, "the sources were not found: {files:?}");
    let mut problems = Vec::new();
    let mut imports = 0;
    for file in files.iter().filter(|f| !f.ends_with("testing.rs")) {
        let parsed = syn::parse_file(&std::fs::read_to_string(file).unwrap()).unwrap();
        let imported = imported_from_bindings(&parsed);
        imports += imported.len();
        check_items(&parsed.items, file, &imported, &mut problems);
    }
    assert!(
        imports > 0,
        "no file imports from cryptoki: the check reads nothing"
    );
    assert!(
        problems.is_empty(),
        "cryptoki types in the public API:\n{}",
        problems.join("\n")
    );
}

/// The check itself finds what it is for: an enum variant carrying the
/// binding's error, and a public function taking a renamed import.
#[test]
fn the_check_finds_a_binding_type_in_a_public_signature() {
    let parsed: syn::File = syn::parse_quote! {
        use cryptoki::error::Error as CryptokiError;
        pub enum E { Call { source: CryptokiError } }
        pub fn f(x: cryptoki::types::Ulong) {}
        pub(crate) fn hidden(x: CryptokiError) {}
        impl From<CryptokiError> for E { fn from(e: CryptokiError) -> E { todo!() } }
    };
    let mut problems = Vec::new();
    check_items(
        &parsed.items,
        Path::new("x.rs"),
        &imported_from_bindings(&parsed),
        &mut problems,
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
}
