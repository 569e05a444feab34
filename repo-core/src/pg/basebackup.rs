//! `cairn pg basebackup`: a consistent base backup, stored as a snapshot of kind
//! `pg-basebackup` (docs/design.md, section 16).
//!
//! `pg_basebackup -D - -Ft -X none` does the PostgreSQL side (the backup start and stop, over
//! the replication protocol, with the usual libpq settings) and streams the data directory
//! as tar; the stream is stored as it arrives (see `tar_tree`), so nothing is staged on
//! disk. With `-X none` the WAL comes from the archive: `pg_basebackup` returns only once
//! PostgreSQL has archived the last segment the backup needs. The backup is then committed,
//! marked incomplete unless every segment from its start to its stop is in this tenant's
//! archive; an incomplete base backup is never chosen for a restore.
//!
//! Data files change in place a page at a time, so their content is cut at fixed offsets
//! ([`PAGE_CUT`], a multiple of PostgreSQL's 8 KiB page): a changed page costs one such
//! piece in the next backup, and unchanged pieces deduplicate against the previous one.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use super::names::{Lsn, Segment, WalFile};
use super::page_dictionary::{self, PageSampler};
use super::stall::{Watchdog, Watched};
use super::tar_stream::TarStream;
use super::tar_tree::{store_tar, Captured};
use super::wal::Catalog;
use crate::archiver::{Archiver, BackupOptions, BackupResult, SnapshotMeta};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{PgInfo, SnapshotKind};
use crate::progress::Progress;
use crate::repository::Repository;

/// The size of the fixed pieces data files are cut into (see the module's comment and
/// docs/performance.md for the measurements that chose it).
pub const PAGE_CUT: usize = 8 * 1024;
/// PostgreSQL's default WAL segment size, assumed until an archived segment says otherwise.
const DEFAULT_SEG_SIZE: u32 = 16 << 20;

/// How to run `pg_basebackup`.
#[derive(Debug, Clone, Default)]
pub struct BasebackupOptions {
    /// The `pg_basebackup` program (found on the PATH when `None`).
    pub program: Option<PathBuf>,
    /// Connection arguments passed through (`-h`, `-p`, `-U`, `-d`); libpq's environment
    /// (`PGHOST`, `PGPORT`, ...) applies too.
    pub connection: Vec<String>,
    /// Ask for an immediate checkpoint rather than a spread one.
    pub fast_checkpoint: bool,
    /// Give up when `pg_basebackup` sends nothing for this long once data has started
    /// (PostgreSQL waiting for a broken archive_command, see `stall.rs`); `None` waits.
    pub stall_timeout: Option<std::time::Duration>,
}

/// A base backup saved; `missing_wal` lists the segments whose absence made it incomplete.
#[derive(Debug)]
pub struct Basebackup {
    pub result: BackupResult,
    pub missing_wal: Vec<String>,
}

