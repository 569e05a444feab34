#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Stored bytes made by someone with storage access, or damaged: key slots that are planted,
//! copied from another tenant or damaged; pack headers whose entries overflow; blobs that
//! claim more than a blob may hold. Each is reported as what it is, and none stalls or
//! panics a reader.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cairn_repo::archiver::{backup_stream, BackupOptions};
use cairn_repo::backend::FileType;
use cairn_repo::check::{check, Subset};
use cairn_repo::crypto::MasterKey;
use cairn_repo::format::blob;
use cairn_repo::format::config::ChunkerConfig;
use cairn_repo::format::index::{IndexFile, IndexPack};
use cairn_repo::format::pack::{PackBuilder, PackEntry};
use cairn_repo::keys::{unlock_with_password, KdfParams, KeySlot, SlotTrouble};
use cairn_repo::progress::NoProgress;
use cairn_repo::{
    BlobKind, Credentials, ErrorKind, Id, InitOptions, Location, OpenOptions, Repository,
};
use serde::Serialize;

const CHEAP: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

fn opts() -> InitOptions {
    InitOptions {
        kdf: CHEAP,
        chunker: ChunkerConfig {
            min: 1024,
            avg: 4096,
            max: 8192,
        },
        pack_size: 64 * 1024,
        ..Default::default()
    }
}

fn init(dir: &Path, tenant: &str, pw: &str) -> Repository {
    Repository::init(
        &Location::Local(dir.join("repo")),
        tenant,
        &Credentials::Password(pw.as_bytes().to_vec()),
        &opts(),
        &OpenOptions::default(),
    )
    .unwrap()
}

fn open(dir: &Path, tenant: &str, pw: &str) -> cairn_repo::Result<Repository> {
    Repository::open(
        &Location::Local(dir.join("repo")),
        tenant,
        &Credentials::Password(pw.as_bytes().to_vec()),
        &OpenOptions::default(),
    )
}

fn slot_files(dir: &Path, tenant: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("repo").join(tenant).join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Stores a slot's JSON under its name, as anyone with storage access could.
fn plant(repo: &Repository, slot: &KeySlot) -> String {
    let bytes = serde_json::to_vec_pretty(slot).unwrap();
    let name = Id::of_bytes(&bytes).to_hex();
    repo.store_for_tests()
        .put(FileType::Key, &name, Bytes::from(bytes))
        .unwrap();
    name
}

fn slot_with(params: KdfParams) -> KeySlot {
    KeySlot {
        version: 1,
        created: "2026-01-01T00:00:00Z".into(),
        hostname: "planted".into(),
        username: "planted".into(),
        kdf: "argon2id".into(),
        params,
        salt: "00".repeat(32),
        wrapped: "11".repeat(72),
    }
}

fn read_slots(dir: &Path, tenant: &str) -> Vec<(String, Vec<u8>)> {
    slot_files(dir, tenant)
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// A slot asking for 4 GiB and 2^32-1 passes (it would take hours if tried) is skipped
/// untried with a reason naming it, both when the password opens another slot and when no
/// slot opens (then the error names it instead of claiming a wrong password).
#[test]
fn a_planted_slot_with_absurd_kdf_cost_is_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path(), "default", "pw");
    let planted = plant(
        &repo,
        &slot_with(KdfParams {
            memory_kib: 4 * 1024 * 1024,
            iterations: u32::MAX,
            parallelism: 1,
        }),
    );
    let u =
        unlock_with_password("repo", read_slots(dir.path(), "default"), b"pw", |_| true).unwrap();
    assert_eq!(u.troubles.len(), 1);
    assert_eq!(u.troubles[0].0, planted);
    match &u.troubles[0].1 {
        SlotTrouble::Skipped(why) => assert!(why.contains("memory"), "{why}"),
        other => panic!("{other:?}"),
    }
    let opened = open(dir.path(), "default", "pw").unwrap();
    // Check names it with the command that removes it.
    let report = cairn_repo::check::check(&opened, None, &NoProgress).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&planted) && p.problem.contains("cairn key remove")),
        "{:?}",
        report.problems
    );
    let e = open(dir.path(), "default", "not the password").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string().contains(&planted) && e.to_string().contains("skipped"),
        "{e}"
    );
}

