//! The generation commands: `push`, `import`, `log`, `diff`, `rollback`, `gc`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::config::Config;
use crate::format::Manifest;
use crate::gc::GcOptions;
use crate::generations::{self, Change};
use crate::import::ImportOptions;
use crate::mirror::{self, MirrorOutcome};
use crate::mount::state::StateDir;
use crate::publish::{self, Desired, Outcome, PublishOptions};
use crate::scan;
use crate::store::Store;
use crate::verify::{self, Report};

/// Arguments of `dagfs push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The DAG folder to publish.
    dir: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// Message recorded with the generation.
    #[arg(short, long, default_value = "")]
    message: String,
    /// Publish the folder as this subtree of the store; other subtrees are left alone, so
    /// several teams can push to one store without conflicts.
    #[arg(long, value_name = "PATH")]
    prefix: Option<String>,
    /// When another publisher changed the same paths meanwhile, overwrite their change.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Do not update the plain mirror this time.
    #[arg(long, conflicts_with = "mirror")]
    no_mirror: bool,
    /// Update the plain mirror (start one if the store has none) [default: publish.mirror,
    /// else only if the store has a mirror].
    #[arg(long)]
    mirror: bool,
    /// Publish even if the folder is empty, removing every file (under the prefix).
    #[arg(long)]
    allow_empty: bool,
}

/// Arguments of `dagfs import`.
#[derive(Debug, Args)]
#[command(
    after_help = "The folder is only read; it is imported as one consistent state (listed, hashed, \
listed again; retried if it moved). Files keep their HDFS permission bits and modification times, \
so the generation equals a `dagfs push` of the same files with the same modes and mtimes \
(e.g. fetched with `hdfs dfs -get -p`). The store must not overlap the folder."
)]
pub struct ImportArgs {
    /// URL of the plain DAG folder to import, e.g. hdfs://nameservice/airflow/dags.
    source: String,
    #[command(flatten)]
    store: StoreArg,
    /// Message recorded with the generation [default: "import of SOURCE"].
    #[arg(short, long)]
    message: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dagfs verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 = identical, 1 = differences found (each named with its path), \
2 = could not check (store unreachable, permission denied, corrupt manifest, bad arguments)."
)]
pub struct VerifyArgs {
    /// Compare this folder with the generation (what the next push would publish).
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
    /// Check this store: manifests, objects (sizes; bytes with --deep), the mirror, orphans.
    /// Also the store --local compares with [default: store.url from the config].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Re-hash every object and mirror file instead of comparing sizes.
    #[arg(long)]
    deep: bool,
    /// Check against this generation instead of the head.
    #[arg(long, value_name = "G")]
    generation: Option<u64>,
    /// Check what the dagfs mount at this mountpoint serves: read every file through it, hash,
    /// compare with the generation it claims (or --generation), and whether that is the head.
    #[arg(long, value_name = "MOUNTPOINT")]
    mount: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dagfs log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Show at most this many generations.
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dagfs diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older generation.
    from: u64,
    /// The newer generation [default: the head].
    to: Option<u64>,
    #[command(flatten)]
    store: StoreArg,
    /// Show what changed inside each file: a unified diff of text files (3 lines of
    /// context), "binary files differ" otherwise, and mode changes.
    #[arg(short = 'p', long = "patch", conflicts_with = "json")]
    patch: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dagfs rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The generation whose content becomes the new head.
    generation: u64,
    #[command(flatten)]
    store: StoreArg,
    /// Message recorded with the new generation [default: "rollback to generation N"].
    #[arg(short, long)]
    message: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dagfs gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep the newest N generations.
    #[arg(long, value_name = "N")]
    keep: usize,
    /// Never delete unreferenced objects younger than this (protects publishes in flight).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repack a pack a kept generation uses once more than this percentage of its bytes is
    /// garbage (its live objects go into a new pack); 100 never repacks.
    #[arg(long, value_name = "PERCENT", default_value_t = crate::gc::DEFAULT_MAX_GARBAGE,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    max_garbage: u8,
    #[command(flatten)]
    store: StoreArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The store a command works on: `--store URL`, else `store.url` from the config.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// Store URL (hdfs://..., viewfs://..., file:///... or a path) [default: store.url from
    /// the config]. `--to` is the older spelling.
    #[arg(id = "store", long = "store", value_name = "URL", alias = "to")]
    url: Option<String>,
}

