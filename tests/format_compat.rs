//! A format-1 store (loose objects, `format: 1` manifests) is served, pushed to and gc'd by
//! this build, and an old dagfs refuses the store once this build has published to it
//! (docs/DESIGN.md, "Format 2: packs").
//!
//! The format-1 store is written by the previous release's binary when `DAGFS_FORMAT1_EXE`
//! names one (`cargo build --bin dagfs` at d5dfecd); otherwise by hand, byte for byte as
//! "Format (version 1)" specifies it (its own encoder below, not this build's code). With
//! `DAGFS_TEST_EXE` naming an older build, that build is the one under test (it fails:
//! it writes no packs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dagfs::format::Digest;

/// The executable under test: this build's, or `DAGFS_TEST_EXE`.
fn exe() -> PathBuf {
    std::env::var_os("DAGFS_TEST_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dagfs")))
}

fn run(exe: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env_remove("DAGFS_CONFIG")
        .env("DAGFS_RUNTIME_DIR", home.join("run"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run dagfs")
}

fn ok(exe: &Path, home: &Path, args: &[&str]) -> String {
    let out = run(exe, home, args);
    assert!(
        out.status.success(),
        "dagfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Regular files under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    found
}

/// Writes `tree` as a folder.
fn folder(dir: &Path, tree: &[(&str, &str)]) {
    let _ = std::fs::remove_dir_all(dir);
    for (path, content) in tree {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Writes generation `generation` of `tree` into the format-1 store at `root`: loose
/// objects and a `format: 1` manifest, encoded as DESIGN.md "Format (version 1)" says.
fn write_v1_generation(root: &Path, generation: u64, tree: &[(&str, &str)]) {
    let mut entries: Vec<(&str, &str)> = tree.to_vec();
    entries.sort();
    let mut canonical = b"dagfs-tree-v1\0".to_vec();
    canonical.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let mut json_entries = Vec::new();
    for (path, content) in &entries {
        let digest = Digest::of(content.as_bytes());
        let hex = digest.to_string();
        let object = root.join("objects").join(&hex[..2]).join(&hex);
        std::fs::create_dir_all(object.parent().unwrap()).unwrap();
        std::fs::write(&object, content).unwrap();
        string(&mut canonical, path);
        canonical.extend_from_slice(&0o644u32.to_le_bytes());
        canonical.extend_from_slice(&(content.len() as u64).to_le_bytes());
        canonical.extend_from_slice(&1_000_000_000i64.to_le_bytes());
        canonical.extend_from_slice(digest.as_bytes());
        json_entries.push(serde_json::json!({
            "path": path, "mode": 0o644, "size": content.len(), "mtime_ns": 1_000_000_000i64,
            "blake3": hex,
        }));
    }
    let tree_id = blake3::hash(&canonical);
    let (created, author, message) = ("2026-01-01T00:00:00Z", "old@release", "format 1");
    let parent = generation.checked_sub(1).filter(|&p| p > 0);
    let mut header = b"dagfs-manifest-v1\0".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&generation.to_le_bytes());
    match parent {
        Some(p) => {
            header.push(1);
            header.extend_from_slice(&p.to_le_bytes());
        }
        None => header.push(0),
    }
    for text in [created, author, message] {
        string(&mut header, text);
    }
    header.extend_from_slice(tree_id.as_bytes());
    let manifest = serde_json::json!({
        "format": 1, "generation": generation, "parent": parent, "created": created,
        "author": author, "message": message, "tree_id": tree_id.to_hex().as_str(),
        "manifest_id": blake3::hash(&header).to_hex().as_str(), "entries": json_entries,
    });
    let path = root.join(format!("generations/{generation:020}"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// The generations' manifests' `format` fields, oldest first.
fn formats(root: &Path) -> Vec<u64> {
    files(&root.join("generations"))
        .iter()
        .map(|name| {
            let bytes = std::fs::read(root.join("generations").join(name)).unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            manifest["format"].as_u64().unwrap()
        })
        .collect()
}

fn checked_out(exe: &Path, home: &Path, url: &str, generation: u64) -> Vec<(String, String)> {
    let dir = home.join(format!("checkout-{generation}"));
    let g = generation.to_string();
    ok(
        exe,
        home,
        &[
            "checkout",
            "--store",
            url,
            "--generation",
            &g,
            dir.to_str().unwrap(),
        ],
    );
    files(&dir)
        .into_iter()
        .filter(|p| !p.starts_with(".dagfs"))
        .map(|p| {
            let content = std::fs::read_to_string(dir.join(&p)).unwrap();
            (p, content)
        })
        .collect()
}

fn owned(tree: &[(&str, &str)]) -> Vec<(String, String)> {
    tree.iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

#[test]
fn a_format_1_store_is_served_pushed_to_and_gcd() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let root = home.join("store");
    let url = root.to_str().unwrap().to_string();
    let (dags, exe) = (home.join("dags"), exe());
    let v1 = [("a.py", "a = 1\n"), ("team/b.py", "b = 1\n")];
    let v2 = [("a.py", "a = 2\n"), ("team/b.py", "b = 1\n")];
    let old = std::env::var_os("DAGFS_FORMAT1_EXE").map(PathBuf::from);
    match &old {
        Some(old) => {
            eprintln!("format-1 store written by {}", old.display());
            for tree in [&v1[..], &v2[..]] {
                folder(&dags, tree);
                ok(
                    old,
                    home,
                    &["push", "-q", dags.to_str().unwrap(), "--to", &url],
                );
            }
        }
        None => {
            eprintln!("format-1 store written by hand (set DAGFS_FORMAT1_EXE to use a release)");
            write_v1_generation(&root, 1, &v1);
            write_v1_generation(&root, 2, &v2);
        }
    }
    assert_eq!(formats(&root), [1, 1]);
    assert!(files(&root.join("packs")).is_empty());

    // Served: verified deep, checked out (through the verified cache, as a mount reads).
    ok(&exe, home, &["verify", "--store", &url, "--deep"]);
    assert_eq!(checked_out(&exe, home, &url, 1), owned(&v1));
    assert_eq!(checked_out(&exe, home, &url, 2), owned(&v2));

    // Pushed to: the new objects go into one pack, the unchanged file's loose object is
    // reused, the manifest says format 2.
    let v3 = [
        ("a.py", "a = 3\n"),
        ("team/b.py", "b = 1\n"),
        ("team/c.py", "c = 1\n"),
    ];
    let push = |tree: &[(&str, &str)]| {
        folder(&dags, tree);
        ok(
            &exe,
            home,
            &["push", "-q", dags.to_str().unwrap(), "--to", &url],
        );
    };
    let loose_before = files(&root.join("objects")).len();
    push(&v3);
    assert_eq!(formats(&root), [1, 1, 2]);
    assert_eq!(files(&root.join("packs")).len(), 1, "one pack");
    assert_eq!(
        files(&root.join("objects")).len(),
        loose_before,
        "no new loose object"
    );
    assert_eq!(checked_out(&exe, home, &url, 3), owned(&v3));

    // An old dagfs refuses the store with one line instead of looking for loose objects.
    if let Some(old) = &old {
        for args in [
            vec!["log", "--store", &url],
            vec!["gc", "--keep", "1", "--store", &url],
        ] {
            let out = run(old, home, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "old dagfs {args:?} succeeded");
            assert!(err.contains("upgrade dagfs"), "old dagfs {args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        }
    }

    // gc'd: generations 1 and 2 go with their own loose objects (a = 1, a = 2); the loose
    // object generation 3 shares (b) and the pack stay.
    ok(
        &exe,
        home,
        &["gc", "--keep", "1", "--grace", "0s", "--store", &url],
    );
    assert_eq!(formats(&root), [2]);
    let loose: Vec<String> = files(&root.join("objects"))
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(loose, [Digest::of(b"b = 1\n").to_string()]);
    assert_eq!(files(&root.join("packs")).len(), 1);
    ok(&exe, home, &["verify", "--store", &url, "--deep"]);
    let _ = std::fs::remove_dir_all(home.join("cache"));
    assert_eq!(checked_out(&exe, home, &url, 3), owned(&v3));

    // And pushed to again after the gc: a rollback-free edit lands in a second pack.
    let v4 = [
        ("a.py", "a = 3\n"),
        ("team/b.py", "b = 2\n"),
        ("team/c.py", "c = 1\n"),
    ];
    push(&v4);
    assert_eq!(files(&root.join("packs")).len(), 2);
    ok(&exe, home, &["verify", "--store", &url, "--deep"]);
    assert_eq!(checked_out(&exe, home, &url, 4), owned(&v4));
}
