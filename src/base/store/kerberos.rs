//! Kerberos logins of the HDFS store: one clear line when a login fails, and a warning ahead
//! of the expiry of a ticket-cache login.
//!
//! Renewal. With a keytab, hdfs-native acquires credentials for every new NameNode
//! connection with `gss_acquire_cred_from` (the keytab as `client_keytab`, a private `MEMORY:`
//! cache), and MIT Kerberos gets a fresh ticket from the keytab whenever the cached one has
//! expired or passed its refresh time; an established connection stays authenticated. So
//! dagfs runs no `kinit -k -t` of its own into a private cache: that would duplicate what the
//! library already does per connection, add a binary to depend on, and keep a live ticket in a
//! file. `keytab_daemons_stay_logged_in_across_ticket_expiry` (tests/kerberos_hdfs.rs) attacks
//! this with a KDC issuing 12 s tickets and NameNode failovers after each expiry.
//!
//! With a ticket cache (`kinit`, `KRB5CCNAME`) only its owner can renew the ticket:
//! [`Login::watch`] warns ahead of its expiry, naming the principal and what to run, and a
//! failure after expiry says the same ([`Login::explain`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a ticket cache is read again while nothing is due (a `kinit` may replace it).
const RECHECK: Duration = Duration::from_secs(30);

/// Who an HDFS store logs in as, for messages and the expiry warning.
#[derive(Clone, Debug, Default)]
pub struct Login {
    principal: Option<String>,
    keytab: Option<PathBuf>,
}

impl Login {
    /// The login of `store.kerberos_principal` and `store.kerberos_keytab` (a ticket cache
    /// when the keytab is unset).
    pub fn new(principal: Option<String>, keytab: Option<PathBuf>) -> Login {
        Login { principal, keytab }
    }

    /// One line saying why a Kerberos login failed and what fixes it; `reason` is the GSSAPI
    /// library's own message.
    pub fn explain(&self, reason: &str) -> String {
        let reason = reason.lines().next().unwrap_or_default().trim();
        if let Some(keytab) = &self.keytab {
            let principal = self
                .principal
                .as_deref()
                .unwrap_or("(no principal: set store.kerberos_principal)");
            let k = keytab.display();
            return match std::fs::File::open(keytab) {
                Err(e) => format!(
                    "Kerberos login as {principal} failed: cannot read the keytab {k}: {e}; set store.kerberos_keytab to a keytab this user can read"
                ),
                Ok(_) => format!(
                    "Kerberos login as {principal} from the keytab {k} failed ({reason}); check that `klist -kt {k}` lists {principal}, and set store.kerberos_principal to a principal it lists"
                ),
            };
        }
        let cache = ccache_name();
        let ticket = read_ticket(&cache).ok();
        let who = self
            .principal
            .clone()
            .or_else(|| ticket.as_ref().map(|t| t.principal.clone()))
            .unwrap_or_else(|| "your principal".to_string());
        let fix =
            format!("run `kinit {who}` (or set store.kerberos_keytab so dagfs logs in by itself)");
        let lower = reason.to_ascii_lowercase();
        if lower.contains("expired") || ticket.is_some_and(|t| t.end <= SystemTime::now()) {
            format!("the Kerberos ticket of {who} in {cache} has expired; {fix}")
        } else if lower.contains("no kerberos credentials")
            || lower.contains("no credentials cache")
            || lower.contains("not found")
        {
            format!("no Kerberos ticket for {who} in {cache}; {fix}")
        } else {
            format!(
                "Kerberos login as {who} with the ticket cache {cache} failed ({reason}); {fix}"
            )
        }
    }