impl StoreArg {
    /// Opens the store.
    pub(super) async fn open(&self, config: &Config) -> Result<Box<dyn Store>> {
        open_store(self.url.as_deref(), config, "--store").await
    }
}

/// Opens the store named by a flag, or by `store.url`.
pub(super) async fn open_store(
    url: Option<&str>,
    config: &Config,
    flag: &str,
) -> Result<Box<dyn Store>> {
    let Some(url) = url.or(config.store.url.as_deref()) else {
        bail!("no store given: pass {flag} URL or set store.url in the config");
    };
    Ok(crate::store::open(url, &config.store.hdfs_options()).await?)
}

/// A spinner on stderr that appears only on a terminal and only once the work has taken
/// longer than a second.
fn progress() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    if std::io::stderr().is_terminal() {
        let shown = bar.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !shown.is_finished() {
                shown.set_draw_target(ProgressDrawTarget::stderr());
                shown.enable_steady_tick(Duration::from_millis(120));
            }
        });
    }
    bar
}

#[derive(Serialize)]
struct PublishSummary<'a> {
    #[serde(flatten)]
    outcome: &'a Outcome,
    mirror: Option<MirrorOutcome>,
}

/// `publish.mirror` overridden by `--mirror` / `--no-mirror`.
pub(super) fn mirror_setting(config: &Config, mirror: bool, no_mirror: bool) -> Option<bool> {
    match (mirror, no_mirror) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => config.publish.mirror,
    }
}

/// Prints what a publish did, and updates the mirror if wanted (`mirror::wanted`).
async fn finish_publish(
    store: &dyn Store,
    outcome: Outcome,
    mirror: Option<bool>,
    json: bool,
    bar: &ProgressBar,
) -> Result<()> {
    let mirror = if outcome.generation.is_some() && mirror::wanted(store, mirror).await {
        bar.set_message("updating the mirror");
        let index_dir = crate::objects::index_dir(store.url());
        match mirror::update(store, index_dir.as_deref()).await {
            Ok(result) => Some(result),
            Err(e) => {
                // The generation is committed; the mirror catches up on the next update.
                tracing::warn!(error = %e, "mirror not updated");
                None
            }
        }
    } else {
        None
    };
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string(&PublishSummary {
                outcome: &outcome,
                mirror
            })?
        );
        return Ok(());
    }
    let short = &outcome.tree_id.to_string()[..12];
    match (outcome.published, outcome.generation) {
        (true, Some(generation)) => println!(
            "published generation {generation} (tree {short}): {} added, {} changed, {} removed; {} objects, {} uploaded",
            outcome.added,
            outcome.changed,
            outcome.removed,
            outcome.objects_uploaded,
            indicatif::HumanBytes(outcome.bytes_uploaded)
        ),
        (_, Some(generation)) => println!("unchanged: generation {generation} (tree {short}) already has this content"),
        (_, None) => println!("unchanged: the folder is empty and the store has no generations"),
    }
    Ok(())
}

/// `dagfs push`.
pub async fn push(args: PushArgs, config: &Config) -> Result<()> {
    let store = args.store.open(config).await?;
    let bar = progress();
    bar.set_message(format!("scanning {}", args.dir.display()));
    let dir = args.dir.clone();
    let scan_options = config.scan.options();
    let files = tokio::task::spawn_blocking(move || scan::scan_cached(&dir, &scan_options))
        .await?
        .with_context(|| format!("cannot publish {}", args.dir.display()))?;
    bar.set_message(format!("publishing {} files", files.len()));
    let options = PublishOptions {
        message: args.message,
        prefix: args.prefix,
        force: args.force,
        concurrency: config.publish.concurrency,
        allow_empty: args.allow_empty,
        index_dir: crate::objects::index_dir(store.url()),
        ..PublishOptions::default()
    };
    let outcome = publish::publish(&*store, &Desired::from_scan(&files), &options).await?;
    finish_publish(
        &*store,
        outcome,
        mirror_setting(config, args.mirror, args.no_mirror),
        args.json,
        &bar,
    )
    .await
}

