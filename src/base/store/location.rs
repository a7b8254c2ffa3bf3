//! Parsing of store URLs.

use std::path::PathBuf;

use url::Url;

use super::{ErrorKind, StoreError, StoreResult};

/// Where a store lives, parsed from the URL or path a user gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory (`file:///path`, or a plain absolute or relative path).
    Local(PathBuf),
    /// An HDFS root: `hdfs://host:port/path` (one NameNode), `hdfs://nameservice/path`
    /// (HA, resolved through the Hadoop configuration), `hdfs:///path` (`fs.defaultFS`) or
    /// `viewfs://cluster/path`.
    Hdfs {
        /// `hdfs` or `viewfs`.
        scheme: String,
        /// `host:port`, a nameservice, a viewfs cluster, or empty for `fs.defaultFS`.
        authority: String,
        /// Absolute root path inside the file system, without a trailing `/` (`/` itself
        /// for the file system root).
        root: String,
    },
}

impl StoreLocation {
    /// Parses `input`. Anything with a scheme other than `hdfs`, `viewfs` or `file` is an
    /// error naming the supported forms.
    pub fn parse(input: &str) -> StoreResult<StoreLocation> {
        let invalid = |why: String| StoreError::new(ErrorKind::Invalid, "open", input, why);
        if input.is_empty() {
            return Err(invalid(
                "empty store URL; expected hdfs://, viewfs://, file:// or a path".into(),
            ));
        }
        if !input.contains("://") {
            return Ok(StoreLocation::Local(PathBuf::from(input)));
        }
        let url = Url::parse(input).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("store URLs take no '?query' or '#fragment'".into()));
        }
        match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("file:// URLs need an absolute path and no host".into()))?;
                Ok(StoreLocation::Local(path))
            }
            scheme @ ("hdfs" | "viewfs") => {
                let mut authority = url.host_str().unwrap_or_default().to_string();
                if let Some(port) = url.port() {
                    authority = format!("{authority}:{port}");
                }
                if scheme == "viewfs" && authority.is_empty() {
                    return Err(invalid("viewfs:// URLs need a mount table name: viewfs://CLUSTER/path".into()));
                }
                let path = percent_encoding::percent_decode_str(url.path())
                    .decode_utf8()
                    .map_err(|_| invalid("the root path is not valid UTF-8 once decoded".into()))?;
                // The URL parser resolves dot segments away; look at what the user wrote.
                let written = input.split_once("://").map_or("", |(_, rest)| {
                    rest.find('/').map_or("", |i| &rest[i..])
                });
                if written.split('/').any(|c| c == "." || c == "..") {
                    return Err(invalid("the root path must not contain '.' or '..'".into()));
                }
                let trimmed = path.trim_end_matches('/');
                let root = if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() };
                Ok(StoreLocation::Hdfs { scheme: scheme.to_string(), authority, root })
            }
            other => Err(invalid(format!(
                "unsupported scheme '{other}'; use hdfs://HOST:PORT/path, hdfs://NAMESERVICE/path, viewfs://CLUSTER/path, file:///path or a plain path"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdfs(scheme: &str, authority: &str, root: &str) -> StoreLocation {
        StoreLocation::Hdfs {
            scheme: scheme.into(),
            authority: authority.into(),
            root: root.into(),
        }
    }

    #[test]
    fn parses_every_supported_form() {
        let cases = [
            (
                "hdfs://nn1:8020/airflow/dags",
                hdfs("hdfs", "nn1:8020", "/airflow/dags"),
            ),
            (
                "hdfs://prod-ns/airflow/dags/",
                hdfs("hdfs", "prod-ns", "/airflow/dags"),
            ),
            ("hdfs:///airflow", hdfs("hdfs", "", "/airflow")),
            ("hdfs://nn1:8020", hdfs("hdfs", "nn1:8020", "/")),
            (
                "viewfs://cluster/airflow",
                hdfs("viewfs", "cluster", "/airflow"),
            ),
            ("hdfs://nn/a%20b", hdfs("hdfs", "nn", "/a b")),
            (
                "file:///var/lib/dagfs",
                StoreLocation::Local("/var/lib/dagfs".into()),
            ),
            ("./store", StoreLocation::Local("./store".into())),
        ];
        for (input, want) in cases {
            assert_eq!(StoreLocation::parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_unsupported_forms_with_a_reason() {
        for input in [
            "",
            "s3://bucket/x",
            "viewfs:///x",
            "hdfs://nn/a/../b",
            "hdfs://nn/x?y=1",
            "file://host/x",
        ] {
            let err = StoreLocation::parse(input).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{input}");
            assert!(!err.detail().is_empty(), "{input}");
        }
    }
}