    /// While the returned guard lives, logs a warning once 80% of the lifetime of the ticket
    /// in the ticket cache has passed and an error once it has expired, each naming the
    /// principal and what to run. Nothing to watch (and `None`) with a keytab, without
    /// Kerberos in the Hadoop configuration, or outside a tokio runtime.
    pub fn watch(
        &self,
        config_dir: Option<&Path>,
        properties: &HashMap<String, String>,
    ) -> Option<TicketWatch> {
        if self.keytab.is_some() || !kerberos_configured(config_dir, properties) {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let task = runtime.spawn(watch_loop(self.principal.clone()));
        Some(TicketWatch(task.abort_handle()))
    }
}

/// Stops the ticket watch of [`Login::watch`] when dropped.
#[derive(Debug)]
pub struct TicketWatch(tokio::task::AbortHandle);

impl Drop for TicketWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn watch_loop(principal: Option<String>) {
    let mut warned = None;
    let mut expired = None;
    let mut first = true;
    loop {
        let cache = ccache_name();
        let wait = match read_ticket(&cache) {
            Err(_) => RECHECK,
            Ok(ticket) if principal.as_ref().is_some_and(|p| *p != ticket.principal) => RECHECK,
            Ok(ticket) => {
                let now = SystemTime::now();
                let lifetime = ticket.end.duration_since(ticket.start).unwrap_or_default();
                let warn_at = ticket.end - lifetime / 5;
                let who = &ticket.principal;
                let fix = format!(
                    "run `kinit {who}` (or set store.kerberos_keytab so dagfs logs in by itself)"
                );
                if now >= ticket.end {
                    // Expired before we started: the first failing call says so.
                    if first {
                        expired = Some(ticket.end);
                    }
                    if expired != Some(ticket.end) {
                        expired = Some(ticket.end);
                        tracing::error!(principal = %who, cache = %cache, "the Kerberos ticket of {who} in {cache} has expired; new connections to HDFS fail until you {fix}");
                    }
                    RECHECK
                } else if now >= warn_at {
                    if warned != Some(ticket.end) {
                        warned = Some(ticket.end);
                        let left = ticket.end.duration_since(now).unwrap_or_default();
                        let left = humantime::format_duration(Duration::from_secs(left.as_secs()));
                        tracing::warn!(principal = %who, cache = %cache, "the Kerberos ticket of {who} in {cache} expires in {left}; {fix} before then");
                    }
                    ticket
                        .end
                        .duration_since(now)
                        .unwrap_or_default()
                        .min(RECHECK)
                } else {
                    warn_at.duration_since(now).unwrap_or_default().min(RECHECK)
                }
            }
        };
        first = false;
        tokio::time::sleep(wait.max(Duration::from_millis(200))).await;
    }
}

/// Whether the Hadoop configuration (the `properties` overrides, else `core-site.xml` in
/// `config_dir`, `HADOOP_CONF_DIR` or `$HADOOP_HOME/etc/hadoop`, as hdfs-native looks it up)
/// sets `hadoop.security.authentication` to `kerberos`.
fn kerberos_configured(config_dir: Option<&Path>, properties: &HashMap<String, String>) -> bool {
    const KEY: &str = "hadoop.security.authentication";
    if let Some(value) = properties.get(KEY) {
        return value.trim().eq_ignore_ascii_case("kerberos");
    }
    let dir = config_dir.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("HADOOP_CONF_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HADOOP_HOME").map(|h| Path::new(&h).join("etc/hadoop")))
    });
    let Some(xml) = dir.and_then(|d| std::fs::read_to_string(d.join("core-site.xml")).ok()) else {
        return false;
    };
    // The property's <value> follows its <name> within the same <property>.
    xml.split("<property>").any(|property| {
        property.contains(&format!("<name>{KEY}</name>"))
            && property
                .split_once("<value>")
                .and_then(|(_, rest)| rest.split_once("</value>"))
                .is_some_and(|(value, _)| value.trim().eq_ignore_ascii_case("kerberos"))
    })
}

/// The ticket cache MIT Kerberos uses: `KRB5CCNAME`, else `FILE:/tmp/krb5cc_<uid>`.
pub fn ccache_name() -> String {
    std::env::var("KRB5CCNAME")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("FILE:/tmp/krb5cc_{}", rustix::process::getuid().as_raw()))
}

/// The ticket-granting ticket of a ticket cache's default principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The cache's default principal, `name[/instance]@REALM`.
    pub principal: String,
    /// When the ticket became valid.
    pub start: SystemTime,
    /// When it expires.
    pub end: SystemTime,
}

/// Reads the ticket-granting ticket from `cache` (`FILE:path` or a path: MIT's file format,
/// versions 3 and 4); other cache types (`KEYRING:`, `KCM:`...) cannot be read here.
pub fn read_ticket(cache: &str) -> Result<Ticket, String> {
    let path = match cache.split_once(':') {
        Some(("FILE", path)) => path,
        Some((kind, _)) if !kind.contains('/') => {
            return Err(format!("cannot read {kind}: ticket caches"))
        }
        _ => cache,
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    parse_ccache(&bytes).ok_or_else(|| format!("{path}: no ticket-granting ticket"))
}

/// A big-endian reader over a ticket cache file; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.bytes(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn data(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    /// A principal as (components, realm).
    fn principal(&mut self) -> Option<(Vec<String>, String)> {
        let _name_type = self.u32()?;
        let count = self.u32()?;
        let realm = String::from_utf8_lossy(self.data()?).into_owned();
        let mut components = Vec::new();
        for _ in 0..count {
            components.push(String::from_utf8_lossy(self.data()?).into_owned());
        }
        Some((components, realm))
    }
    /// Skips `count` (u16 type, data) records.
    fn skip_records(&mut self) -> Option<()> {
        for _ in 0..self.u32()? {
            self.u16()?;
            self.data()?;
        }
        Some(())
    }
}