/// Takes a base backup through `pg_basebackup` and saves it. The snapshot is written only
/// when `pg_basebackup` succeeded; it is marked incomplete when the archive lacks WAL it
/// needs (see [`Basebackup::missing_wal`]).
pub fn basebackup(
    repo: &Repository,
    opts: &BasebackupOptions,
    backup: &BackupOptions,
    progress: &dyn Progress,
) -> Result<Basebackup> {
    let started = Instant::now();
    let start_clock = jiff::Timestamp::now();
    let program = opts
        .program
        .clone()
        .unwrap_or_else(|| PathBuf::from("pg_basebackup"));
    let mut argv: Vec<String> = vec![
        program.display().to_string(),
        "-D".into(),
        "-".into(),
        "-F".into(),
        "tar".into(),
        "-X".into(),
        "none".into(),
        "--no-password".into(),
        "-c".into(),
        if opts.fast_checkpoint {
            "fast"
        } else {
            "spread"
        }
        .into(),
        "-l".into(),
        "cairn base backup".into(),
    ];
    argv.extend(opts.connection.iter().cloned());
    let shown = argv.join(" ");

    let mut a = Archiver::new(repo, backup, progress)?;
    let in_use = page_dictionary::current(repo)?;
    a.writer_mut()
        .set_dictionary(in_use.as_ref().map(|u| u.dict.clone()));
    let mut sampler = PageSampler::default();
    let chunker = cairn_chunker::Chunker::fixed(PAGE_CUT)
        .map_err(|e| Error::invalid(format!("the page cut: {e}")))?;
    let mut child = Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Command,
                format!("cannot start `{}` (is PostgreSQL's client installed? --pg-bin names its folder)", program.display()),
                e,
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::new(ErrorKind::Command, "no stdout pipe"))?;
    let last = Arc::new(AtomicU64::new(0));
    let dog = Watchdog::start(child.id(), started, last.clone(), opts.stall_timeout);
    let mut tar = TarStream::new(Watched::new(stdout, started, last));
    let stored = store_tar(&mut a, &mut tar, &chunker, &mut sampler);
    if stored.is_err() {
        // Stop pg_basebackup rather than leave it blocked on a full pipe.
        let _ = child.kill();
    } else {
        // Whatever follows the end-of-archive blocks is drained, so pg_basebackup can exit.
        let mut rest = tar.into_inner().into_inner();
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
    }
    let stalled = dog.finish();
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for `{shown}`"), e))?;
    if stalled {
        return Err(Error::new(
            ErrorKind::Command,
            format!(
                "`{shown}` sent nothing for {} s and was stopped: PostgreSQL ends a base backup only once archive_command has archived its last WAL segment \
                 (see pg_stat_archiver and the server's log); no base backup was saved",
                opts.stall_timeout.map(|d| d.as_secs()).unwrap_or(0)
            ),
        ));
    }
    let (root, captured) = stored?;
    if !status.success() {
        return Err(Error::new(
            ErrorKind::Command,
            format!("`{shown}` failed ({status}); no base backup was saved"),
        ));
    }
    let stop_clock = jiff::Timestamp::now();

    let facts = Facts::read(&captured)?;
    let catalog = Catalog::load(repo)?;
    if let Some(cluster) = catalog.system_id()? {
        if cluster != facts.system_id {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "this cluster (system identifier {}) is not the one whose WAL this tenant archives ({cluster}); \
                     a cluster needs a tenant of its own. No base backup was saved",
                    facts.system_id
                ),
            ));
        }
    }
    let seg_size = segment_size(repo, &catalog, &facts)?;
    let first = facts.start.segment(facts.timeline, seg_size)?;
    let last = facts.stop.segment(facts.timeline, seg_size)?;
    let mut missing = Vec::new();
    for number in first.number..=last.number {
        let seg = Segment::from_number(facts.timeline, number, seg_size)?;
        let file = WalFile::Segment(seg.name(seg_size));
        if catalog.find(repo, &file)?.is_none() {
            missing.push(file.name());
        }
    }
    let stop_time =
        backup_stop_time(repo, &catalog, &first, facts.start, seg_size).unwrap_or(stop_clock);
    let dictionary = page_dictionary::after_backup(repo, a.writer_mut(), in_use, &sampler)?;
    let pg = PgInfo {
        system_identifier: facts.system_id.to_string(),
        timeline: facts.timeline,
        start_lsn: Some(facts.start.to_string()),
        stop_lsn: Some(facts.stop.to_string()),
        wal_first: Some(first.name(seg_size)),
        wal_last: Some(last.name(seg_size)),
        start_time: Some(facts.start_time.unwrap_or(start_clock).to_string()),
        stop_time: Some(stop_time.to_string()),
        dictionary: dictionary.map(|d| d.0),
        dictionary_basis: dictionary.map(|d| d.1),
    };
    let meta = SnapshotMeta {
        kind: SnapshotKind::PgBasebackup,
        paths: vec!["/pgdata".into()],
        command: argv,
        pg: Some(pg),
        incomplete: !missing.is_empty(),
    };
    let result = a.commit(meta, root, started)?;
    Ok(Basebackup {
        result,
        missing_wal: missing,
    })
}

/// What a base backup's own files say of it.
#[derive(Debug)]
struct Facts {
    system_id: u64,
    timeline: u32,
    start: Lsn,
    stop: Lsn,
    start_time: Option<jiff::Timestamp>,
}

impl Facts {
    fn read(c: &Captured) -> Result<Facts> {
        let missing = |what: &str| {
            Error::new(
                ErrorKind::Command,
                format!("pg_basebackup's output has no {what}; no base backup was saved"),
            )
        };
        let control = c
            .pg_control
            .as_deref()
            .ok_or_else(|| missing("global/pg_control"))?;
        // The control file starts with the system identifier (a little-endian u64 on every
        // platform Cairn runs on).
        let system_id = control
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| missing("complete global/pg_control"))?;
        let label = c
            .backup_label
            .as_deref()
            .ok_or_else(|| missing("backup_label"))?;
        let label = String::from_utf8_lossy(label);
        let field = |key: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .ok_or_else(|| missing(&format!("{key} line in backup_label")))
        };
        let start_text = field("START WAL LOCATION:")?;
        let start = Lsn::parse(start_text.split_whitespace().next().unwrap_or(""))?;
        let timeline: u32 = field("START TIMELINE:")?
            .parse()
            .map_err(|_| missing("valid START TIMELINE"))?;
        let start_time = field("START TIME:").ok().and_then(parse_pg_time);
        let tail = c
            .manifest_tail
            .as_deref()
            .ok_or_else(|| missing("backup_manifest"))?;
        let stop = manifest_end_lsn(&String::from_utf8_lossy(tail))
            .ok_or_else(|| missing("WAL range in backup_manifest"))?;
        if stop < start {
            return Err(Error::new(
                ErrorKind::Command,
                format!("pg_basebackup reports a stop ({stop}) before its start ({start})"),
            ));
        }
        Ok(Facts {
            system_id,
            timeline,
            start,
            stop,
            start_time,
        })
    }
}

