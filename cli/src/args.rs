//! Command-line arguments. Parsing only: validation into library options happens in each
//! command's file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The exit codes, as the top-level help lists them (docs/user-guide.md has the same).
const EXIT_CODES: &str = "Exit codes:
  0    success
  1    failure (the message says what failed and why)
  2    invalid command line or option value, or configuration file error
  3    a snapshot was saved but is incomplete (unreadable entries, or WAL missing for a base backup)
  10   no repository at the location, or not a Cairn repository
  12   wrong password (every key slot was tried), or a key file of another tenant
  128  wal fetch only: cannot tell whether the archive holds the file (1 means it does not)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP); the repository is consistent";

use crate::examples;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating, encrypting backups for files, streams and PostgreSQL",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Same as --password-file, as restic's -p (in the pg commands -p is the PostgreSQL
    /// port, as in libpq's programs)
    #[arg(short = 'p', value_name = "FILE", help_heading = "Global options")]
    pub password_file_short: Option<PathBuf>,
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Read profiles from this configuration file only [default: /etc/cairn/config.toml
    /// and $XDG_CONFIG_HOME/cairn/config.toml]
    #[arg(long, env = "CAIRN_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Take unset options from this profile of the configuration file [default: its
    /// default_profile]
    #[arg(long, env = "CAIRN_PROFILE", global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Repository location: a local path, rest:http(s)://[USER:PASS@]HOST[:PORT]/ for a
    /// server (user and password also from CAIRN_REST_USERNAME / CAIRN_REST_PASSWORD), or
    /// s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] (credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY). Without one, a default local repository is used.
    #[arg(short = 'r', long = "repo", env = "CAIRN_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Read the repository location from the first line of this file (--repo wins when
    /// both are given)
    #[arg(
        long,
        env = "CAIRN_REPOSITORY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub repository_file: Option<std::path::PathBuf>,
    /// A PEM file of certificate authorities to trust for an https server, besides the
    /// system's (a private CA)
    #[arg(long, env = "CAIRN_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Tenant namespace inside the repository [default: the key file's tenant, or "default"]
    #[arg(long, env = "CAIRN_TENANT", global = true)]
    pub tenant: Option<String>,
    /// Read the password from the first line of this file
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use the first line of its output as the password
    #[arg(long, env = "CAIRN_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Seconds the password command may run before it is stopped and the command fails
    /// [default: 60]
    #[arg(long, env = "CAIRN_PASSWORD_COMMAND_TIMEOUT", global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub password_command_timeout: Option<u64>,
    /// Use the unwrapped master key in this file (must be mode 0600) instead of a password
    #[arg(long, env = "CAIRN_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Folder for the local cache [default: $XDG_CACHE_HOME/cairn]
    #[arg(long, env = "CAIRN_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Use a temporary cache instead of the persistent one
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and warnings
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Say what is decided (-v); also a line per file a backup is done with (-vv)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Time to live of this process's leases, in seconds [default: 1800]
    #[arg(long, env = "CAIRN_LEASE_TTL", global = true)]
    pub lease_ttl: Option<u64>,
    /// Argon2id cost for new passwords: MEMORY_KIB,ITERATIONS,PARALLELISM
    #[arg(long, env = "CAIRN_KDF_PARAMS", global = true, hide = true)]
    pub kdf_params: Option<String>,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository (or a new tenant in an existing one)
    #[command(after_help = examples::INIT)]
    Init(InitArgs),
    /// Manage tenants
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage a tenant's passwords
    #[command(subcommand)]
    Key(KeyCommand),
    /// Back up files, directories, standard input or a command's output
    #[command(after_help = examples::BACKUP)]
    Backup(BackupArgs),
    /// List snapshots
    #[command(after_help = examples::SNAPSHOTS)]
    Snapshots(SnapshotsArgs),
    /// List the entries of a snapshot
    #[command(after_help = examples::LS)]
    Ls(LsArgs),
    /// Mount the snapshots as a read-only file system (FUSE), until unmounted
    #[command(after_help = examples::MOUNT)]
    Mount(MountArgs),
    /// Find files by name in snapshots
    #[command(after_help = examples::FIND)]
    Find(FindArgs),
    /// Show what changed between two snapshots
    #[command(after_help = examples::DIFF)]
    Diff(DiffArgs),
    /// Write a file to stdout, or a directory as a tar stream or a ZIP archive
    #[command(after_help = examples::DUMP)]
    Dump(DumpArgs),
    /// Restore a snapshot to a folder
    #[command(after_help = examples::RESTORE)]
    Restore(RestoreArgs),
    /// Repository size, deduplication and compression
    #[command(after_help = examples::STATS)]
    Stats(StatsArgs),
    /// An overview per profile (or of the repository given): newest snapshot of each kind,
    /// size, health. Exits 1 when any repository cannot be read or has a problem
    Info(InfoArgs),
    /// Print a decoded repository object as JSON
    Cat(CatArgs),
    /// Remove snapshots by id or by a retention policy
    #[command(after_help = examples::FORGET)]
    Forget(ForgetArgs),
    /// Free the space of data no snapshot uses (runs alongside backups)
    #[command(after_help = examples::PRUNE)]
    Prune(PruneArgs),
    /// Verify the repository's structure and, optionally, every byte of its data
    #[command(after_help = examples::CHECK)]
    Check(CheckArgs),
    /// Repair a damaged repository
    #[command(subcommand)]
    Repair(RepairCommand),
    /// List the leases of running backups and prunes
    Leases(LeasesArgs),
    /// Add, remove or set snapshot tags
    #[command(after_help = examples::TAG)]
    Tag(TagArgs),
    /// Protect snapshots from forget (legal hold: adds the tag `hold`)
    Protect(SnapshotIds),
    /// Remove the protection of snapshots
    Unprotect(SnapshotIds),
    /// Archive and fetch PostgreSQL WAL (archive_command, restore_command)
    #[command(subcommand)]
    Wal(WalCommand),
    /// PostgreSQL base backups, point-in-time restores and drills
    #[command(subcommand)]
    Pg(crate::pg_args::PgCommand),
    /// Print the version of cairn, of the repository format it writes, and the build's
    /// target
    Version,
    /// List the local caches (one per repository tenant), or remove the ones not used for a
    /// while
    Cache {
        /// Remove caches not used for --max-age days
        #[arg(long)]
        cleanup: bool,
        /// Days without use after which a cache counts as old
        #[arg(long, default_value_t = 30, value_name = "DAYS")]
        max_age: u64,
    },
    /// Write shell completions to standard output, or man pages into a folder
    Generate {
        /// The shell to complete for
        #[arg(
            long,
            value_enum,
            value_name = "SHELL",
            required_unless_present = "man"
        )]
        completions: Option<clap_complete::Shell>,
        /// Write a man page for cairn and each of its commands into this folder
        #[arg(long, value_name = "DIR", conflicts_with = "completions")]
        man: Option<std::path::PathBuf>,
    },
    /// List the objects of a type by name: packs, index, snapshots, keys, locks, or the
    /// blobs the index lists (id, kind, pack)
    List {
        #[arg(value_enum)]
        kind: ListKind,
    },
}