/// Among slots within bounds, the cheapest is tried first: a costlier slot that sorts first
/// by name is not even tried when a cheaper one opens.
#[test]
fn key_slots_are_tried_cheapest_first() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path(), "default", "pw");
    let own = slot_files(dir.path(), "default")[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // A costlier slot for the same password but another key, named before ours (bounded).
    let other = MasterKey::generate().unwrap();
    // Twice our slot's cost, cheap enough to make thousands: a name that sorts first is then
    // found unless ours sorts among the first 1/4096 of names (odds about 1 in 4,000).
    let costly = KdfParams {
        memory_kib: 2 * CHEAP.memory_kib,
        iterations: 1,
        parallelism: 1,
    };
    let bytes = (0..4096)
        .map(|_| KeySlot::create(&other, b"pw", costly, "h", "u").unwrap().1)
        .find(|b| Id::of_bytes(b).to_hex() < own)
        .expect("a name that sorts first");
    let name = Id::of_bytes(&bytes).to_hex();
    repo.store_for_tests()
        .put(FileType::Key, &name, Bytes::from(bytes))
        .unwrap();
    let (ours, _) = repo
        .master_key(&Credentials::Password(b"pw".to_vec()))
        .unwrap();
    let u = unlock_with_password("repo", read_slots(dir.path(), "default"), b"pw", |k| {
        k.to_hex() == ours.to_hex()
    })
    .unwrap();
    assert_eq!(u.slot, own);
    assert!(u.troubles.is_empty(), "{:?}", u.troubles);
}

/// A slot whose bytes were changed is reported as damaged, naming it; "wrong password" (and
/// its exit code) is kept for a password that no intact slot takes.
#[test]
fn a_damaged_key_slot_is_reported_as_damaged_not_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "default", "pw");
    let slot = &slot_files(dir.path(), "default")[0];
    let mut bytes = std::fs::read(slot).unwrap();
    bytes[40] ^= 1;
    std::fs::write(slot, bytes).unwrap();
    let e = open(dir.path(), "default", "pw").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let name = slot.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        e.to_string().contains(&name) && e.to_string().contains("damaged"),
        "{e}"
    );
    assert_eq!(e.to_string().matches(&name).count(), 1, "named once: {e}");
}

/// Another tenant's slot copied in opens with that tenant's password but not this tenant's
/// config: said so, naming the slot, and the tenant's own password still opens it.
#[test]
fn another_tenants_key_slot_copied_in_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "a", "pw-a");
    init(dir.path(), "b", "pw-b");
    let from = &slot_files(dir.path(), "b")[0];
    let copied = dir
        .path()
        .join("repo/a/keys")
        .join(from.file_name().unwrap());
    std::fs::copy(from, &copied).unwrap();
    let e = open(dir.path(), "a", "pw-b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let name = from.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        e.to_string().contains(&name) && e.to_string().contains("another tenant"),
        "{e}"
    );
    open(dir.path(), "a", "pw-a").unwrap();
    let e = open(dir.path(), "a", "neither").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassword, "{e}");
}

/// The shape of a pack header, for crafting one whose entries the writer would never make.
#[derive(Serialize)]
struct CraftedHeader {
    version: u32,
    blobs: Vec<CraftedEntry>,
}

#[derive(Serialize)]
struct CraftedEntry {
    kind: BlobKind,
    id: Id,
    offset: u64,
    length: u32,
    raw_length: u32,
}

