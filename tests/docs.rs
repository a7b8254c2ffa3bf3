//! The examples in the documentation are the files that ship. A code block placed right after
//! `<!-- shipped: PATH -->` must be exactly the file PATH of this repository; one after
//! `<!-- excerpt: PATH -->` must appear in PATH word for word. A block that looks like a
//! systemd unit must carry one of the two (a hand-written unit drifts from the packaged one),
//! and the failover table's DDL shown in the docs must be the one dagfs runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DOCS: [&str; 4] = [
    "README.md",
    "docs/OPERATIONS.md",
    "docs/DESIGN.md",
    "packaging/airflow/README.md",
];

/// One fenced code block: where it is, the marker line before it (if any), its content.
struct Block {
    at: String,
    marker: Option<String>,
    content: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blocks(doc: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(doc)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with("```") {
            i += 1;
            continue;
        }
        let start = i;
        let end = (start + 1..lines.len())
            .find(|&j| lines[j] == "```")
            .unwrap_or_else(|| panic!("{doc}:{}: unclosed code block", start + 1));
        let marker = start
            .checked_sub(1)
            .map(|j| lines[j].trim())
            .filter(|line| line.starts_with("<!--"))
            .map(str::to_string);
        let mut content = lines[start + 1..end].join("\n");
        content.push('\n');
        found.push(Block {
            at: format!("{doc}:{}", start + 1),
            marker,
            content,
        });
        i = end + 1;
    }
    found
}

/// `<!-- KIND: PATH -->` -> (KIND, PATH).
fn parse_marker(marker: &str) -> Option<(&str, &Path)> {
    let inner = marker.strip_prefix("<!--")?.strip_suffix("-->")?.trim();
    let (kind, path) = inner.split_once(':')?;
    Some((kind.trim(), Path::new(path.trim())))
}

fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_example_is_the_file_that_ships() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        for block in blocks(doc) {
            let looks_like_a_unit =
                block.content.contains("\n[Service]\n") || block.content.contains("ExecStart=");
            let Some((kind, path)) = block.marker.as_deref().and_then(parse_marker) else {
                if looks_like_a_unit {
                    problems.push(format!(
                        "{}: a systemd unit written by hand; show the packaged one with \
                         <!-- shipped: packaging/systemd/NAME -->",
                        block.at
                    ));
                }
                continue;
            };
            let shipped = std::fs::read_to_string(root().join(path))
                .unwrap_or_else(|e| panic!("{}: {}: {e}", block.at, path.display()));
            checked += 1;
            match kind {
                "shipped" if block.content != shipped => problems.push(format!(
                    "{}: differs from {}; copy the file again",
                    block.at,
                    path.display()
                )),
                "excerpt" if !shipped.contains(block.content.trim_end()) => {
                    problems.push(format!("{}: not found in {}", block.at, path.display()))
                }
                "shipped" | "excerpt" => {}
                other => problems.push(format!("{}: unknown marker {other:?}", block.at)),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked >= 2,
        "no marked example found: the markers were lost"
    );
}

/// The DDL the docs show for the failover table is the one the database coordinator runs.
#[test]
fn the_failover_table_in_the_docs_is_the_one_dagfs_creates() {
    let ddl = words(dagfs::election::LEASE_TABLE_DDL);
    let mut shown = 0;
    for doc in DOCS {
        for block in blocks(doc) {
            if let Some(at) = block
                .content
                .find("CREATE TABLE IF NOT EXISTS dagfs_failover_lease")
            {
                let statement = block.content[at..].split(';').next().unwrap();
                assert_eq!(words(statement).replace("( ", "("), ddl, "{}", block.at);
                shown += 1;
            }
        }
    }
    assert!(
        shown >= 2,
        "the DDL is shown in OPERATIONS.md and DESIGN.md"
    );
}

/// The metrics OPERATIONS.md names are the ones sync, mount and failover register, and the
/// other way round: a metric renamed, dropped or added in one place only fails here.
#[test]
fn operations_names_every_metric_the_daemons_export() {
    let mut registry = dagfs::metrics::Registry::default();
    dagfs::sync::SyncMetrics::register(&mut registry);
    dagfs::mount::metrics::MountMetrics::register(&mut registry);
    dagfs::failover::FailoverMetrics::register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    // `# HELP NAME ...`: counters without their `_total`, the way their samples add it.
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let operations = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    let documented: BTreeSet<String> = operations
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["dagfs_sync_", "dagfs_mount_", "dagfs_failover_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .filter(|w| *w != "dagfs_failover_lease") // the lease table, not a metric
        .map(|w| w.trim_end_matches("_total").to_string())
        .collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in OPERATIONS.md: {undocumented:?}"
    );
    // A labelled family (`errors{kind}`) is written only once it has a series.
    let unexported: Vec<_> = documented.difference(&exported).collect();
    assert_eq!(
        unexported,
        ["dagfs_mount_errors", "dagfs_sync_errors"],
        "documented but not registered"
    );
}