#[derive(Subcommand, Debug)]
pub enum WalCommand {
    /// Archive one WAL file: archive_command = 'cairn wal push %p'. Exits 0 only when the
    /// file is durable in the repository (or was archived before with the same bytes), 1 on
    /// any failure
    Push {
        /// The file PostgreSQL asks to archive (%p)
        path: std::path::PathBuf,
        /// Also archive, in the same commit, up to this many further segments that
        /// PostgreSQL has marked ready (archive_status/*.ready beside %p), at most 256 MiB;
        /// PostgreSQL's later calls for them then return at once. 0 turns this off
        #[arg(long, default_value_t = 8, value_name = "N")]
        ahead: usize,
        /// Folder for the records of files pushed ahead [default: a folder per repository
        /// and tenant under the cache folder]
        #[arg(long, env = "CAIRN_WAL_SPOOL", value_name = "DIR")]
        spool: Option<std::path::PathBuf>,
    },
    /// Fetch one WAL file: restore_command = 'cairn wal fetch %f %p'. Exits 0 when the file
    /// was written, 1 when the archive holds no such file, and 128 when it cannot tell
    /// (1 in standby mode, which retries)
    Fetch {
        /// The WAL file name PostgreSQL asks for (%f)
        name: String,
        /// Where to write it (%p)
        dest: std::path::PathBuf,
        /// After a segment, fetch up to this many following segments of its timeline in a
        /// background process into the spool, at most 256 MiB; 0 turns this off
        #[arg(long, default_value_t = 4, value_name = "K")]
        prefetch: usize,
        /// Folder for prefetched files [default: a folder per repository and tenant under
        /// the cache folder]
        #[arg(long, env = "CAIRN_WAL_SPOOL", value_name = "DIR")]
        spool: Option<std::path::PathBuf>,
    },
    /// The background prefetcher `wal fetch` starts (not for direct use)
    #[command(hide = true)]
    Prefetch {
        /// The spool to fill
        #[arg(long, value_name = "DIR")]
        spool: std::path::PathBuf,
        /// Segments to keep ahead of the last one asked for
        #[arg(long, value_name = "K")]
        files: usize,
    },
    /// List the archived WAL per timeline: runs of consecutive segments, gaps, history
    /// files with their switchpoints, .partial and .backup files
    List {
        /// Only this timeline
        #[arg(long)]
        timeline: Option<u32>,
    },
    /// The same as `cairn pg status` (exit 1 when the archive cannot do its job)
    Verify,
    /// Merge the tenant's wal snapshots into one. Pushes do this by themselves once there
    /// are more than 64, unless their credential may not delete (an append-only user on a
    /// server): run this then from time to time with a credential that may
    Merge,
}

