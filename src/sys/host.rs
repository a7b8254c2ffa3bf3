//! Who and where this process is: the host name and the user, as publishes record them
//! (`user@host` authors), failover candidates name themselves and locks name their holders.

/// This host's name (`uname -n`).
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The login name: `USER` or `LOGNAME`, else the name of this uid from the system's user
/// database through NSS (so users from SSSD or LDAP, common on Kerberised clusters, are
/// found, not only those in `/etc/passwd`), else `uid<N>`.
pub fn user_name() -> String {
    let uid = rustix::process::getuid().as_raw();
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|user| !user.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|user| user.name)
        })
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// `user@host` of this process: the author a publish records by default.
pub fn author() -> String {
    format!("{}@{}", user_name(), host_name())
}

/// This user's dagfs cache directory: `$XDG_CACHE_HOME/dagfs`, else `~/.cache/dagfs`.
pub fn user_cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|base| base.join("dagfs"))
}
