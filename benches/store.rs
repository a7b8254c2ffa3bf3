//! Store overhead on the embedded backend: `LocalStore` against the same work done with plain
//! `std::fs` in the same run (baseline), for DAG-sized objects (10 KiB).
//!
//! - put: write to a staging file, fsync, rename into place (what an atomic put must do);
//! - read: read a whole file.
//!
//! Run: `cargo bench --bench store`. Results and ratios: BENCHMARKS.md.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dagfs::store::{LocalStore, Overwrite, Store};

const SIZE: usize = 10 * 1024;

fn baseline_put(dir: &Path, name: &str, data: &[u8]) {
    let staged = dir.join(format!(".staging-{name}"));
    let mut file = fs::File::create_new(&staged).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
    fs::rename(&staged, dir.join(name)).unwrap();
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = runtime
        .block_on(LocalStore::open(tmp.path().join("store")))
        .unwrap();
    let plain = tmp.path().join("plain");
    fs::create_dir_all(&plain).unwrap();
    let data = Bytes::from(vec![b'x'; SIZE]);
    let counter = AtomicU64::new(0);
    let next = || counter.fetch_add(1, Ordering::Relaxed).to_string();

    let mut put = c.benchmark_group("put_10KiB");
    put.throughput(Throughput::Bytes(SIZE as u64));
    put.bench_function(BenchmarkId::new("std_fs_baseline", SIZE), |b| {
        b.iter(|| baseline_put(&plain, &next(), &data))
    });
    put.bench_function(BenchmarkId::new("local_store", SIZE), |b| {
        b.iter(|| {
            runtime
                .block_on(store.put(&format!("o/{}", next()), data.clone(), Overwrite::Deny))
                .unwrap()
        })
    });
    put.finish();

    baseline_put(&plain, "r", &data);
    runtime
        .block_on(store.put("r", data.clone(), Overwrite::Allow))
        .unwrap();
    let mut read = c.benchmark_group("read_10KiB");
    read.throughput(Throughput::Bytes(SIZE as u64));
    read.bench_function(BenchmarkId::new("std_fs_baseline", SIZE), |b| {
        b.iter(|| fs::read(plain.join("r")).unwrap())
    });
    read.bench_function(BenchmarkId::new("local_store", SIZE), |b| {
        b.iter(|| runtime.block_on(store.read("r")).unwrap())
    });
    read.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
