//! Validation of store keys.

use super::{ErrorKind, StoreError, StoreResult};

/// Why `path` is not a normalised relative path (`/`-separated non-empty components, none of
/// them `.` or `..`, no leading or trailing `/`, no NUL), or `None` if it is one. The empty
/// path passes; callers that need a name check for it. Shared by store keys and the paths
/// in manifests, which follow the same rules.
pub fn relative_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return None;
    }
    if path.starts_with('/') {
        return Some("absolute; paths are relative and must not start with '/'");
    }
    if path.contains('\0') {
        return Some("contains NUL");
    }
    path.split('/').find_map(|component| match component {
        "" => Some("empty component ('//' or a trailing '/')"),
        "." | ".." => Some("'.' or '..' component"),
        _ => None,
    })
}

/// Checks that `key` is a valid store key (see [`relative_path_problem`]); the empty key
/// names the root. `op` names the caller in the error.
pub fn check_key(op: &'static str, key: &str) -> StoreResult<()> {
    match relative_path_problem(key) {
        None => Ok(()),
        Some(why) => Err(StoreError::new(ErrorKind::Invalid, op, key, why)),
    }
}

/// As [`check_key`], for operations that cannot target the root itself (put, rename,
/// delete...).
pub(crate) fn check_entry_key(op: &'static str, key: &str) -> StoreResult<()> {
    check_key(op, key)?;
    if key.is_empty() {
        return Err(StoreError::new(
            ErrorKind::Invalid,
            op,
            key,
            "the store root itself cannot be the target",
        ));
    }
    Ok(())
}

/// The key of entry `name` inside directory `dir` (`""` for the root).
pub(crate) fn child(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent key of `key` (`""` for a top-level key).
pub(crate) fn parent(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(parent, _)| parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normalised_relative_keys() {
        for key in ["", "a", "objects/ab/cd", "dags/my dag.py", "x/.hidden"] {
            assert!(check_key("test", key).is_ok(), "{key}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for key in ["/a", "a/", "a//b", "./a", "a/../b", "..", "a\0b"] {
            let err = check_key("test", key).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{key}");
        }
    }

    #[test]
    fn parent_of_keys() {
        assert_eq!(parent("a"), "");
        assert_eq!(parent("a/b"), "a");
        assert_eq!(parent("a/b/c"), "a/b");
    }
}
