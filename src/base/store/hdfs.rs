//! [`HdfsStore`]: a store on HDFS through the hdfs-native client.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use hdfs_native::client::FileStatus;
use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions};

use super::kerberos::{Login, TicketWatch};
use super::key::{check_entry_key, check_key, child, parent};
use super::{
    EntryInfo, EntryKind, ErrorKind, Overwrite, Store, StoreError, StoreLocation, StoreResult,
    STAGING_DIR,
};

/// Bytes moved per bounded step of a read or write: a call on a large file is bounded per
/// chunk, so a slow-but-alive cluster finishes while a dead one fails within the timeout.
const CHUNK: usize = 4 << 20;

/// How to reach HDFS; everything the Hadoop configuration does not already say.
#[derive(Clone, Debug)]
pub struct HdfsOptions {
    /// Upper bound on every NameNode/DataNode call (and on every [`CHUNK`] of data).
    pub timeout: Duration,
    /// Effective user; `None` follows `HADOOP_USER_NAME`, then the OS user.
    pub user: Option<String>,
    /// Directory with `core-site.xml`/`hdfs-site.xml`; `None` follows `HADOOP_CONF_DIR`,
    /// then `$HADOOP_HOME/etc/hadoop`.
    pub config_dir: Option<PathBuf>,
    /// Hadoop properties that override the configuration files.
    pub properties: HashMap<String, String>,
    /// Kerberos principal; `None` uses the default principal of the ticket cache.
    pub kerberos_principal: Option<String>,
    /// Kerberos keytab to log in from instead of the ticket cache.
    pub kerberos_keytab: Option<PathBuf>,
}

impl Default for HdfsOptions {
    fn default() -> Self {
        HdfsOptions {
            timeout: Duration::from_secs(30),
            user: None,
            config_dir: None,
            properties: HashMap::new(),
            kerberos_principal: None,
            kerberos_keytab: None,
        }
    }
}

/// Hadoop client properties dagfs sets unless `properties` (the user's overrides) does.
///
/// The NameNode refuses a file's `complete` until the DataNode's report of the last block
/// has arrived, a few milliseconds after the client's last ack; Hadoop's client (and
/// hdfs-native's, without its configuration patch) first retries after 400-500 ms, which made
/// every small-file close take half a second. dagfs retries after 10 ms, doubling, 10 times
/// (10.2 s in all, as long as Hadoop's default schedule).
const CLIENT_DEFAULTS: [(&str, &str); 2] = [
    (
        "dfs.client.block.write.locateFollowingBlock.initial.delay.ms",
        "10",
    ),
    ("dfs.client.block.write.locateFollowingBlock.retries", "10"),
];

/// `properties` over [`CLIENT_DEFAULTS`].
fn client_properties(properties: &HashMap<String, String>) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = CLIENT_DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(properties.clone());
    all
}

/// A store rooted at a directory of an HDFS (or viewfs) namespace.
///
/// Atomic steps are the NameNode's: `create(overwrite=false)` for exclusive creation and
/// `rename2` (with or without `OVERWRITE`) for publishing staged files. Every call is bounded
/// by [`HdfsOptions::timeout`]; a dead or partitioned NameNode yields `Timeout` or
/// `Unavailable`, never a hang.
#[derive(Debug)]
pub struct HdfsStore {
    client: Client,
    url: String,
    root: String,
    timeout: Duration,
    /// Who the client logs in as, to explain a failed Kerberos login.
    login: Login,
    _ticket_watch: Option<TicketWatch>,
}