impl From<&PackEntry> for CraftedEntry {
    fn from(e: &PackEntry) -> Self {
        CraftedEntry {
            kind: e.kind,
            id: e.id,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }
}

/// Stores `pack` under its name and an index file listing `entries` in it.
fn store_pack(repo: &Repository, pack: Vec<u8>, entries: Vec<PackEntry>) -> Id {
    let id = Id::of_bytes(&pack);
    let size = pack.len() as u64;
    repo.store_for_tests()
        .put(FileType::Pack, &id.to_hex(), Bytes::from(pack))
        .unwrap();
    repo.save_index(&IndexFile {
        version: 1,
        packs: vec![IndexPack {
            id,
            size,
            blobs: entries,
        }],
        ..Default::default()
    })
    .unwrap();
    id
}

/// A pack header entry whose offset plus length overflows 64 bits: `check --read-data`
/// reports the pack as a problem instead of panicking (the same entries would have reached
/// prune's repack).
#[test]
fn check_reports_a_pack_header_entry_whose_end_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path(), "default", "pw");
    let mut input: &[u8] = b"some content for a data pack\n";
    backup_stream(
        &repo,
        &mut input,
        "f",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let (pack, entries) = repo
        .store_for_tests()
        .list(FileType::Pack)
        .unwrap()
        .into_iter()
        .map(|o| {
            repo.read_pack_header(&Id::from_hex(&o.name).unwrap())
                .unwrap()
        })
        .map(|(_, e)| e)
        .zip(repo.store_for_tests().list(FileType::Pack).unwrap())
        .find(|(e, _)| e[0].kind == BlobKind::Data)
        .map(|(e, o)| (Id::from_hex(&o.name).unwrap(), e))
        .unwrap();
    let bytes = repo
        .store_for_tests()
        .read(FileType::Pack, &pack.to_hex())
        .unwrap();
    let area = entries
        .iter()
        .map(|e| e.offset + e.length as u64)
        .max()
        .unwrap() as usize;
    let mut blobs: Vec<CraftedEntry> = entries.iter().map(CraftedEntry::from).collect();
    blobs.push(CraftedEntry {
        kind: BlobKind::Data,
        id: Id([9; 32]),
        offset: u64::MAX - 10,
        length: 100,
        raw_length: 50,
    });
    let header = cairn_repo::format::seal_meta(
        repo.keys_for_tests(),
        b"cairn:pack-header",
        &CraftedHeader { version: 1, blobs },
    )
    .unwrap();
    let mut crafted = bytes[..area].to_vec();
    crafted.extend_from_slice(&header);
    crafted.extend_from_slice(&(header.len() as u32).to_le_bytes());
    let crafted_id = store_pack(&repo, crafted, entries);
    let r = check(&repo, Some(Subset::All), &NoProgress).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.object.contains(&crafted_id.to_hex()) && p.problem.contains("overflow")),
        "{:?}",
        r.problems
    );
}

/// A data blob larger than the repository's chunker allows (a writer never makes one) is
/// refused before its plaintext is returned: readers bound what a blob may claim.
#[test]
fn a_data_blob_larger_than_the_chunker_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path(), "default", "pw");
    let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = repo.keys_for_tests().blob_id(&plain);
    let sealed = blob::seal(repo.keys_for_tests(), BlobKind::Data, id, &plain, 0).unwrap();
    let mut b = PackBuilder::new(BlobKind::Data, 1 << 20);
    b.add(&sealed).unwrap();
    let finished = b.finish(repo.keys_for_tests()).unwrap();
    store_pack(&repo, finished.bytes, finished.entries);
    repo.sync_index().unwrap();
    let e = match repo.read_blob(BlobKind::Data, &id) {
        Ok(p) => panic!("a blob of {} bytes was read", p.len()),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("more than"), "{e}");
    // A blob within the bound reads as before.
    let small = b"a small blob".to_vec();
    let sid = repo.keys_for_tests().blob_id(&small);
    let mut b = PackBuilder::new(BlobKind::Data, 1 << 20);
    b.add(&blob::seal(repo.keys_for_tests(), BlobKind::Data, sid, &small, 0).unwrap())
        .unwrap();
    let finished = b.finish(repo.keys_for_tests()).unwrap();
    store_pack(&repo, finished.bytes, finished.entries);
    repo.sync_index().unwrap();
    assert_eq!(repo.read_blob(BlobKind::Data, &sid).unwrap(), small);
}

