//! The thin `fuser` adapter: each kernel request becomes one [`DagFs`] call and one reply.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request, SessionACL,
};

use crate::fs::{ContentSource, DagFs, FsError, Invalidator};
use crate::tree::{Attr, Ino};

const BLOCK_SIZE: u32 = 4096;

/// How to mount.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// Let users other than the mounting one read the mount (`allow_other`; needs
    /// `user_allow_other` in /etc/fuse.conf when not root).
    pub allow_other: bool,
    /// Kernel request worker threads.
    pub threads: usize,
    /// Name shown as the mount's source in /proc/mounts.
    pub fs_name: String,
}

struct Adapter<S> {
    fs: Arc<DagFs<S>>,
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr<S: ContentSource>(fs: &DagFs<S>, attr: &Attr) -> FileAttr {
    let options = fs.options();
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: if attr.is_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: attr.mode as u16,
        nlink: attr.nlink,
        uid: options.uid,
        gid: options.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

impl<S: ContentSource> Filesystem for Adapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Listings carry attributes (one round trip for `ls -l`), lookups in one directory
        // run in parallel. Both are optimisations: a kernel without them still works.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.fs.enter(parent.0);
        let view = self.fs.view();
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup(&view, parent.0, name) {
            Ok(attr) => reply.entry(&view.ttl(), &file_attr(&self.fs, &attr), Generation(0)),
            // A name missing from a directory: answer with node id 0, which the kernel caches
            // as a negative entry for the TTL (Python probes `__pycache__` and module suffixes
            // on every import); a switch that adds the name invalidates it.
            Err(FsError::NotFound) if self.fs.getattr(&view, parent.0).is_ok_and(|a| a.is_dir) => {
                let absent = Attr {
                    ino: 0,
                    is_dir: false,
                    mode: 0,
                    size: 0,
                    mtime: SystemTime::UNIX_EPOCH,
                    nlink: 0,
                };
                reply.entry(&view.ttl(), &file_attr(&self.fs, &absent), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let view = self.fs.view();
        match self.fs.getattr(&view, ino.0) {
            Ok(attr) => reply.attr(&view.ttl(), &file_attr(&self.fs, &attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // "Not implemented" makes the kernel stop sending opens (and releases) for files and
        // keep their pages cached: a file inode's bytes never change, reads go by inode.
        // Writes never get here: the mount is read-only.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written; "not implemented" stops the kernel sending flushes.
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Python asks every file it opens whether it is a terminal (TCGETS): it is not.
        reply.error(Errno::ENOTTY);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // No extended attributes (SELinux labels, ACLs...): "no such attribute".
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.fs.enter(ino.0);
        match self.fs.opendir(ino.0) {
            // The kernel may cache the listing; a switch invalidates changed directories.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(fh.0, offset) {
            Ok(listed) => {
                for entry in listed {
                    let kind = if entry.attr.is_dir {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    if reply.add(
                        INodeNo(entry.attr.ino),
                        entry.next_offset,
                        kind,
                        &entry.name,
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let view = self.fs.view();
        let ttl = view.ttl();
        match self.fs.readdir(fh.0, offset) {
            Ok(listed) => {
                for entry in listed {
                    let attr = file_attr(&self.fs, &entry.attr);
                    if reply.add(
                        INodeNo(entry.attr.ino),
                        entry.next_offset,
                        &entry.name,
                        &ttl,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                    // The kernel takes a reference to every entry but `.` and `..`.
                    if entry.name != "." && entry.name != ".." {
                        self.fs.listed_to_kernel(&view, fh.0, entry.attr.ino);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (bytes, inodes) = self.fs.usage();
        let blocks = bytes.div_ceil(u64::from(BLOCK_SIZE));
        // Full: nothing can be written; every block and inode is in use.
        reply.statfs(blocks, 0, 0, inodes, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }
}

/// Sends the filesystem's invalidations to the kernel.
pub struct KernelInvalidator(Notifier);

impl Invalidator for KernelInvalidator {
    fn inval_entry(&self, parent: Ino, name: &str) -> io::Result<()> {
        self.0.inval_entry(INodeNo(parent), OsStr::new(name))
    }

    fn inval_inode(&self, ino: Ino) -> io::Result<()> {
        self.0.inval_inode(INodeNo(ino), 0, 0)
    }
}

/// A live mount: ends when [`Mounted::unmount`] is called or someone unmounts it.
pub struct Mounted {
    session: fuser::BackgroundSession,
}

impl Mounted {
    /// The invalidator for switches of this mount.
    pub fn invalidator(&self) -> KernelInvalidator {
        KernelInvalidator(self.session.notifier())
    }

    /// Whether the kernel session ended (someone ran `fusermount3 -u`, or the kernel aborted
    /// the connection).
    pub fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts and waits for the request threads to end.
    pub fn unmount(self) -> io::Result<()> {
        self.session.umount_and_join()
    }
}

/// Mounts `fs` read-only at `mountpoint`, serving requests on background threads.
pub fn mount<S: ContentSource>(
    fs: Arc<DagFs<S>>,
    mountpoint: &Path,
    options: &FuseOptions,
) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(options.fs_name.clone()),
        MountOption::Subtype("dagfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(Adapter { fs }, mountpoint, &config)?;
    Ok(Mounted { session })
}
