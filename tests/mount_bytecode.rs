//! Python's bytecode cache against a served tree, for real: the FUSE mount and link mode
//! served by the real binary, modules imported by a real `python3` with a
//! `PYTHONPYCACHEPREFIX` (what OPERATIONS.md, the systemd unit and the scheduler image set).
//!
//! Python reuses cached bytecode when the source's mtime, in whole seconds, and its size match
//! what the bytecode was compiled from. A served path is the same for every generation, so a
//! module whose new version has the same size and the same mtime second as one Python compiled
//! before (an editor saving twice in a second, a build pinning mtimes, an author's clock
//! ahead) would run the old code under the new generation's name. The attack publishes
//! exactly such versions: changed in place, deleted and put back, and changed while the mount
//! was down, with the mtime pinned in the future.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::run;
use support::served::Bed;

/// Writes `dags/m.py` as `X = value` with mtime `mtime` (the content's size never changes).
fn write_module(bed: &Bed, value: u32, mtime: SystemTime) {
    let path = bed.dags().join("m.py");
    std::fs::write(&path, format!("X = {value}\n")).unwrap();
    support::set_mtime(&path, mtime);
}

/// `dagfs verify --mount` of a FUSE mount: the moved mtimes are what the generation says.
fn verify_mount(bed: &Bed, mode: &str) {
    if mode != "fuse" {
        return;
    }
    run(bed
        .dagfs(&["verify", "--mount"])
        .arg(bed.served())
        .args(["--store", &bed.store]));
}

/// What `import m` gives in a fresh `python3` with the bytecode cache under `root/pycache`.
fn imported(bed: &Bed, folder: &Path) -> String {
    let out = run(Command::new("python3")
        .arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv[1]); import m; print(m.X)")
        .arg(folder)
        .env("PYTHONPYCACHEPREFIX", bed.root.join("pycache"))
        .env_remove("PYTHONDONTWRITEBYTECODE"));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn served_modules_never_run_stale_bytecode(mode: &str, extra: &[&str]) {
    let bed = Bed::local();
    let folder = match mode {
        "link" => bed.served().join("current"),
        _ => {
            std::fs::create_dir(bed.served()).unwrap();
            bed.served()
        }
    };
    let pinned = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01
    let ahead = SystemTime::now() + Duration::from_secs(86_400);
    std::fs::write(bed.dags().join("other.py"), "").unwrap();
    let mut generation = 0;
    let mut publish = |bed: &Bed| {
        bed.push();
        generation += 1;
        generation
    };

    write_module(&bed, 1, pinned);
    let first = publish(&bed);
    let mut server = bed.serve(mode, extra);
    server.serving(first);
    assert_eq!(imported(&bed, &folder), "1");

    // Changed in place, same size, same mtime.
    write_module(&bed, 2, pinned);
    let changed = publish(&bed);
    server.serving(changed);
    assert_eq!(
        imported(&bed, &folder),
        "2",
        "{mode}: generation {changed} ran generation {first}'s bytecode"
    );
    verify_mount(&bed, mode);

    // Deleted, then put back with other content of the same size and mtime.
    std::fs::remove_file(bed.dags().join("m.py")).unwrap();
    server.serving(publish(&bed));
    write_module(&bed, 3, pinned);
    let back = publish(&bed);
    server.serving(back);
    assert_eq!(
        imported(&bed, &folder),
        "3",
        "{mode}: m.py put back in generation {back} ran the bytecode of the deleted one"
    );

    // An author's clock a day ahead; then a change while the mount is down.
    write_module(&bed, 4, ahead);
    let future = publish(&bed);
    server.serving(future);
    assert_eq!(imported(&bed, &folder), "4");
    server.kill();
    write_module(&bed, 5, ahead);
    let while_down = publish(&bed);
    let mut server = bed.serve(mode, extra);
    server.serving(while_down);
    assert_eq!(
        imported(&bed, &folder),
        "5",
        "{mode}: generation {while_down}, published while the mount was down, ran generation \
         {future}'s bytecode after the restart"
    );
    verify_mount(&bed, mode);
    // A file no generation changed shows its own mtime throughout, restarts included.
    let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(
        mtime(&folder.join("other.py")),
        mtime(&bed.dags().join("other.py")),
        "{mode}: an unchanged file's mtime moved"
    );
}

#[test]
fn the_fuse_mount_never_lets_python_run_stale_bytecode() {
    served_modules_never_run_stale_bytecode("fuse", &[]);
}

/// Files hard-linked from the cache: one inode per object, shared by every path holding it.
#[test]
fn link_mode_with_hard_links_never_lets_python_run_stale_bytecode() {
    served_modules_never_run_stale_bytecode("link", &["--set", "mount.link_files=hardlink"]);
}

/// Files copied: one inode per path and generation.
#[test]
fn link_mode_with_copies_never_lets_python_run_stale_bytecode() {
    served_modules_never_run_stale_bytecode("link", &["--set", "mount.link_files=copy"]);
}
