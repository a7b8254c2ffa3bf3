//! The process table (`/proc`), for the supervision of the failover unit: which processes
//! descend from a guard, and whether a process is really the one a guard started.

use std::collections::HashMap;

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its id.
    pub pid: u32,
    /// Its parent's id.
    pub ppid: u32,
    /// Its process group.
    pub pgrp: u32,
    /// Exited but not yet reaped.
    pub zombie: bool,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so the fields are counted after the last `)`.
fn parse_stat(pid: u32, stat: &str) -> Option<Process> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Process {
        pid,
        ppid,
        pgrp,
        zombie: state == "Z" || state == "X",
    })
}

/// Process `pid`, if it exists.
pub fn process(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// Every process on the host (those that exit while being read are skipped).
pub fn all() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(process)
        .collect()
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<Process> {
    all().into_iter().filter(|p| p.ppid == pid).collect()
}

/// Every process descended from `root` (children, their children, ...), excluding `root`.
pub fn descendants(root: u32) -> Vec<Process> {
    let mut by_parent: HashMap<u32, Vec<Process>> = HashMap::new();
    for process in all() {
        by_parent.entry(process.ppid).or_default().push(process);
    }
    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(parent) = pending.pop() {
        for child in by_parent.remove(&parent).unwrap_or_default() {
            pending.push(child.pid);
            found.push(child);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(4242, line),
            Some(Process {
                pid: 4242,
                ppid: 17,
                pgrp: 4242,
                zombie: false
            })
        );
        assert!(parse_stat(1, "1 (x) Z 0 1 1").unwrap().zombie);
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    #[test]
    fn this_process_descends_from_its_parent() {
        let me = std::process::id();
        let parent = process(me).unwrap().ppid;
        assert!(descendants(parent).iter().any(|p| p.pid == me));
    }
}
