#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `pg basebackup`'s handling of the tar stream `pg_basebackup` writes, with a stand-in
//! program that prints a stream made here: the tree stored is the stream's (with
//! `global/pg_control` arriving last), the facts are read from `backup_label`, the manifest
//! and `pg_control`, the WAL check marks a backup incomplete, and every broken stream or
//! failed program saves nothing. Real PostgreSQL is exercised by the CLI's tests.

mod common;

use std::path::{Path, PathBuf};

use cairn_repo::archiver::BackupOptions;
use cairn_repo::format::snapshot::SnapshotKind;
use cairn_repo::pg::archive_check::choose;
use cairn_repo::pg::basebackup::{basebackup, BasebackupOptions};
use cairn_repo::pg::target::Target;
use cairn_repo::pg::wal::push;
use cairn_repo::progress::NoProgress;
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::{ErrorKind, Repository};

const SYSID: u64 = 7_400_000_000_000_000_001;
const SEG: u32 = 16 << 20;

/// One tar entry: a path, and content for a file or `None` for a folder.
type Entry<'a> = (&'a str, Option<Vec<u8>>);

fn header(name: &str, size: u64, kind: u8) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[100..107].copy_from_slice(if kind == b'5' { b"0000700" } else { b"0000600" });
    b[108..115].copy_from_slice(b"0001750");
    b[116..123].copy_from_slice(b"0001750");
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"15000000000");
    b[156] = kind;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum::<u64>() + 8 * 32;
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in entries {
        match content {
            None => out.extend_from_slice(&header(&format!("{name}/"), 0, b'5')),
            Some(data) => {
                out.extend_from_slice(&header(name, data.len() as u64, b'0'));
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn control(sysid: u64) -> Vec<u8> {
    let mut c = vec![0u8; 8192];
    c[..8].copy_from_slice(&sysid.to_le_bytes());
    c
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8)
        .collect()
}

const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
START TIME: 2026-12-07 04:03:19 UTC\nLABEL: test\nSTART TIMELINE: 1\n";
const MANIFEST: &str = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [],\n\
\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n\
\"Manifest-Checksum\": \"00\"}\n";

/// A stream as PostgreSQL orders it: backup_label first, each folder's entries together,
/// the manifest and `global/pg_control` last.
fn good_stream(sysid: u64) -> Vec<Entry<'static>> {
    vec![
        ("backup_label", Some(LABEL.as_bytes().to_vec())),
        ("base", None),
        ("base/1", None),
        ("base/1/1259", Some(data(200_000, 3))),
        ("base/1/1259_fsm", Some(data(24_576, 5))),
        ("base/5", None),
        ("base/5/2600", Some(data(40_000, 7))),
        ("global", None),
        ("global/1262", Some(data(8192, 9))),
        ("./pg_wal", None),
        ("./pg_wal/archive_status", None),
        ("PG_VERSION", Some(b"15\n".to_vec())),
        ("backup_manifest", Some(MANIFEST.as_bytes().to_vec())),
        ("global/pg_control", Some(control(sysid))),
    ]
}

/// A stand-in for pg_basebackup that prints `stream` and exits with `code`.
fn program(dir: &Path, name: &str, stream: &[u8], code: i32) -> PathBuf {
    let t = dir.join(format!("{name}.tar"));
    std::fs::write(&t, stream).unwrap();
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\ncat '{}'\nexit {code}\n", t.display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn run(
    repo: &Repository,
    program: PathBuf,
) -> cairn_repo::Result<cairn_repo::pg::basebackup::Basebackup> {
    let opts = BasebackupOptions {
        program: Some(program),
        ..BasebackupOptions::default()
    };
    basebackup(repo, &opts, &BackupOptions::default(), &NoProgress)
}

fn base_backups(repo: &Repository) -> usize {
    repo.snapshots()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.kind == SnapshotKind::PgBasebackup)
        .count()
}

/// Archives segment 2 of timeline 1 (which holds 0/2000028..0/2000100) for `sysid`.
fn archive_segment_2(repo: &Repository, dir: &Path, sysid: u64) {
    let p = common::wal_segment(dir, 1, 2, SEG, sysid, 0);
    push(repo, &p).unwrap();
}