/// `dagfs import`.
pub async fn import(args: ImportArgs, config: &Config) -> Result<()> {
    let target_url = args.store.url.as_deref().or(config.store.url.as_deref());
    if let Some(target_url) = target_url {
        // Before opening anything: an overlap is a usage mistake, whatever the stores hold.
        crate::import::check_separate(&args.source, target_url)?;
    }
    let target = args.store.open(config).await?;
    let source: std::sync::Arc<dyn Store> =
        crate::store::open(&args.source, &config.store.hdfs_options())
            .await?
            .into();
    let bar = progress();
    bar.set_message(format!("importing {}", source.url()));
    let options = ImportOptions {
        scan: config.scan.options(),
        publish: PublishOptions {
            message: args
                .message
                .unwrap_or_else(|| format!("import of {}", args.source)),
            concurrency: config.publish.concurrency,
            index_dir: crate::objects::index_dir(target.url()),
            ..PublishOptions::default()
        },
        ..ImportOptions::default()
    };
    let outcome = crate::import::import(source, &*target, &options).await?;
    finish_publish(&*target, outcome, config.publish.mirror, args.json, &bar).await
}

/// `dagfs rollback`.
pub async fn rollback(args: RollbackArgs, config: &Config) -> Result<()> {
    let store = args.store.open(config).await?;
    let target = generations::load(&*store, args.generation).await?;
    let options = PublishOptions {
        message: args
            .message
            .unwrap_or_else(|| format!("rollback to generation {}", args.generation)),
        // A rollback means "make the head equal G", whatever happened since, even empty.
        force: true,
        allow_empty: true,
        concurrency: config.publish.concurrency,
        index_dir: crate::objects::index_dir(store.url()),
        ..PublishOptions::default()
    };
    let outcome = publish::publish(&*store, &Desired::from_manifest(&target), &options).await?;
    finish_publish(
        &*store,
        outcome,
        config.publish.mirror,
        args.json,
        &progress(),
    )
    .await
}

#[derive(Serialize)]
struct LogLine<'a> {
    generation: u64,
    parent: Option<u64>,
    created: &'a str,
    author: &'a str,
    message: &'a str,
    tree_id: String,
    files: usize,
    added: usize,
    changed: usize,
    removed: usize,
}