/// Three compressible blobs stored in one pack, under an index whose middle entry's
/// plaintext length is off by `delta`; returns their plaintexts, ids and the run that reads
/// them.
fn stored_run(
    repo: &Repository,
    first: u8,
    delta: i64,
) -> (Vec<Vec<u8>>, Vec<Id>, cairn_repo::repository::BlobRun) {
    let keys = repo.keys_for_tests();
    let plains: Vec<Vec<u8>> = (first..first + 3)
        .map(|n| format!("page {n} ").repeat(300).into_bytes())
        .collect();
    let mut b = PackBuilder::new(BlobKind::Data, 1 << 20);
    let mut ids = Vec::new();
    for p in &plains {
        let id = keys.blob_id(p);
        b.add(&blob::seal(keys, BlobKind::Data, id, p, 3).unwrap())
            .unwrap();
        ids.push(id);
    }
    let finished = b.finish(keys).unwrap();
    let mut entries = finished.entries;
    entries[1].raw_length = (i64::from(entries[1].raw_length) + delta) as u32;
    store_pack(repo, finished.bytes, entries);
    repo.sync_index().unwrap();
    let located: Vec<_> = ids
        .iter()
        .map(|id| (*id, repo.locate(id).unwrap()))
        .collect();
    let mut runs = cairn_repo::repository::coalesce(located, 1 << 20);
    assert_eq!(runs.len(), 1);
    (plains, ids, runs.remove(0))
}

/// A restore decodes each blob straight into the place its index entry's plaintext length
/// gives it. An entry claiming another length than the blob holds (a damaged or forged
/// index) is refused as corrupt, never written short or long; honest entries read into
/// place.
#[test]
fn a_run_whose_index_lies_about_plaintext_lengths_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path(), "default", "pw");
    let (plains, _, run) = stored_run(&repo, 0, 0);
    let total: usize = plains.iter().map(Vec::len).sum();
    let mut out = vec![0u8; total];
    repo.read_run_into(BlobKind::Data, &run, &mut out).unwrap();
    assert_eq!(out, plains.concat());
    // A buffer that does not match the run's claims is refused before anything is read.
    let mut short = vec![0u8; total - 1];
    assert!(repo
        .read_run_into(BlobKind::Data, &run, &mut short)
        .is_err());

    // Other blobs, under an index whose middle entry claims one byte less or more than the
    // blob holds.
    for (first, delta) in [(10u8, -1i64), (20, 1)] {
        let (plains, ids, run) = stored_run(&repo, first, delta);
        let claimed = (plains.iter().map(Vec::len).sum::<usize>() as i64 + delta) as usize;
        let mut out = vec![0u8; claimed];
        let e = repo
            .read_run_into(BlobKind::Data, &run, &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("index entry says"), "{e}");
        assert!(e.to_string().contains(&ids[1].to_string()), "{e}");
    }
}

/// A restore sizes one buffer for a group of small files from their blobs' claimed lengths.
/// An index whose claims are each within the repository's bound but together far more than
/// the files hold is refused before that buffer is allocated, and no file of the group is
/// left behind.
#[test]
fn claims_far_beyond_what_the_files_hold_are_refused_before_allocating() {
    use cairn_repo::restorer::{restore, RestoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(
        &Location::Local(dir.path().join("repo")),
        "default",
        &Credentials::Password(b"pw".to_vec()),
        &InitOptions {
            kdf: CHEAP,
            ..Default::default()
        },
        &OpenOptions::default(),
    )
    .unwrap();
    let keys = repo.keys_for_tests();
    let max = repo.max_blob(BlobKind::Data);
    // Enough files that their claims pass the group's room (its files' sizes and 32 MiB).
    let n = usize::try_from((32 << 20) / max + 2).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut b = PackBuilder::new(BlobKind::Data, 1 << 20);
    for i in 0..n {
        let content = format!("small file {i}\n").into_bytes();
        std::fs::write(src.join(format!("f{i}")), &content).unwrap();
        let id = keys.blob_id(&content);
        b.add(&blob::seal(keys, BlobKind::Data, id, &content, 3).unwrap())
            .unwrap();
    }
    let finished = b.finish(keys).unwrap();
    let mut entries = finished.entries;
    for e in &mut entries {
        e.raw_length = u32::try_from(max).unwrap();
    }
    store_pack(&repo, finished.bytes, entries);
    repo.sync_index().unwrap();
    // The backup deduplicates its files against the lying entries.
    let r = common::backup(&repo, &src);
    let out = dir.path().join("out");
    let e = restore(&repo, &r.id, &out, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("claims more plaintext"), "{e}");
    let restored = out.join(src.strip_prefix("/").unwrap());
    let left: Vec<_> = std::fs::read_dir(&restored)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