fn parse_ccache(bytes: &[u8]) -> Option<Ticket> {
    let mut r = Reader(bytes);
    let version = r.u16()?;
    if version != 0x0503 && version != 0x0504 {
        return None;
    }
    if version == 0x0504 {
        let header = r.u16()? as usize;
        r.bytes(header)?;
    }
    let (components, realm) = r.principal()?;
    let principal = format!("{}@{realm}", components.join("/"));
    let time = |secs: u32| UNIX_EPOCH + Duration::from_secs(u64::from(secs));
    let mut best: Option<Ticket> = None;
    while !r.0.is_empty() {
        let (client, client_realm) = r.principal()?;
        let (server, server_realm) = r.principal()?;
        r.u16()?; // enctype
        if version == 0x0503 {
            r.u16()?;
        }
        r.data()?; // key
        let _auth = r.u32()?;
        let start = r.u32()?;
        let end = r.u32()?;
        let _renew_till = r.u32()?;
        r.u8()?; // is_skey
        r.u32()?; // flags
        r.skip_records()?; // addresses
        r.skip_records()?; // authorization data
        r.data()?; // ticket
        r.data()?; // second ticket
        let tgt = server.len() == 2 && server[0] == "krbtgt" && server[1] == realm;
        if tgt && client == components && client_realm == realm && server_realm == realm {
            let ticket = Ticket {
                principal: principal.clone(),
                start: time(start),
                end: time(end),
            };
            if best.as_ref().is_none_or(|b| b.end < ticket.end) {
                best = Some(ticket);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_data(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }

    fn put_principal(out: &mut Vec<u8>, components: &[&str], realm: &str) {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&(components.len() as u32).to_be_bytes());
        put_data(out, realm.as_bytes());
        for c in components {
            put_data(out, c.as_bytes());
        }
    }

    fn put_cred(out: &mut Vec<u8>, server: &[&str], start: u32, end: u32) {
        put_principal(out, &["alice"], "EXAMPLE.COM");
        put_principal(out, server, "EXAMPLE.COM");
        out.extend_from_slice(&18u16.to_be_bytes());
        put_data(out, &[7; 32]);
        for t in [start, start, end, end] {
            out.extend_from_slice(&t.to_be_bytes());
        }
        out.push(0);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        put_data(out, b"ticket");
        put_data(out, b"");
    }

    fn ccache() -> Vec<u8> {
        let mut out = vec![0x05, 0x04];
        out.extend_from_slice(&12u16.to_be_bytes());
        out.extend_from_slice(&[0; 12]);
        put_principal(&mut out, &["alice"], "EXAMPLE.COM");
        put_cred(&mut out, &["HTTP", "web"], 100, 900);
        put_cred(&mut out, &["krbtgt", "EXAMPLE.COM"], 1000, 2000);
        out
    }

    #[test]
    fn the_tgt_of_the_default_principal_is_read_from_a_v4_cache() {
        let ticket = parse_ccache(&ccache()).unwrap();
        assert_eq!(ticket.principal, "alice@EXAMPLE.COM");
        assert_eq!(ticket.start, UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(ticket.end, UNIX_EPOCH + Duration::from_secs(2000));
    }

    #[test]
    fn a_truncated_or_foreign_cache_is_no_ticket_and_no_panic() {
        let bytes = ccache();
        for len in 0..bytes.len() {
            assert_eq!(parse_ccache(&bytes[..len]), None, "prefix of {len} bytes");
        }
        assert_eq!(parse_ccache(b"\x05\x01garbage"), None);
    }

    #[test]
    fn a_missing_keytab_is_named_with_the_principal_and_the_setting() {
        let login = Login::new(
            Some("alice@EXAMPLE.COM".into()),
            Some("/nonexistent/alice.keytab".into()),
        );
        let line = login.explain("No credentials cache found");
        assert!(line.contains("alice@EXAMPLE.COM"), "{line}");
        assert!(line.contains("/nonexistent/alice.keytab"), "{line}");
        assert!(line.contains("store.kerberos_keytab"), "{line}");
    }

    #[test]
    fn kerberos_is_read_from_core_site_or_the_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let none = HashMap::new();
        assert!(!kerberos_configured(Some(dir.path()), &none));
        std::fs::write(
            dir.path().join("core-site.xml"),
            "<configuration><property><name>fs.defaultFS</name><value>hdfs://x</value></property>\n<property><name>hadoop.security.authentication</name><value>kerberos</value></property></configuration>",
        )
        .unwrap();
        assert!(kerberos_configured(Some(dir.path()), &none));
        let simple = HashMap::from([(
            "hadoop.security.authentication".to_string(),
            "simple".to_string(),
        )]);
        assert!(!kerberos_configured(Some(dir.path()), &simple));
    }
}