/// `dagfs log`.
pub async fn log(args: LogArgs, config: &Config) -> Result<()> {
    let store = args.store.open(config).await?;
    let numbers = generations::list(&*store).await?;
    if numbers.is_empty() && !args.json {
        println!(
            "no generations yet in {}; publish one with `dagfs push DIR --store URL`",
            store.url()
        );
        return Ok(());
    }
    let shown: Vec<u64> = numbers.iter().rev().take(args.limit).copied().collect();
    let mut manifests: Vec<Manifest> = Vec::with_capacity(shown.len());
    for &generation in &shown {
        manifests.push(generations::load(&*store, generation).await?);
    }
    let mut lines = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        // The parent is usually the next (older) one shown; load it when it is not.
        let parent_entries = match (m.parent, manifests.get(i + 1)) {
            (Some(p), Some(next)) if next.generation == p => next.entries.clone(),
            (Some(p), _) => match generations::load(&*store, p).await {
                Ok(parent) => parent.entries,
                Err(_) => Vec::new(), // collected by gc: count against an empty tree
            },
            (None, _) => Vec::new(),
        };
        let changes = generations::diff(&parent_entries, &m.entries);
        let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
        lines.push(LogLine {
            generation: m.generation,
            parent: m.parent,
            created: &m.created,
            author: &m.author,
            message: &m.message,
            tree_id: m.tree_id.to_string(),
            files: m.entries.len(),
            added: count(|c| matches!(c, Change::Added(_))),
            changed: count(|c| matches!(c, Change::Changed(..))),
            removed: count(|c| matches!(c, Change::Removed(_))),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&lines)?);
        return Ok(());
    }
    for l in &lines {
        println!(
            "{:>6}  {}  {:<24}  {:>5} files  +{} ~{} -{}  tree {}  {}",
            l.generation,
            l.created,
            l.author,
            l.files,
            l.added,
            l.changed,
            l.removed,
            &l.tree_id[..12],
            l.message
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct DiffLine<'a> {
    change: &'static str,
    path: &'a str,
}

/// `dagfs diff`.
pub async fn diff(args: DiffArgs, config: &Config) -> Result<()> {
    let store = args.store.open(config).await?;
    let to = generations::given_or_head(&*store, args.to).await?;
    let old = generations::load(&*store, args.from).await?;
    let new = generations::load(&*store, to).await?;
    let changes = generations::diff(&old.entries, &new.entries);
    let lines: Vec<DiffLine> = changes
        .iter()
        .map(|c| DiffLine {
            change: match c {
                Change::Added(_) => "added",
                Change::Changed(..) => "changed",
                Change::Removed(_) => "removed",
            },
            path: c.path(),
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string(&lines)?);
    } else if args.patch {
        let objects = crate::objects::Objects::new(None);
        let mut out = std::io::stdout().lock();
        for change in &changes {
            let (before, after) = match change {
                Change::Added(e) => (None, Some(e)),
                Change::Changed(a, b) => (Some(a), Some(b)),
                Change::Removed(e) => (Some(e), None),
            };
            let mut sides = [None, None];
            for (side, entry) in sides.iter_mut().zip([before, after]) {
                if let Some(entry) = entry {
                    *side = Some(read_checked(&objects, &*store, entry).await?);
                }
            }
            let [old_bytes, new_bytes] = sides;
            let patch = file_patch(
                change.path(),
                (args.from, before, old_bytes),
                (to, after, new_bytes),
            );
            std::io::Write::write_all(&mut out, patch.as_bytes())?;
        }
    } else {
        for line in &lines {
            let mark = match line.change {
                "added" => 'A',
                "changed" => 'M',
                _ => 'D',
            };
            println!("{mark} {}", line.path);
        }
    }
    Ok(())
}

/// The bytes of `entry`'s object, checked against its digest.
async fn read_checked(
    objects: &crate::objects::Objects,
    store: &dyn Store,
    entry: &crate::format::Entry,
) -> Result<bytes::Bytes> {
    let bytes = objects
        .read(store, &entry.blake3)
        .await
        .with_context(|| format!("cannot read {} ({})", entry.path, entry.blake3))?;
    if crate::format::Digest::of(&bytes) != entry.blake3 {
        bail!(
            "the object of {} ({}) is corrupt in {}; check the store with `dagfs verify --store {} --deep`",
            entry.path,
            entry.blake3,
            store.url(),
            store.url()
        );
    }
    Ok(bytes)
}

/// One file's part of `dagfs diff -p`, like git's: a header naming both sides, mode changes,
/// then a unified diff of the text or a line saying binary files differ. Each side is
/// (generation, entry, bytes); a missing entry is an added or removed file.
fn file_patch(
    path: &str,
    old: (u64, Option<&crate::format::Entry>, Option<bytes::Bytes>),
    new: (u64, Option<&crate::format::Entry>, Option<bytes::Bytes>),
) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "diff a/{path} b/{path} (generations {} and {})\n",
        old.0, new.0
    );
    let mode = |entry: Option<&crate::format::Entry>| entry.map(|e| e.mode & 0o7777);
    match (mode(old.1), mode(new.1)) {
        (None, Some(m)) => writeln!(out, "new file mode {m:o}"),
        (Some(m), None) => writeln!(out, "deleted file mode {m:o}"),
        (Some(a), Some(b)) if a != b => writeln!(out, "old mode {a:o}\nnew mode {b:o}"),
        _ => Ok(()),
    }
    .expect("writing to a String");
    let (a, b) = (old.2.unwrap_or_default(), new.2.unwrap_or_default());
    if a == b {
        return out;
    }
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .ok()
            .filter(|t| !t.contains('\0'))
            .map(str::to_owned)
    };
    match (text(&a), text(&b)) {
        (Some(a), Some(b)) => {
            let (from, to) = match (old.1, new.1) {
                (None, _) => ("/dev/null".to_string(), format!("b/{path}")),
                (_, None) => (format!("a/{path}"), "/dev/null".to_string()),
                _ => (format!("a/{path}"), format!("b/{path}")),
            };
            let diff = similar::TextDiff::from_lines(&a, &b);
            let unified = diff
                .unified_diff()
                .context_radius(3)
                .header(&from, &to)
                .to_string();
            out.push_str(&unified);
            if !unified.ends_with('\n') {
                out.push('\n');
            }
        }
        _ => {
            writeln!(out, "Binary files a/{path} and b/{path} differ").expect("writing to a String")
        }
    }
    out
}