/// The `End-LSN` of the last WAL range in the end of a backup manifest.
fn manifest_end_lsn(tail: &str) -> Option<Lsn> {
    let at = tail.rfind("\"End-LSN\"")?;
    let rest = &tail[at + "\"End-LSN\"".len()..];
    let open = rest.find('"')?;
    let rest = &rest[open + 1..];
    let close = rest.find('"')?;
    Lsn::parse(&rest[..close]).ok()
}

/// A time as PostgreSQL writes it in a backup label (`2026-12-07 04:03:19 UTC`), when its
/// zone is UTC or a numeric offset; other zone abbreviations are ambiguous and give `None`.
pub(crate) fn parse_pg_time(text: &str) -> Option<jiff::Timestamp> {
    let text = text.trim();
    let (datetime, zone) = text.rsplit_once(' ')?;
    let civil: jiff::civil::DateTime = datetime.trim().replace(' ', "T").parse().ok()?;
    let offset = match zone {
        "UTC" | "GMT" | "Z" => jiff::tz::Offset::UTC,
        z => {
            let (sign, digits) = match z.as_bytes().first()? {
                b'+' => (1, &z[1..]),
                b'-' => (-1, &z[1..]),
                _ => return None,
            };
            let (h, m) = digits.split_once(':').unwrap_or((digits, "0"));
            let secs = sign * (h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60);
            jiff::tz::Offset::from_seconds(secs).ok()?
        }
    };
    civil
        .to_zoned(offset.to_time_zone())
        .ok()
        .map(|z| z.timestamp())
}

/// The WAL segment size of the cluster: the archived size of the backup's first segment,
/// or PostgreSQL's default when it is not archived.
fn segment_size(repo: &Repository, catalog: &Catalog, facts: &Facts) -> Result<u32> {
    let first = facts.start.segment(facts.timeline, DEFAULT_SEG_SIZE)?;
    Ok(
        match catalog.find(repo, &WalFile::Segment(first.name(DEFAULT_SEG_SIZE)))? {
            Some((_, node)) => u32::try_from(node.size)
                .ok()
                .filter(|s| super::names::check_seg_size(*s).is_ok())
                .unwrap_or(DEFAULT_SEG_SIZE),
            None => DEFAULT_SEG_SIZE,
        },
    )
}

/// The stop time PostgreSQL recorded in the backup history file (`<segment>.<offset>.backup`)
/// it archived, when that is in the archive.
fn backup_stop_time(
    repo: &Repository,
    catalog: &Catalog,
    first: &Segment,
    start: Lsn,
    seg_size: u32,
) -> Option<jiff::Timestamp> {
    let offset = start.0 % u64::from(seg_size);
    let name = format!("{}.{offset:08X}.backup", first.name(seg_size));
    let file = WalFile::parse(&name).ok()?;
    let (_, node) = catalog.find(repo, &file).ok()??;
    let ids = repo.file_content(&node).ok()?;
    let mut text = Vec::new();
    for id in ids {
        let blob = repo.read_blob(crate::id::BlobKind::Data, &id).ok()?;
        text.extend_from_slice(&blob);
        if text.len() > 1 << 20 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix("STOP TIME:"))
        .and_then(parse_pg_time)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_and_manifest_ranges_parse() {
        let t = parse_pg_time("2026-12-07 04:03:19 UTC").unwrap();
        assert_eq!(t.to_string(), "2026-12-07T04:03:19Z");
        let t = parse_pg_time("2026-12-07 05:03:19 +01").unwrap();
        assert_eq!(t.to_string(), "2026-12-07T04:03:19Z");
        assert!(parse_pg_time("2026-12-07 05:03:19 CET").is_none());
        let tail = r#"{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "92e0"}"#;
        assert_eq!(manifest_end_lsn(tail), Some(Lsn(0x2000100)));
        assert_eq!(manifest_end_lsn("garbage"), None);
    }
}