#[derive(Args, Debug)]
pub struct PruneOpts {
    /// Unused space tolerated in kept packs, e.g. 5% or 0.05
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
    /// Read at most this much for repacking in one run, e.g. 10G
    #[arg(long)]
    pub max_repack_size: Option<String>,
    /// Remove snapshots that cannot be read instead of refusing to run (the data only they
    /// use is then freed)
    #[arg(long)]
    pub drop_unreadable: bool,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to forget (besides those the policy removes)
    pub snapshots: Vec<String>,
    #[arg(long)]
    pub keep_last: Option<usize>,
    #[arg(long)]
    pub keep_hourly: Option<usize>,
    #[arg(long)]
    pub keep_daily: Option<usize>,
    #[arg(long)]
    pub keep_weekly: Option<usize>,
    #[arg(long)]
    pub keep_monthly: Option<usize>,
    #[arg(long)]
    pub keep_yearly: Option<usize>,
    /// Keep everything this recent (relative to the newest snapshot), e.g. 7d, 2w, 1y6mo
    #[arg(long)]
    pub keep_within: Option<String>,
    #[arg(long)]
    pub keep_within_hourly: Option<String>,
    #[arg(long)]
    pub keep_within_daily: Option<String>,
    #[arg(long)]
    pub keep_within_weekly: Option<String>,
    #[arg(long)]
    pub keep_within_monthly: Option<String>,
    #[arg(long)]
    pub keep_within_yearly: Option<String>,
    /// PostgreSQL: keep the base backups and WAL needed to restore to any moment this
    /// recent (relative to the newest base backup or WAL snapshot), e.g. 7d; drop other WAL
    #[arg(long)]
    pub keep_within_pitr: Option<String>,
    /// Keep snapshots with this tag
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Apply the policy per group of these fields: host, paths, tags (empty for one group)
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    /// Judge snapshots by when the storage received them (a server's or S3's clock, a
    /// local file's modification time) instead of the time they claim, which a client that
    /// writes snapshots can set to anything
    #[arg(long)]
    pub by_received_time: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Show what would be kept and removed, and why; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneOpts,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be deleted and repacked; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub opts: PruneOpts,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and authenticate every blob of every pack
    #[arg(long)]
    pub read_data: bool,
    /// Read only part of the data: n/m (e.g. 1/5), a percentage (10%) or a size (2G)
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers
    Index,
    /// Rewrite snapshots that reference missing data (as new snapshots tagged `repaired`);
    /// report snapshots that cannot be read at all
    Snapshots {
        /// Remove the damaged originals, and snapshots that cannot be read
        #[arg(long)]
        forget: bool,
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
}

#[derive(Args, Debug)]
pub struct LeasesArgs {
    /// Also show leases that have ended but were not removed (crashed holders)
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to edit
    #[arg(required = true)]
    pub snapshots: Vec<String>,
    #[arg(long)]
    pub add: Vec<String>,
    #[arg(long)]
    pub remove: Vec<String>,
    /// Replace all tags (repeat for several; `--set ''` clears them)
    #[arg(long)]
    pub set: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SnapshotIds {
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Chunk size bounds MIN,AVG,MAX in bytes [default: 16384,65536,1048576]
    #[arg(long)]
    pub chunker: Option<String>,
    /// Default compression of the repository
    #[arg(long, default_value = "auto")]
    pub compression: String,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Add a tenant with its own master key and a password or key file of its own (never the
    /// current tenant's password)
    Add {
        name: String,
        /// Read the new tenant's password from this file
        #[arg(long, conflicts_with = "new_key_file")]
        new_password_file: Option<PathBuf>,
        /// Give the new tenant a new key, written to this file (which must not exist)
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// List the tenants of the repository
    List,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a password
    Add {
        /// Read the new password from this file
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// List the key slots (passwords)
    List,
    /// Remove a key slot by id prefix (the last one cannot be removed)
    Remove { id: String },
    /// Change the password used to open the repository
    Passwd {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    pub paths: Vec<PathBuf>,
    /// Read and compress everything and say what would be added, storing nothing (no
    /// snapshot, pack, lease or files-cache entry; works on a read-only repository)
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Back up standard input
    #[arg(long, conflicts_with_all = ["stdin_from_command"])]
    pub stdin: bool,
    /// File name of standard input or command output in the snapshot
    #[arg(long)]
    pub stdin_filename: Option<String>,
    /// Run the command after `--` and back up its standard output; the snapshot is saved only
    /// if it exits 0
    #[arg(long)]
    pub stdin_from_command: bool,
    /// Leave out matching paths (a pattern with '/' matches the absolute path, one without
    /// matches names at any depth)
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Leave out directories containing an entry of this name
    #[arg(long)]
    pub exclude_if_present: Vec<String>,
    /// Like --exclude, ignoring case (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Leave out folders holding a CACHEDIR.TAG file (the Cache Directory Tagging
    /// Specification's, with its signature)
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out files larger than this, e.g. 2G, 500M, 4KiB or a byte count
    #[arg(long, value_name = "SIZE")]
    pub exclude_larger_than: Option<String>,
    /// Also back up the paths listed in this file, one per line (empty lines and lines
    /// starting with # are skipped); repeatable
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Also back up the paths in this file, separated by NUL bytes and taken verbatim (as
    /// `find -print0` writes them); repeatable
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Do not cross filesystem boundaries
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Tag the snapshot (repeat, or separate with commas)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name recorded in the snapshot
    #[arg(long, short = 'H')]
    pub host: Option<String>,
    /// Time recorded in the snapshot ("YYYY-MM-DD HH:MM:SS" local time, or RFC 3339)
    #[arg(long)]
    pub time: Option<String>,
    /// auto, off, fastest, default, max, or a zstd level 1-22
    #[arg(long)]
    pub compression: Option<String>,
    /// Read every file even when the files cache (or the parent snapshot) says it is
    /// unchanged
    #[arg(long)]
    pub force: bool,
    /// The parent snapshot (an id or `latest`): recorded as this snapshot's parent, and its
    /// files taken as unchanged, without reading them, where the local files cache does not
    /// know them but inode, size, mtime and ctime match [default: the latest snapshot of
    /// the same host and paths]
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// The command and its arguments (with --stdin-from-command)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only snapshots of this host
    #[arg(long, short = 'H')]
    pub host: Vec<String>,
    /// Only snapshots with this tag
    #[arg(long)]
    pub tag: Vec<String>,
    /// Only snapshots that include this path
    #[arg(long)]
    pub path: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Only the newest N snapshots of each host and set of paths
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
    /// Fewer columns: id, time, host and paths
    #[arg(long, short = 'c')]
    pub compact: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id prefix or `latest` (narrowed by --host, --tag, --path), optionally with
    /// `:SUBPATH`
    pub snapshot: String,
    /// Directory or file inside the snapshot
    #[arg(value_name = "PATH")]
    pub inside: Option<String>,
    /// Show type, mode, size and time
    #[arg(short, long)]
    pub long: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty folder to mount on
    pub mountpoint: std::path::PathBuf,
    /// Let other users use the mount too (each is held to the files' recorded permissions)
    #[arg(long)]
    pub allow_other: bool,
    /// Seconds after which the snapshot list is read again when a folder is used
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub refresh: u64,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Glob matched against names (or against whole paths when it contains '/')
    pub pattern: String,
    /// Search only these snapshots
    #[arg(long = "snapshot", short = 's')]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub first: String,
    pub second: String,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id prefix or `latest` (narrowed by --host, --tag, --path), optionally with
    /// `:PATH` instead of the second argument
    pub snapshot: String,
    /// Path of a file or directory inside the snapshot (`/` for all)
    #[arg(value_name = "PATH")]
    pub inside: Option<String>,
    /// The archive a directory is written as
    #[arg(long, value_enum, default_value_t = ArchiveFormat::Tar)]
    pub archive: ArchiveFormat,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A tar stream (GNU format), which `tar -x` reads from a pipe
    Tar,
    /// A ZIP archive (deflated files, Unix modes and times), written as a stream
    Zip,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OverwriteArg {
    Never,
    IfChanged,
    Always,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id prefix or `latest` (narrowed by --host, --tag, --path)
    pub snapshot: String,
    /// Folder to restore into
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Restore only matching paths
    #[arg(long, short = 'i')]
    pub include: Vec<String>,
    /// Leave out matching paths
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Read restored files back and check them against the snapshot
    #[arg(long)]
    pub verify: bool,
    /// What to do with existing entries that differ from the snapshot
    #[arg(long, value_enum, default_value = "never")]
    pub overwrite: OverwriteArg,
    /// Delete entries in restored folders that are not in the snapshot
    #[arg(long)]
    pub delete: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct StatsArgs {}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The profiles to show, each in a process of its own (filled in when no profile and no
    /// repository is given)
    #[arg(skip)]
    pub profiles: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config, snapshot, tree, index, key or pack
    pub kind: String,
    /// Object id (snapshot: id prefix or `latest`; tree: blob id or snapshot)
    pub id: Option<String>,
}

/// What `cairn list` lists.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Packs,
    Index,
    Snapshots,
    Keys,
    Locks,
    Blobs,
}

#[cfg(test)]
mod tests {
    /// Every subcommand's options are consistent (no short or long name used twice, every
    /// reference valid): clap checks this only for the commands a run builds.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