impl HdfsStore {
    /// Builds a client for `location`. No RPC is made: an unreachable cluster shows up on
    /// the first operation, as a typed error.
    pub async fn open(location: &StoreLocation, options: HdfsOptions) -> StoreResult<HdfsStore> {
        let StoreLocation::Hdfs {
            scheme,
            authority,
            root,
        } = location
        else {
            return Err(StoreError::new(
                ErrorKind::Invalid,
                "open",
                &format!("{location:?}"),
                "not an hdfs:// or viewfs:// location",
            ));
        };
        let url = format!(
            "{scheme}://{authority}{}",
            if root == "/" { "" } else { root }
        );
        let mut builder = ClientBuilder::new()
            .with_url(format!("{scheme}://{authority}/"))
            .with_config(client_properties(&options.properties));
        if let Some(dir) = &options.config_dir {
            builder = builder.with_config_dir(dir.display().to_string());
        }
        if let Some(user) = &options.user {
            builder = builder.with_user(user);
        }
        if let Some(principal) = &options.kerberos_principal {
            builder = builder.with_kerberos_principal(principal);
        }
        if let Some(keytab) = &options.kerberos_keytab {
            builder = builder.with_kerberos_keytab(keytab.display().to_string());
        }
        let client = builder.build().map_err(|e| {
            let hint = "check the URL, HADOOP_CONF_DIR (core-site.xml/hdfs-site.xml) and Kerberos settings";
            StoreError::new(ErrorKind::Invalid, "open", &url, format!("{e}; {hint}"))
        })?;
        let login = Login::new(
            options.kerberos_principal.clone(),
            options.kerberos_keytab.clone(),
        );
        Ok(HdfsStore {
            client,
            url,
            root: root.clone(),
            timeout: options.timeout,
            _ticket_watch: login.watch(options.config_dir.as_deref(), &options.properties),
            login,
        })
    }

    /// Absolute HDFS path of `key`.
    fn path(&self, op: &'static str, key: &str) -> StoreResult<String> {
        check_key(op, key)?;
        Ok(match (self.root.as_str(), key) {
            (root, "") => root.to_string(),
            ("/", key) => format!("/{key}"),
            (root, key) => format!("{root}/{key}"),
        })
    }

    /// Runs one HDFS call under the timeout and types its error.
    async fn bounded<T>(
        &self,
        op: &'static str,
        key: &str,
        call: impl Future<Output = Result<T, HdfsError>>,
    ) -> StoreResult<T> {
        self.timed(op, key, call)
            .await?
            .map_err(|e| hdfs_error(op, key, e, &self.login))
    }

