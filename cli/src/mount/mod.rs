//! `cairn mount`: the snapshots as a read-only FUSE file system. `layout` names the folders
//! above the snapshots, `inodes` numbers entries, `trees` keeps decoded folders, `fs`
//! answers the kernel, and `mountpoint` checks and cleans up the folder mounted on. The
//! command itself is `commands/mount.rs`.

pub mod fs;
pub mod inodes;
pub mod layout;
pub mod mountpoint;
pub mod trees;