#[test]
fn the_stream_becomes_the_tree_and_the_archive_decides_completeness() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let entries = good_stream(SYSID);

    // No WAL archived: saved, but incomplete, naming the segment.
    let done = run(&repo, program(dir.path(), "pgbb", &tar(&entries), 0)).unwrap();
    assert!(done.result.snapshot.incomplete);
    assert_eq!(done.missing_wal, ["000000010000000000000002"]);
    let pg = done.result.snapshot.pg.clone().unwrap();
    assert_eq!(pg.system_identifier, SYSID.to_string());
    assert_eq!(
        (pg.start_lsn.as_deref(), pg.stop_lsn.as_deref()),
        (Some("0/2000028"), Some("0/2000100"))
    );
    assert_eq!(pg.start_time.as_deref(), Some("2026-12-07T04:03:19Z"));
    assert_eq!(pg.wal_first.as_deref(), Some("000000010000000000000002"));
    // An incomplete base backup is never restored, chosen or named.
    let err = choose(&repo, &Target::Latest, "latest", None).unwrap_err();
    assert!(err.to_string().contains("no complete base backup"), "{err}");
    let err = choose(&repo, &Target::Latest, "latest", Some(&done.result.id)).unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");

    // With the segment archived: complete.
    archive_segment_2(&repo, dir.path(), SYSID);
    let done = run(&repo, program(dir.path(), "pgbb2", &tar(&entries), 0)).unwrap();
    assert!(!done.result.snapshot.incomplete, "{:?}", done.missing_wal);
    let chosen = choose(&repo, &Target::Immediate, "latest", None).unwrap();
    assert_eq!(chosen.id, done.result.id);
    assert_eq!(chosen.wal.first, "000000010000000000000002");

    // The tree is the data directory, pg_control in its folder, `./` gone.
    let target = dir.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    restore(
        &repo,
        &done.result.id,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    for (name, content) in &entries {
        let p = target.join(name.trim_start_matches("./"));
        match content {
            Some(c) => assert_eq!(&std::fs::read(&p).unwrap(), c, "{name}"),
            None => assert!(p.is_dir(), "{name}"),
        }
    }
    common::assert_clean(&repo);
}