    /// Runs one HDFS call under the timeout, leaving its own error untyped.
    async fn timed<T>(
        &self,
        op: &'static str,
        key: &str,
        call: impl Future<Output = Result<T, HdfsError>>,
    ) -> StoreResult<Result<T, HdfsError>> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::timeout(op, key, self.timeout))
    }

    /// One attempt at [`Store::read_range`]: a fresh reader (block locations from the
    /// NameNode) reading `offset..offset+len`, clamped to the file, one [`CHUNK`] per call.
    async fn read_once(
        &self,
        key: &str,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, ReadFailure> {
        let reader = self.read_call(key, self.client.read(path)).await?;
        let size = reader.file_length() as u64;
        // hdfs-native panics on ranges past EOF: clamp before asking.
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        let mut buf = BytesMut::with_capacity(end - start);
        let mut pos = start;
        while pos < end {
            let step = CHUNK.min(end - pos);
            let chunk = self.read_call(key, reader.read_range(pos, step)).await?;
            if chunk.len() != step {
                return Err(ReadFailure::Other(StoreError::new(
                    ErrorKind::Corrupt,
                    "read",
                    key,
                    format!(
                        "short read: {} of {step} bytes at offset {pos}",
                        chunk.len()
                    ),
                )));
            }
            buf.extend_from_slice(&chunk);
            pos += step;
        }
        Ok(buf.freeze())
    }

    /// One bounded call of a read, its failure sorted for [`ReadFailure`].
    async fn read_call<T>(
        &self,
        key: &str,
        call: impl Future<Output = Result<T, HdfsError>>,
    ) -> Result<T, ReadFailure> {
        self.timed("read", key, call).await?.map_err(|e| {
            let datanodes = matches!(
                e,
                HdfsError::DataTransferError(_) | HdfsError::BlocksNotFound(_)
            );
            let error = hdfs_error("read", key, e, &self.login);
            if datanodes {
                ReadFailure::DataNodes(error)
            } else {
                ReadFailure::Other(error)
            }
        })
    }

    /// Creates `path` (no overwrite, parents created) and writes `data` in bounded chunks,
    /// closing the writer on success. On failure the partial file is deleted. A block the
    /// NameNode will not allocate yet (`NotReplicatedYetException`: the previous block's
    /// replicas are not reported yet, common on a loaded cluster) is retried from scratch with
    /// the Java client's schedule (5 attempts, 400 ms doubling), which hdfs-native lacks.
    async fn write_new(
        &self,
        op: &'static str,
        key: &str,
        path: &str,
        data: Bytes,
    ) -> StoreResult<()> {
        let mut delay = Duration::from_millis(400);
        let mut attempt = 1;
        loop {
            match self.write_once(op, key, path, data.clone()).await {
                Err(e) if attempt < 5 && e.detail().contains("NotReplicatedYetException") => {
                    tracing::debug!(key, attempt, "block not replicated yet; writing again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One attempt of [`HdfsStore::write_new`].
    async fn write_once(
        &self,
        op: &'static str,
        key: &str,
        path: &str,
        data: Bytes,
    ) -> StoreResult<()> {
        let options = WriteOptions::default().overwrite(false).create_parent(true);
        let mut writer = self
            .bounded(op, key, self.client.create(path, options))
            .await?;
        let mut written = 0;
        let result = async {
            while written < data.len() {
                let end = (written + CHUNK).min(data.len());
                self.bounded(op, key, writer.write_bytes(data.slice(written..end)))
                    .await?;
                written = end;
            }
            self.bounded(op, key, writer.close()).await
        }
        .await;
        if result.is_err() {
            self.discard(path).await;
        }
        result
    }

    /// Best-effort removal of a file this store created and could not finish.
    async fn discard(&self, path: &str) {
        if let Err(e) = self
            .bounded("cleanup", path, self.client.delete(path, false))
            .await
        {
            tracing::warn!(path, error = %e, "could not remove an unfinished file; it is garbage and safe to delete");
        }
    }

    async fn rename_path(
        &self,
        key: &str,
        from: &str,
        to: &str,
        overwrite: Overwrite,
    ) -> StoreResult<()> {
        let allow = overwrite == Overwrite::Allow;
        self.bounded("rename", key, self.client.rename(from, to, allow))
            .await
    }

    fn entry_info(&self, key: String, status: &FileStatus) -> EntryInfo {
        let kind = if status.isdir {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        EntryInfo {
            key,
            kind,
            len: status.length as u64,
            modified: UNIX_EPOCH + Duration::from_millis(status.modification_time),
            mode: u32::from(status.permission) & 0o777,
        }
    }
}

/// Why one attempt at a read failed.
enum ReadFailure {
    /// Every DataNode listed for a block refused, broke off or was missing. hdfs-native's
    /// reader marks a failed DataNode dead for the reader's life and never asks the NameNode
    /// again, so a DataNode restarting, or busy for a moment, fails the read outright.
    DataNodes(StoreError),
    /// Anything else; the answer.
    Other(StoreError),
}

impl From<StoreError> for ReadFailure {
    fn from(error: StoreError) -> Self {
        ReadFailure::Other(error)
    }
}

/// The wait before reading again after `failures` earlier attempts saw every DataNode fail:
/// Hadoop's DFSClient schedule (`dfs.client.retry.window.base`, 3 s: 0-3 s, then 3-9 s, then
/// 6-15 s...), jittered so readers do not return together. The attempts stop at the store
/// timeout, counted from the first; each attempt opens the file again, so the read is of one
/// version of it even if it was replaced meanwhile.
fn datanode_retry_wait(failures: u32) -> Duration {
    const WINDOW: Duration = Duration::from_secs(3);
    WINDOW * failures + WINDOW.mul_f64(f64::from(failures + 1) * fastrand::f64())
}

/// Maps hdfs-native's errors (and the Java exception class names the NameNode sends) onto
/// the store's error kinds; a failed Kerberos login becomes one line naming the principal and
/// the fix ([`Login::explain`]).
fn hdfs_error(op: &'static str, key: &str, err: HdfsError, login: &Login) -> StoreError {
    use std::io::ErrorKind as Io;
    let kind = match &err {
        HdfsError::FileNotFound(_) => ErrorKind::NotFound,
        HdfsError::AlreadyExists(_) => ErrorKind::AlreadyExists,
        HdfsError::ChecksumError => ErrorKind::Corrupt,
        HdfsError::InvalidPath(_)
        | HdfsError::InvalidArgument(_)
        | HdfsError::IsADirectoryError(_)
        | HdfsError::UrlParseError(_) => ErrorKind::Invalid,
        HdfsError::BlocksNotFound(_) | HdfsError::DataTransferError(_) => ErrorKind::Unavailable,
        HdfsError::SASLError(_) | HdfsError::GSSAPIError(..) | HdfsError::NoSASLMechanism => {
            ErrorKind::PermissionDenied
        }
        HdfsError::OperationFailed(msg) if msg.contains("libgssapi") => ErrorKind::PermissionDenied,
        HdfsError::IOError(io) => match io.kind() {
            Io::TimedOut => ErrorKind::Timeout,
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unavailable,
        },
        HdfsError::RPCError(class, msg) | HdfsError::FatalRPCError(class, msg) => {
            rpc_kind(class, msg)
        }
        _ => ErrorKind::Other,
    };
    let detail = match &err {
        // Java messages can carry whole stack traces: keep the exception's name and first line.
        HdfsError::RPCError(class, msg) | HdfsError::FatalRPCError(class, msg) => {
            let short = class.rsplit('.').next().unwrap_or(class);
            format!("{short}: {}", msg.lines().next().unwrap_or_default())
        }
        HdfsError::GSSAPIError(_, _, reason) => login.explain(reason),
        HdfsError::OperationFailed(msg) if msg.contains("libgssapi") => {
            "Kerberos is configured but libgssapi_krb5.so.2 cannot be loaded; install MIT Kerberos (Debian: apt-get install libgssapi-krb5-2)".to_string()
        }
        other => other.to_string(),
    };
    StoreError::new(kind, op, key, detail)
}

fn rpc_kind(class: &str, msg: &str) -> ErrorKind {
    match class.rsplit('.').next().unwrap_or(class) {
        // The NameNode answers a read of a directory with "Path is not a file".
        "FileNotFoundException" if msg.contains("is not a file") => ErrorKind::Invalid,
        "FileNotFoundException" => ErrorKind::NotFound,
        "FileAlreadyExistsException" | "AlreadyBeingCreatedException" => ErrorKind::AlreadyExists,
        "AccessControlException"
        | "AuthorizationException"
        | "InvalidToken"
        | "SecretManager$InvalidToken" => ErrorKind::PermissionDenied,
        "StandbyException"
        | "SafeModeException"
        | "RetriableException"
        | "ObserverRetryOnActiveException"
        | "NotReplicatedYetException" => ErrorKind::Unavailable,
        "PathIsNotEmptyDirectoryException"
        | "ParentNotDirectoryException"
        | "InvalidPathException"
        | "PathIsNotDirectoryException"
        | "HadoopIllegalArgumentException" => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

#[async_trait]
impl Store for HdfsStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, key: &str, data: Bytes, overwrite: Overwrite) -> StoreResult<()> {
        let dest = self.path("put", key)?;
        check_entry_key("put", key)?;
        let staged = self.path("put", &format!("{STAGING_DIR}/{}", uuid::Uuid::new_v4()))?;
        self.write_new("put", key, &staged, data).await?;
        let mut renamed = self.rename_path(key, &staged, &dest, overwrite).await;
        if matches!(&renamed, Err(e) if e.kind() == ErrorKind::NotFound) {
            // rename2 needs the destination's parent: create it once and try again.
            let parent_path = self.path("put", parent(key))?;
            renamed = match self
                .bounded("put", key, self.client.mkdirs(&parent_path, 0o755, true))
                .await
            {
                Ok(()) => self.rename_path(key, &staged, &dest, overwrite).await,
                Err(e) => Err(e),
            };
        }
        if renamed.is_err() {
            self.discard(&staged).await;
        }
        renamed
    }

    async fn create_exclusive(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let path = self.path("create_exclusive", key)?;
        self.write_new("create_exclusive", key, &path, data).await
    }

    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        self.read_range(key, 0, u64::MAX).await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes> {
        let path = self.path("read", key)?;
        let deadline = Instant::now() + self.timeout;
        let mut failures = 0;
        loop {
            let error = match self.read_once(key, &path, offset, len).await {
                Ok(data) => return Ok(data),
                Err(ReadFailure::Other(e)) => return Err(e),
                Err(ReadFailure::DataNodes(e)) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(error);
            }
            let wait = datanode_retry_wait(failures).min(left);
            failures += 1;
            tracing::warn!(key, failures, ?wait, %error, "no DataNode served a block; asking the NameNode again");
            tokio::time::sleep(wait).await;
        }
    }

    async fn stat(&self, key: &str) -> StoreResult<EntryInfo> {
        let path = self.path("stat", key)?;
        let status = self
            .bounded("stat", key, self.client.get_file_info(&path))
            .await?;
        Ok(self.entry_info(key.to_string(), &status))
    }

    async fn list(&self, key: &str) -> StoreResult<Vec<EntryInfo>> {
        let path = self.path("list", key)?;
        let statuses = self
            .bounded("list", key, self.client.list_status(&path, false))
            .await?;
        let mut entries = Vec::with_capacity(statuses.len());
        for status in &statuses {
            let name = status.path.rsplit('/').next().unwrap_or_default();
            if status.path.trim_end_matches('/') == path.trim_end_matches('/') || name.is_empty() {
                // HDFS lists a file as itself; the contract says list takes a directory.
                return Err(StoreError::new(
                    ErrorKind::Invalid,
                    "list",
                    key,
                    "not a directory",
                ));
            }
            entries.push(self.entry_info(child(key, name), status));
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    async fn rename(&self, from: &str, to: &str, overwrite: Overwrite) -> StoreResult<()> {
        let src = self.path("rename", from)?;
        let dst = self.path("rename", to)?;
        check_entry_key("rename", from)?;
        check_entry_key("rename", to)?;
        self.rename_path(from, &src, &dst, overwrite).await
    }

    async fn delete(&self, key: &str, recursive: bool) -> StoreResult<bool> {
        let path = self.path("delete", key)?;
        check_entry_key("delete", key)?;
        self.bounded("delete", key, self.client.delete(&path, recursive))
            .await
    }

    async fn mkdirs(&self, key: &str) -> StoreResult<()> {
        let path = self.path("mkdirs", key)?;
        self.bounded("mkdirs", key, self.client.mkdirs(&path, 0o755, true))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: &str = "dfs.client.block.write.locateFollowingBlock.initial.delay.ms";
    const RETRIES: &str = "dfs.client.block.write.locateFollowingBlock.retries";

    #[test]
    fn a_refused_complete_is_retried_after_10_ms_unless_the_user_says_otherwise() {
        let defaults = client_properties(&HashMap::new());
        assert_eq!(defaults.get(DELAY).map(String::as_str), Some("10"));
        assert_eq!(defaults.get(RETRIES).map(String::as_str), Some("10"));

        let user = HashMap::from([
            (DELAY.to_string(), "400".to_string()),
            ("dfs.replication".to_string(), "2".to_string()),
        ]);
        let merged = client_properties(&user);
        assert_eq!(merged.get(DELAY).map(String::as_str), Some("400"));
        assert_eq!(merged.get(RETRIES).map(String::as_str), Some("10"));
        assert_eq!(merged.get("dfs.replication").map(String::as_str), Some("2"));
    }
}
