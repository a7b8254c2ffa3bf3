//! `dagfs run`: the one-machine trial. Syncs a DAG folder into a store and mounts the store,
//! in one process: the embedded local store by default, HDFS when given a URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::sync::watch;

use super::commands::open_store;
use crate::config::Config;
use crate::metrics::{Health, Registry};
use crate::mount::{self, metrics::MountMetrics, state::StateDir, MountOptions};
use crate::store::Store;
use crate::sync::{self, SyncMetrics};

/// Arguments of `dagfs run`.
#[derive(Debug, Args)]
#[command(
    after_help = "Creates the DAG folder (with an example DAG) and the mountpoint if they \
do not exist. Ctrl-C unmounts and exits. For production, run `dagfs sync` on authoring hosts \
and `dagfs mount` on scheduler hosts instead (docs/OPERATIONS.md)."
)]
pub struct RunArgs {
    /// The DAG folder to publish.
    #[arg(long, value_name = "DIR", default_value = "dags")]
    dags: PathBuf,
    /// Where to mount the published generations.
    #[arg(long, value_name = "DIR", default_value = "mnt")]
    mount: PathBuf,
    /// Store URL, e.g. hdfs://namenode:8020/airflow/dagfs [default: a local store in
    /// .dagfs/store next to the DAG folder].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

const EXAMPLE_DAG: &str = r#""""An example DAG written by `dagfs run`: edit it and watch the mount."""
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.bash import BashOperator

with DAG("dagfs_example", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), schedule=None):
    BashOperator(task_id="hello", bash_command="echo hello from dagfs")
"#;

fn prepare(dags: &Path, mountpoint: &Path) -> Result<()> {
    if !dags.exists() {
        std::fs::create_dir_all(dags)
            .with_context(|| format!("cannot create the DAG folder {}", dags.display()))?;
        let example = dags.join("example_dag.py");
        std::fs::write(&example, EXAMPLE_DAG)
            .with_context(|| format!("cannot write {}", example.display()))?;
        eprintln!("dagfs run: created {} with an example DAG", dags.display());
    } else if !dags.is_dir() {
        bail!("{} is not a directory; pass --dags DIR", dags.display());
    }
    if !mountpoint.exists() {
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("cannot create the mountpoint {}", mountpoint.display()))?;
    }
    Ok(())
}

/// `dagfs run --dags DIR --mount DIR [--store URL]`.
pub async fn run(args: RunArgs, config: &Config) -> Result<()> {
    let shutdown = super::shutdown_signal()?;
    prepare(&args.dags, &args.mount)?;
    let dags = std::fs::canonicalize(&args.dags)?;
    let workdir = dags.parent().unwrap_or(&dags).join(".dagfs");
    let url = match args.store.or_else(|| config.store.url.clone()) {
        Some(url) => url,
        None => workdir.join("store").display().to_string(),
    };
    let sync_store = open_store(Some(&url), config, "--store").await?;
    let mount_store: Arc<dyn Store> = Arc::from(open_store(Some(&url), config, "--store").await?);
    let mountpoint = std::path::absolute(&args.mount)?;
    eprintln!(
        "dagfs run: publishing {} to {} as generations, serving them at {}",
        dags.display(),
        sync_store.url(),
        mountpoint.display()
    );
    eprintln!(
        "dagfs run: edit a file in {} and it shows up in {} within a second; Ctrl-C stops",
        dags.display(),
        mountpoint.display()
    );
    eprintln!("dagfs run: {}", history_hint(sync_store.url()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut sync_options = super::sync::sync_options(dags.clone(), "dagfs run".into(), config);
    sync_options.publish.index_dir = crate::objects::index_dir(sync_store.url());
    let sync_done = sync::run(
        sync_store,
        sync_options,
        SyncMetrics::register(&mut Registry::default()),
        Health::default(),
        stopped(stop_rx.clone()),
    );
    let mut mount_config = config.mount.clone();
    // A trial wants edits visible at once; a listing of the local store is cheap.
    mount_config.poll = mount_config.poll.min(Duration::from_millis(250));
    let options = MountOptions {
        mountpoint,
        cache_dir: config
            .mount
            .cache_dir
            .clone()
            .unwrap_or_else(|| workdir.join("cache")),
        pin: None,
        allow_other: false,
        config: mount_config,
        state_dir: StateDir::default(),
        metrics: MountMetrics::register(&mut Registry::default()),
        health: Health::default(),
    };
    let mount_done = mount::run(mount_store, options, stopped(stop_rx));
    // Whichever ends first (Ctrl-C, an error, an unmount from outside) stops the other.
    let stop = &stop_tx;
    let (synced, mounted, ()) = tokio::join!(
        async move {
            let result = sync_done.await;
            let _ = stop.send(true);
            result
        },
        async move {
            let result = mount_done.await;
            let _ = stop.send(true);
            result
        },
        async move {
            tokio::select! {
                _ = shutdown => { let _ = stop.send(true); }
                _ = stopped(stop.subscribe()) => {}
            }
        },
    );
    mounted?;
    synced?;
    eprintln!("dagfs run: stopped; {}", history_hint(&url));
    Ok(())
}

/// How to look at the generations a trial made (printed when it starts and stops).
fn history_hint(url: &str) -> String {
    format!(
        "the generations it published: `dagfs log --store {url}`; what generation N changed: \
         `dagfs diff -p --store {url} N-1 N`; back to generation N: `dagfs rollback --store {url} N`"
    )
}