/// `dagfs gc`.
pub async fn gc(args: GcArgs, config: &Config) -> Result<()> {
    let store = args.store.open(config).await?;
    let options = GcOptions {
        keep: args.keep,
        grace: args.grace,
        dry_run: args.dry_run,
        publish_wait: crate::gc::DEFAULT_PUBLISH_WAIT,
        max_garbage: args.max_garbage,
    };
    let outcome = crate::gc::gc(&*store, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        let verb = if args.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        println!(
            "{verb} {} generations, {} objects ({} packs, {} of them repacked, {}), {} staged files",
            outcome.generations.len(),
            outcome.objects,
            outcome.packs,
            outcome.repacked,
            indicatif::HumanBytes(outcome.bytes),
            outcome.staged
        );
        if outcome.deferred > 0 || !outcome.deferred_generations.is_empty() {
            println!(
                "kept {} generations and {} objects for now: publishes were still in progress; a later gc deletes them",
                outcome.deferred_generations.len(),
                outcome.deferred
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct VerifySummary<'a> {
    check: &'static str,
    #[serde(flatten)]
    report: &'a Report,
}

/// `dagfs verify`: returns 0 when everything checked is identical, 1 when something differs.
pub async fn verify(args: VerifyArgs, config: &Config) -> Result<u8> {
    if args.local.is_none() && args.store.is_none() && args.mount.is_none() {
        bail!("nothing to check: pass --local DIR, --store URL and/or --mount MOUNTPOINT");
    }
    let states = StateDir::default();
    // A mount knows its store: `verify --mount M` alone needs no URL.
    let mount_url = match (&args.mount, &args.store, &config.store.url) {
        (Some(mountpoint), None, None) => Some(states.read(mountpoint)?.store),
        _ => None,
    };
    let url = args.store.as_deref().or(mount_url.as_deref());
    let store = open_store(url, config, "--store").await?;
    let bar = progress();
    let mut reports = Vec::new();
    if let Some(dir) = &args.local {
        bar.set_message(format!("hashing {}", dir.display()));
        let report = verify::verify_local(&*store, dir, args.generation, &config.scan.options())
            .await
            .with_context(|| format!("cannot check {}", dir.display()))?;
        reports.push(("local", report));
    }
    if let Some(mountpoint) = &args.mount {
        bar.set_message(format!("hashing {}", mountpoint.display()));
        let report = verify::verify_mount(&*store, mountpoint, &states, args.generation)
            .await
            .with_context(|| format!("cannot check {}", mountpoint.display()))?;
        reports.push(("mount", report));
    }
    if args.store.is_some() {
        bar.set_message(format!("checking {}", store.url()));
        let report = verify::verify_store(&*store, args.generation, args.deep)
            .await
            .with_context(|| format!("cannot check {}", store.url()))?;
        reports.push(("store", report));
    }
    bar.finish_and_clear();
    let differences: usize = reports.iter().map(|(_, r)| r.findings.len()).sum();
    if args.json {
        let summaries: Vec<VerifySummary> = reports
            .iter()
            .map(|(check, report)| VerifySummary { check, report })
            .collect();
        println!("{}", serde_json::to_string(&summaries)?);
    } else {
        for (check, r) in &reports {
            let what = if *check == "store" {
                "objects"
            } else {
                "files"
            };
            println!(
                "{check}: generation {} (tree {}): {} {what} checked, {} hashed, {} differences{}",
                r.generation,
                &r.tree_id[..12],
                r.checked,
                indicatif::HumanBytes(r.bytes_hashed),
                r.findings.len(),
                if *check == "store" {
                    format!(", {} orphaned objects", r.orphans)
                } else {
                    String::new()
                }
            );
            for f in &r.findings {
                let kind = serde_json::to_value(f.kind)?;
                println!(
                    "  {:<15} {}  ({})",
                    kind.as_str().unwrap_or_default(),
                    f.path,
                    f.detail
                );
            }
        }
    }
    Ok(u8::from(differences > 0))
}