#[test]
fn broken_streams_and_failed_programs_save_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    archive_segment_2(&repo, dir.path(), SYSID);
    let good = tar(&good_stream(SYSID));

    // pg_basebackup fails after printing a whole stream.
    let err = run(&repo, program(dir.path(), "fails", &good, 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Command, "{err}");
    // The stream stops in the middle of a file.
    let err = run(
        &repo,
        program(dir.path(), "short", &good[..good.len() / 2], 0),
    )
    .unwrap_err();
    assert!(err.to_string().contains("tar stream"), "{err}");
    // A deeper folder's entries after the stream moved on.
    let mut reopened = good_stream(SYSID);
    reopened.insert(7, ("base/1/2601", Some(data(100, 1))));
    let err = run(&repo, program(dir.path(), "reopened", &tar(&reopened), 0)).unwrap_err();
    assert!(err.to_string().contains("outside its folder"), "{err}");
    // No backup_label.
    let mut unlabelled = good_stream(SYSID);
    unlabelled.remove(0);
    let err = run(&repo, program(dir.path(), "nolabel", &tar(&unlabelled), 0)).unwrap_err();
    assert!(err.to_string().contains("backup_label"), "{err}");
    // Another cluster than the archived one.
    let foreign = tar(&good_stream(SYSID + 1));
    let err = run(&repo, program(dir.path(), "foreign", &foreign, 0)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    // A program that sends its data and then nothing (PostgreSQL waiting for a broken
    // archive_command) is stopped after the stall limit.
    let half = dir.path().join("half.tar");
    std::fs::write(&half, &good[..good.len() / 2]).unwrap();
    let hangs = dir.path().join("hangs");
    std::fs::write(
        &hangs,
        format!("#!/bin/sh\ncat '{}'\nexec sleep 300\n", half.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hangs, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let opts = BasebackupOptions {
        program: Some(hangs),
        stall_timeout: Some(std::time::Duration::from_secs(1)),
        ..BasebackupOptions::default()
    };
    let started = std::time::Instant::now();
    let err = basebackup(&repo, &opts, &BackupOptions::default(), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("archive_command"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "the stall was not noticed"
    );
    // A program that cannot start.
    let err = run(&repo, dir.path().join("no-such-program")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Command, "{err}");

    assert_eq!(base_backups(&repo), 0);
    common::assert_clean(&repo);
}

/// `pages` pages of a table whose rows repeat values from one small vocabulary, as real
/// tables do: each page differs, and a dictionary trained on some of them helps the rest.
fn table(pages: usize, seed: u32) -> Vec<u8> {
    let words: Vec<Vec<u8>> = (0..64u32)
        .map(|w| {
            (0..40u32)
                .map(|i| (w.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(pages * 8192);
    for p in 0..pages as u32 {
        let mut x = (p ^ seed).wrapping_mul(2_654_435_761) | 1;
        let start = out.len();
        out.extend_from_slice(&p.to_le_bytes());
        while out.len() - start < 8192 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.extend_from_slice(&words[(x % 64) as usize]);
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(start + 8192);
    }
    out
}

fn dictionaries(repo: &Repository) -> Vec<cairn_repo::Id> {
    let mut out = Vec::new();
    repo.for_each_indexed_blob(&mut |id, kind, _| {
        if kind == cairn_repo::BlobKind::Dict {
            out.push(id);
        }
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn later_base_backups_use_the_clusters_page_dictionary_which_prune_never_collects() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    archive_segment_2(&repo, dir.path(), SYSID);
    let stream = |rel: Vec<u8>| {
        let mut e = good_stream(SYSID);
        e.insert(7, ("base/5/16396", Some(rel)));
        e
    };
    let first_table = table(400, 0);
    // The first base backup has no dictionary to use; it trains one from its pages.
    let first = run(
        &repo,
        program(dir.path(), "bb1", &tar(&stream(first_table.clone())), 0),
    )
    .unwrap();
    let pg = first.result.snapshot.pg.clone().unwrap();
    let dict = pg
        .dictionary
        .expect("the first base backup trains a dictionary");
    assert!(pg.dictionary_basis.unwrap() >= 400 * 8192);
    assert_eq!(dictionaries(&repo), [dict]);

    // A day of changes: 40 pages rewritten. The second backup stores them with the dictionary
    // and passes it on.
    let mut second_table = first_table.clone();
    let changed = table(40, 99);
    for (i, page) in changed.chunks(8192).enumerate() {
        let at = i * 10 * 8192;
        second_table[at..at + 8192].copy_from_slice(page);
    }
    let entries = stream(second_table.clone());
    let second = run(&repo, program(dir.path(), "bb2", &tar(&entries), 0)).unwrap();
    assert_eq!(
        second.result.snapshot.pg.as_ref().unwrap().dictionary,
        Some(dict)
    );
    // Without a dictionary each changed page would take about what zstd makes of it alone.
    let alone: usize = changed
        .chunks(8192)
        .map(|p| cairn_repo::format::compress(p, 3).unwrap().len())
        .sum();
    let stored = second.result.snapshot.summary.bytes_stored;
    assert!(
        (stored as usize) < alone * 3 / 4,
        "{stored} bytes stored for pages that take {alone} without a dictionary"
    );

    // Every snapshot that names the dictionary but the second goes, and an aggressive prune
    // (twice: mark, then sweep) repacks everything else: the dictionary stays, and the second
    // backup restores byte for byte through a fresh reader.
    cairn_repo::snapshot_edit::forget(&repo, &[first.result.id]).unwrap();
    for _ in 0..2 {
        cairn_repo::prune::prune(&repo, &common::aggressive(), &NoProgress).unwrap();
    }
    let reader = common::open(dir.path(), &key, "cache2");
    assert_eq!(dictionaries(&reader), [dict]);
    let target = dir.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    restore(
        &reader,
        &second.result.id,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(target.join("base/5/16396")).unwrap(),
        second_table
    );
    common::assert_clean(&reader);

    // With no snapshot left at all the dictionary is still kept: it is never collected.
    let left: Vec<_> = reader
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    cairn_repo::snapshot_edit::forget(&reader, &left).unwrap();
    for _ in 0..2 {
        cairn_repo::prune::prune(&reader, &common::aggressive(), &NoProgress).unwrap();
    }
    assert_eq!(
        dictionaries(&common::open(dir.path(), &key, "cache3")),
        [dict]
    );
}

#[test]
fn a_lost_dictionary_is_reported_by_name_never_read_around() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    archive_segment_2(&repo, dir.path(), SYSID);
    let stream = |rel: Vec<u8>| {
        let mut e = good_stream(SYSID);
        e.insert(7, ("base/5/16396", Some(rel)));
        e
    };
    let first = run(
        &repo,
        program(dir.path(), "bb1", &tar(&stream(table(300, 0))), 0),
    )
    .unwrap();
    let dict = first
        .result
        .snapshot
        .pg
        .clone()
        .unwrap()
        .dictionary
        .unwrap();
    let second = run(
        &repo,
        program(dir.path(), "bb2", &tar(&stream(table(300, 5))), 0),
    )
    .unwrap();
    // The dictionary's pack disappears from storage.
    lose_pack_of(&repo, dir.path(), &dict);
    let reader = common::open(dir.path(), &key, "cache2");
    let target = dir.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    let e = restore(
        &reader,
        &second.result.id,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(e.to_string().contains(&format!("dictionary {dict}")), "{e}");
}

/// A stream with one table of `pages` pages (seeded by `seed`) for cluster `sysid`.
fn table_stream(sysid: u64, rel: Vec<u8>) -> Vec<u8> {
    let mut e = good_stream(sysid);
    e.insert(7, ("base/5/16396", Some(rel)));
    tar(&e)
}

/// Forgets every snapshot but `keep` and prunes (mark, then sweep), aggressively.
fn keep_only(repo: &Repository, keep: &[cairn_repo::Id]) {
    let gone: Vec<_> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !keep.contains(id))
        .collect();
    cairn_repo::snapshot_edit::forget(repo, &gone).unwrap();
    for _ in 0..2 {
        cairn_repo::prune::prune(repo, &common::aggressive(), &NoProgress).unwrap();
    }
}

fn restore_table(
    repo: &Repository,
    snap: &cairn_repo::Id,
    target: &Path,
) -> cairn_repo::Result<Vec<u8>> {
    std::fs::create_dir_all(target).unwrap();
    restore(repo, snap, target, &RestoreOptions::default(), &NoProgress)?;
    Ok(std::fs::read(target.join("base/5/16396")).unwrap())
}

/// A blob's id is the keyed hash of its plaintext alone, whatever its kind (see
/// kind_collision.rs). When the bytes of a trained dictionary are already stored as a data
/// blob (a file holding them was backed up: a dump of the dictionary, or a copy of another
/// repository's), the dictionary is "already known" and is never stored as a dictionary
/// blob; prune then collects it as soon as no snapshot uses it as file content, and every
/// page compressed with it is lost.
#[test]
fn a_dictionary_whose_bytes_were_stored_as_data_first_is_not_collected() {
    let dir = tempfile::tempdir().unwrap();
    // The dictionary the first base backup trains, from a scratch repository: training is
    // repeatable, so the same stream trains the same bytes anywhere.
    let scratch_dir = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch_dir).unwrap();
    let skey = common::init(&scratch_dir);
    let scratch = common::open(&scratch_dir, &skey, "cache");
    archive_segment_2(&scratch, &scratch_dir, SYSID);
    let first_table = table(400, 0);
    let bb = run(
        &scratch,
        program(
            &scratch_dir,
            "bb0",
            &table_stream(SYSID, first_table.clone()),
            0,
        ),
    )
    .unwrap();
    let sid = bb.result.snapshot.pg.unwrap().dictionary.unwrap();
    let dict_bytes = scratch.read_blob(cairn_repo::BlobKind::Dict, &sid).unwrap();

    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let key = common::init(&repo_dir);
    let repo = common::open(&repo_dir, &key, "cache");
    archive_segment_2(&repo, &repo_dir, SYSID);
    // Those bytes are stored first as a data blob (as a file's chunk would be, or a page
    // of a stream; a writer is used here so that the chunk is exactly those bytes).
    let mut w = cairn_repo::writer::BlobWriter::new(&repo, 3);
    w.add_plain(cairn_repo::BlobKind::Data, &dict_bytes)
        .unwrap();
    w.finish().unwrap();

    let first = run(
        &repo,
        program(
            &repo_dir,
            "bb1",
            &table_stream(SYSID, first_table.clone()),
            0,
        ),
    )
    .unwrap();
    // Whatever the first base backup records, it may not be a blob prune can collect.
    let _ = first;
    let mut second_table = first_table.clone();
    for (i, page) in table(40, 99).chunks(8192).enumerate() {
        let at = i * 10 * 8192;
        second_table[at..at + 8192].copy_from_slice(page);
    }
    let second = run(
        &repo,
        program(
            &repo_dir,
            "bb2",
            &table_stream(SYSID, second_table.clone()),
            0,
        ),
    )
    .unwrap();

    // Only the second base backup (and the WAL) stays.
    let wal: Vec<_> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .filter(|(_, s)| s.kind == SnapshotKind::Wal)
        .map(|(id, _)| id)
        .collect();
    let mut keep = wal;
    keep.push(second.result.id);
    keep_only(&repo, &keep);
    let reader = common::open(&repo_dir, &key, "cache2");
    let restored = restore_table(&reader, &second.result.id, &dir.path().join("out"))
        .unwrap_or_else(|e| panic!("the second base backup no longer restores: {e}"));
    assert_eq!(restored, second_table);
}

/// When the dictionary recorded by the last base backup cannot be read (its pack lost), the
/// next base backup must not succeed with a snapshot that cannot be restored: its unchanged
/// pages are deduplicated against blobs compressed with that dictionary.
#[test]
fn a_base_backup_after_its_dictionary_is_lost_fails_or_restores() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    archive_segment_2(&repo, dir.path(), SYSID);
    let first = run(
        &repo,
        program(dir.path(), "bb1", &table_stream(SYSID, table(300, 0)), 0),
    )
    .unwrap();
    let dict = first
        .result
        .snapshot
        .pg
        .clone()
        .unwrap()
        .dictionary
        .unwrap();
    let second_table = table(300, 5);
    run(
        &repo,
        program(
            dir.path(),
            "bb2",
            &table_stream(SYSID, second_table.clone()),
            0,
        ),
    )
    .unwrap();
    lose_pack_of(&repo, dir.path(), &dict);

    // The same cluster, unchanged, backed up again by a fresh process.
    let repo = common::open(dir.path(), &key, "cache2");
    match run(
        &repo,
        program(
            dir.path(),
            "bb3",
            &table_stream(SYSID, second_table.clone()),
            0,
        ),
    ) {
        Err(e) => assert!(e.to_string().contains(&dict.to_string()), "{e}"),
        Ok(third) => {
            let reader = common::open(dir.path(), &key, "cache3");
            let restored = restore_table(&reader, &third.result.id, &dir.path().join("out"))
                .unwrap_or_else(|e| {
                    panic!("a base backup reported success and does not restore: {e}")
                });
            assert_eq!(restored, second_table);
        }
    }
}

/// The documented way back from a lost pack (`repair index`, then `repair snapshots`) must
/// name what a lost dictionary takes with it: every file with a page compressed with it.
/// `repair snapshots` only asks the index whether each content blob is there, so the base
/// backup is reported intact and still does not restore.
#[test]
#[ignore = "open limitation: repair snapshots asks the index only, without reading blobs, so it cannot see which dictionary a page needs; `check --read-data` reports it. Run: cargo nextest run -p cairn-repo --test basebackup_stream --run-ignored only"]
fn repair_snapshots_reports_the_files_a_lost_dictionary_takes() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    archive_segment_2(&repo, dir.path(), SYSID);
    let first = run(
        &repo,
        program(dir.path(), "bb1", &table_stream(SYSID, table(300, 0)), 0),
    )
    .unwrap();
    let dict = first
        .result
        .snapshot
        .pg
        .clone()
        .unwrap()
        .dictionary
        .unwrap();
    let second = run(
        &repo,
        program(dir.path(), "bb2", &table_stream(SYSID, table(300, 5)), 0),
    )
    .unwrap();
    lose_pack_of(&repo, dir.path(), &dict);

    let repo = common::open(dir.path(), &key, "cache2");
    cairn_repo::repair::repair_index(&repo).unwrap();
    let report = cairn_repo::repair::repair_snapshots(&repo, false, true).unwrap();
    let mine = report.iter().find(|r| r.original == second.result.id);
    assert!(
        mine.is_some_and(|r| r.lost.iter().any(|p| p.contains("16396"))),
        "repair snapshots finds nothing lost in a base backup that cannot be restored: {report:?}"
    );
}

/// Deletes from storage the pack that holds `blob` (a lost pack).
fn lose_pack_of(repo: &Repository, dir: &Path, blob: &cairn_repo::Id) {
    let mut holder = None;
    repo.for_each_indexed_blob(&mut |id, _, pack| {
        if id == *blob {
            holder = Some(pack);
        }
        Ok(())
    })
    .unwrap();
    let pack = holder.unwrap().to_hex();
    let path = common::files_below(dir)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == pack)
        .unwrap();
    std::fs::remove_file(path).unwrap();
}
