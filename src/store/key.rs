//! Validation of store keys.

use super::{ErrorKind, StoreError, StoreResult};

/// Checks that `key` is a normalised relative key: `/`-separated non-empty components, none
/// of them `.` or `..`, no leading or trailing `/`, no NUL. The empty key (the root) is
/// accepted; `op` names the caller in the error.
pub fn check_key(op: &'static str, key: &str) -> StoreResult<()> {
    if key.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| Err(StoreError::new(ErrorKind::Invalid, op, key, why));
    if key.starts_with('/') {
        return bad("keys are relative to the store root and must not start with '/'");
    }
    if key.contains('\0') {
        return bad("keys must not contain NUL");
    }
    for component in key.split('/') {
        match component {
            "" => return bad("keys must not contain empty components ('//' or a trailing '/')"),
            "." | ".." => return bad("keys must not contain '.' or '..' components"),
            _ => {}
        }
    }
    Ok(())
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
