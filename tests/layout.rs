//! The library's architecture, as the tree shows it: `src/<layer>/<module>`, layers in the
//! order sys, base, authoring, serving, ha, each module using only modules of its own layer
//! or of layers before it, and no module reaching itself through others. A module's
//! dependencies are the `crate::name` paths in its code (comments and tests left out); the
//! CLI, which uses everything, is left out.

/// The layers, bottom first.
const LAYERS: [&str; 5] = ["sys", "base", "authoring", "serving", "ha"];

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module -> (its layer, the modules or layers its code names).
fn dependencies() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut deps: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = entry.path().strip_prefix(&src).unwrap();
        let parts: Vec<String> = rel
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        let (layer, module) = match parts.as_slice() {
            [layer, module, ..] if LAYERS.contains(&layer.as_str()) && module != "mod" => {
                (layer.clone(), module.clone())
            }
            [layer, ..] if LAYERS.contains(&layer.as_str()) => continue, // the layer's mod.rs
            [top, ..] if ["cli", "lib", "main", "testutil"].contains(&top.as_str()) => continue,
            _ => panic!("{}: not in a layer ({LAYERS:?})", rel.display()),
        };
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let (_, named) = deps
            .entry(module.clone())
            .or_insert_with(|| (layer, BTreeSet::new()));
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && name != "cli" {
                    named.insert(name);
                }
            }
        }
    }
    deps
}

/// A path `from` -> ... -> `from`, if there is one.
fn cycle_through(
    deps: &BTreeMap<String, (String, BTreeSet<String>)>,
    from: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in deps.get(last).into_iter().flat_map(|(_, named)| named) {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(from.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn every_module_uses_only_its_layer_and_those_before_it() {
    let deps = dependencies();
    let rank = |layer: &str| LAYERS.iter().position(|l| *l == layer);
    let mut problems = Vec::new();
    for (module, (layer, named)) in &deps {
        for name in named {
            // `crate::store` (a module, re-exported at the root) or `crate::base` (a layer).
            let used = deps
                .get(name)
                .map(|(l, _)| l.as_str())
                .or(rank(name).map(|_| name.as_str()));
            let Some(used) = used else {
                problems.push(format!(
                    "{module} names crate::{name}, which is no module of a layer"
                ));
                continue;
            };
            if rank(used) > rank(layer) {
                problems.push(format!(
                    "{layer}::{module} uses {used}::{name}, a layer above it"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let deps = dependencies();
    assert!(deps.len() > 10, "found too few modules: {deps:?}");
    let cycles: Vec<String> = deps
        .keys()
        .filter_map(|module| cycle_through(&deps, module))
        .map(|cycle| cycle.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
