//! Memory over many switches: the inode table and the kernel's references must follow the
//! trees in use, not the number of switches (a mount lives for months and switches on every
//! publish). Driven through the filesystem API, the way the kernel would: look up what
//! changed, forget what was invalidated.
//!
//! `DAGFS_SWITCHES` sets the number of switches (default 2,000, about 10 s; the acceptance
//! figure of 10,000 is measured with `DAGFS_SWITCHES=10000`, see BENCHMARKS.md).

mod common;

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use dagfs_fuse::tree::ROOT_INO;
use dagfs_fuse::{ContentId, ContentSource, DagFs, FileSpec, MountOptions};

use common::{label, NoKernel};

/// Every content is the same small file: memory here is about metadata.
struct OneFile(tempfile::NamedTempFile);

impl ContentSource for OneFile {
    fn open(&self, _content: &ContentId, _size: u64) -> io::Result<File> {
        File::open(self.0.path())
    }

    fn record_shown(&self, _: &dagfs_fuse::Shown) -> io::Result<()> {
        Ok(())
    }
}

const FILES: usize = 1000;
const CHANGED_PER_SWITCH: usize = 50;

/// Generation `g`: 1,000 files in 20 directories; 50 of them change at each generation.
fn tree(g: u64) -> Vec<FileSpec> {
    (0..FILES)
        .map(|i| {
            // Batch b (50 files) changes at the generations g with (g - 1) % 20 == b; a file's
            // version is the last such generation (1 before its first change).
            let batch = (i / CHANGED_PER_SWITCH) as i64;
            let rounds = (FILES / CHANGED_PER_SWITCH) as i64;
            let g = g as i64;
            let version = (g - (g - 1 + rounds - batch) % rounds).max(1) as u64;
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            id[8..16].copy_from_slice(&version.to_le_bytes());
            FileSpec {
                path: format!("team{:02}/pipeline_{i:04}.py", i % 20),
                mode: 0o644,
                size: 10,
                mtime_ns: version as i64 * 1_000_000_000,
                content: ContentId(id),
            }
        })
        .collect()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn memory_stays_flat_over_many_switches() {
    let switches: u64 = std::env::var("DAGFS_SWITCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let content = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(content.path(), b"print(1)\n\n").unwrap();
    let options = MountOptions {
        ttl: Duration::from_secs(10),
        uid: 0,
        gid: 0,
        shown_before: None,
    };
    let fs = DagFs::new(OneFile(content), options, label(1), &tree(1)).unwrap();
    fs.set_view_loader(Box::new(|l| Ok(tree(l.generation))));
    // A process keeps one file open for the whole run: the kernel holds its inode.
    let view = fs.view();
    let team = fs.lookup(&view, ROOT_INO, "team00").unwrap().ino;
    let held = fs.lookup(&view, team, "pipeline_0000.py").unwrap().ino;
    drop(view);

    let started = Instant::now();
    let mut warm = 0;
    // What the kernel holds from the previous round: (ino, references).
    let mut kernel: Vec<u64> = Vec::new();
    // The last three generations' trees: the mount keeps their views.
    let mut recent = std::collections::VecDeque::from([(label(1), tree(1))]);
    for g in 2..=switches + 1 {
        let files = tree(g);
        fs.switch(label(g), &files, &NoKernel).unwrap();
        recent.push_back((label(g), files.clone()));
        if recent.len() > 3 {
            recent.pop_front();
        }
        fs.set_views(recent.iter().cloned().collect(), &NoKernel)
            .unwrap();
        // The kernel forgets what the switch invalidated and looks up what changed (Python
        // re-importing modules), through the served tree and through the newest view.
        for ino in kernel.drain(..) {
            fs.forget(ino, 1);
        }
        let view = fs.view();
        let gens = fs.lookup(&view, ROOT_INO, ".dagfs").unwrap().ino;
        let gens = fs.lookup(&view, gens, "generations").unwrap().ino;
        let newest = fs.lookup(&view, gens, &g.to_string()).unwrap().ino;
        kernel.push(newest);
        drop(view);
        // Entering the view builds it (the kernel sends the lookups below through it).
        fs.enter(newest);
        let view = fs.view();
        let batch = ((g - 1) as usize % (FILES / CHANGED_PER_SWITCH)) * CHANGED_PER_SWITCH;
        for spec in &files[batch..batch + CHANGED_PER_SWITCH] {
            let (dir, name) = spec.path.split_once('/').unwrap();
            for root in [ROOT_INO, newest] {
                let d = fs.lookup(&view, root, dir).unwrap().ino;
                let f = fs.lookup(&view, d, name).unwrap().ino;
                kernel.extend([d, f]);
            }
        }
        drop(view);
        if g == 1 + switches / 10 {
            warm = rss_kib();
        }
    }
    let end = rss_kib();
    let counts = fs.inode_counts();
    eprintln!(
        "{switches} switches of {FILES} files in {:?}: RSS {warm} KiB after {} switches, {end} KiB at the end; {counts:?}",
        started.elapsed(),
        switches / 10
    );
    assert_eq!(
        fs.read(held, 0, 100).unwrap(),
        b"print(1)\n\n",
        "the held file stays readable"
    );
    // The served tree and three views: 1,000 files, 21 + 3 x 21 directories, plus what the
    // kernel holds.
    assert!(counts.table <= 4 * FILES + 4 * 21, "{counts:?}");
    assert!(counts.kernel <= 4 * CHANGED_PER_SWITCH + 2, "{counts:?}");
    assert!(counts.retired <= 1, "{counts:?}");

    assert!(
        end <= warm + warm / 10,
        "RSS grew from {warm} KiB to {end} KiB over {switches} switches"
    );
}
