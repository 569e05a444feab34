//! Fuzz targets for every parser of stored bytes (feature `fuzzing`; `repo-core/fuzz` runs
//! them under libFuzzer with `scripts/fuzz`, and a quick deterministic pass runs in the
//! default test suite).
//!
//! Stored objects are sealed, so random bytes would never get past authentication. Each
//! target therefore seals the fuzz input with a fixed test key first and then hands it to
//! the same decoder a reader uses; `envelope` and the raw half of `pack_header` fuzz what
//! comes before authentication. An input whose first byte is 1 is used as a payload as is
//! (a zstd frame follows); any other input is stored uncompressed (format byte 0 prepended),
//! so the decoders see arbitrary CBOR or JSON. A target never panics on any input; where a
//! decoder promises something (a decoded pack entry lies inside its pack), the target
//! asserts it.

#![allow(clippy::panic)]

use std::sync::OnceLock;

use crate::cache::index_locations;
use crate::crypto::{Keys, MasterKey, NONCE_LEN};
use crate::format::config::{ChunkerConfig, Config};
use crate::format::index::{Condemned, IndexFile, IndexPack};
use crate::format::pack::{entry_bytes, parse_header, Header, HeaderRead, PackEntry, HEADER_AAD};
use crate::format::snapshot::{Snapshot, SnapshotKind, Summary};
use crate::format::tree::{ContentList, Node, NodeKind, Time, Tree};
use crate::format::{self, blob, open_meta, to_cbor};
use crate::id::{BlobKind, Id};
use crate::keys::{unlock_with_password, KdfParams, KeySlot};
use crate::lease::Lease;

const LEASE_AAD: &[u8] = b"cairn:lease";

/// A fuzz target: takes any bytes, never panics.
pub type Target = fn(&[u8]);

/// Every target by name, as `scripts/fuzz` and the fuzz crate know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("pack_header", pack_header),
    ("index_file", index_file),
    ("tree", tree),
    ("snapshot", snapshot),
    ("key_slot", key_slot),
    ("config", config),
    ("lease", lease),
    ("envelope", envelope),
];

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| match Keys::derive(&MasterKey::from_bytes([0x5a; 32])) {
        Ok(k) => k,
        Err(e) => panic!("fuzz keys: {e}"),
    })
}

/// The payload the input stands for (see the module documentation).
fn payload(data: &[u8]) -> Vec<u8> {
    if data.first() == Some(&1) {
        return data.to_vec();
    }
    let mut p = Vec::with_capacity(data.len() + 1);
    p.push(0);
    p.extend_from_slice(data);
    p
}

/// The input as a sealed metadata object of type `aad`.
fn sealed_meta(aad: &[u8], data: &[u8]) -> Vec<u8> {
    match keys().seal_meta(aad, &payload(data)) {
        Ok(s) => s,
        Err(e) => panic!("sealing: {e}"),
    }
}

/// A pack: `blob_area` filler bytes, then the input as its sealed header, then the
/// header's length. The first two input bytes say how big the blob area is.
pub fn pack_header(data: &[u8]) {
    let keys = keys();
    let id = Id([7; 32]);
    // Raw: the input as a pack's tail, before anything is authenticated.
    let len = data.len() as u64;
    let _ = parse_header(keys, &id, len, data);
    let _ = parse_header(keys, &id, len.saturating_add(1 << 20), data);
    let (area, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let header = sealed_meta(HEADER_AAD, rest);
    let mut pack = vec![0xa5; area];
    pack.extend_from_slice(&header);
    pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
    if let Ok(HeaderRead::Done(entries)) = parse_header(keys, &id, pack.len() as u64, &pack) {
        for e in &entries {
            let Ok(sealed) = entry_bytes(&pack, e) else {
                panic!("parse_header accepted an entry outside its pack: {e:?}");
            };
            let _ = blob::open(keys, e.kind, &e.id, sealed);
        }
    }
}

/// An index file (or condemned record) as the cache ingests it.
pub fn index_file(data: &[u8]) {
    let sealed = sealed_meta(format::index::AAD, data);
    if let Ok(f) = open_meta::<IndexFile>(keys(), format::index::AAD, &sealed, "index file") {
        let _ = f.is_structural();
        let _ = f.blob_count();
        for p in &f.packs {
            for e in &p.blobs {
                if let Err(err) = e.validate() {
                    panic!("a decoded index entry is invalid: {err}");
                }
            }
        }
        let _ = index_locations(&f);
    }
}

/// A tree blob (directory listing or content list), sealed under the id of its plaintext
/// and opened as a reader does.
pub fn tree(data: &[u8]) {
    let keys = keys();
    let payload = payload(data);
    let id = match format::decompress_bounded(&payload, format::MAX_TREE_BLOB, "tree") {
        Ok(plain) => keys.blob_id(&plain),
        Err(_) => keys.blob_id(&payload),
    };
    let mut sealed = vec![0u8; NONCE_LEN];
    sealed.extend_from_slice(&payload);
    if keys
        .seal_blob_in_place(BlobKind::Tree, &id, &mut sealed)
        .is_err()
    {
        return;
    }
    let Ok(plain) = blob::open_in_place(keys, BlobKind::Tree, &id, &mut sealed) else {
        return;
    };
    if let Ok(t) = Tree::decode(&plain, &id) {
        for n in &t.nodes {
            let _ = t.find(&n.name);
            let _ = n.name_lossy();
        }
    }
    let _ = ContentList::decode(&plain, &id);
}

pub fn snapshot(data: &[u8]) {
    let sealed = sealed_meta(format::snapshot::AAD, data);
    if let Ok(s) = open_meta::<Snapshot>(keys(), format::snapshot::AAD, &sealed, "snapshot") {
        let _ = s.timestamp();
    }
}

/// A key slot: parsed and checked as a reader does before any Argon2id work; slots whose
/// parameters are trivially cheap are also tried with a password.
pub fn key_slot(data: &[u8]) {
    let name = Id::of_bytes(data).to_hex();
    let Ok(slot) = KeySlot::parse(&name, data) else {
        return;
    };
    let _ = slot.params.check();
    if slot.prepare().is_ok() && slot.params.work() <= 64 && slot.params.parallelism <= 2 {
        let _ = unlock_with_password("fuzz", vec![(name, data.to_vec())], b"pw", |_| true);
    }
}

pub fn config(data: &[u8]) {
    let sealed = sealed_meta(format::config::AAD, data);
    if let Ok(c) = open_meta::<Config>(keys(), format::config::AAD, &sealed, "config") {
        let _ = cairn_chunker::Chunker::new(c.chunker.params(), 0);
    }
}

pub fn lease(data: &[u8]) {
    let sealed = sealed_meta(LEASE_AAD, data);
    if let Ok(l) = open_meta::<Lease>(keys(), LEASE_AAD, &sealed, "lease") {
        let _ = l.expires_at();
    }
}

/// The input as stored bytes of any kind, before authentication: sealed envelopes of every
/// object type and blob kind, and payload decoding.
pub fn envelope(data: &[u8]) {
    let keys = keys();
    for aad in [
        HEADER_AAD,
        format::index::AAD,
        format::snapshot::AAD,
        format::config::AAD,
        LEASE_AAD,
    ] {
        let _ = keys.open_meta(aad, data);
    }
    let id = Id([3; 32]);
    let _ = blob::open(keys, BlobKind::Data, &id, data);
    let _ = blob::open_in_place(keys, BlobKind::Tree, &id, &mut data.to_vec());
    let _ = format::decompress(data, "payload");
    let _ = format::decompress_bounded(data, 8192, "payload");
}

fn seed_entries() -> Vec<PackEntry> {
    vec![
        PackEntry {
            kind: BlobKind::Data,
            id: Id([1; 32]),
            offset: 0,
            length: 100,
            raw_length: 60,
        },
        PackEntry {
            kind: BlobKind::Tree,
            id: Id([2; 32]),
            offset: 100,
            length: 48,
            raw_length: 7,
        },
    ]
}

/// Valid encodings to start a target's corpus from (plaintext, as the targets take them).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let cbor = |r: crate::error::Result<Vec<u8>>| r.unwrap_or_default();
    let node = Node {
        name: b"a".to_vec(),
        kind: NodeKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: Some("root".into()),
        group: None,
        mtime: Time(1, 2),
        atime: None,
        ctime: Time(3, 4),
        size: 5,
        inode: 6,
        device: 7,
        links: 1,
        rdev: 0,
        link_target: Some(b"t".to_vec()),
        xattrs: Vec::new(),
        content: vec![Id([9; 32])],
        content_lists: Vec::new(),
        subtree: None,
    };
    match target {
        "pack_header" => {
            let mut s = vec![148, 0];
            s.extend(cbor(to_cbor(&Header {
                version: 1,
                blobs: seed_entries(),
            })));
            vec![s]
        }
        "index_file" => vec![
            cbor(to_cbor(&IndexFile {
                version: 1,
                packs: vec![IndexPack {
                    id: Id([4; 32]),
                    size: 200,
                    blobs: seed_entries(),
                }],
                supersedes: vec![Id([5; 32])],
                condemned: None,
            })),
            cbor(to_cbor(&IndexFile {
                version: 1,
                condemned: Some(Condemned {
                    time: "2026-01-01T00:00:00Z".into(),
                    packs: vec![Id([6; 32])],
                    index_files: Vec::new(),
                    leases: vec!["x".into()],
                }),
                ..Default::default()
            })),
        ],
        "tree" => vec![
            cbor(to_cbor(&Tree {
                nodes: vec![
                    node.clone(),
                    Node {
                        name: b"b".to_vec(),
                        kind: NodeKind::Dir,
                        subtree: Some(Id([8; 32])),
                        ..node
                    },
                ],
            })),
            cbor(to_cbor(&ContentList {
                ids: vec![Id([1; 32])],
            })),
            cbor(format::compress(&cbor(to_cbor(&Tree::default())), 3)),
        ],
        "snapshot" => vec![cbor(to_cbor(&Snapshot {
            version: 1,
            time: "2026-01-01T00:00:00Z".into(),
            host: "h".into(),
            user: "u".into(),
            tenant: "t".into(),
            kind: SnapshotKind::Files,
            paths: vec!["/".into()],
            tags: vec![],
            parent: None,
            tree: Id([1; 32]),
            summary: Summary::default(),
            program_version: "0".into(),
            incomplete: false,
            command: vec![],
            pg: None,
            original: None,
        }))],
        "key_slot" => {
            let params = KdfParams {
                memory_kib: 8,
                iterations: 1,
                parallelism: 1,
            };
            match KeySlot::create(&MasterKey::from_bytes([1; 32]), b"pw", params, "h", "u") {
                Ok((_, bytes)) => vec![bytes],
                Err(_) => Vec::new(),
            }
        }
        "config" => vec![cbor(to_cbor(&Config {
            version: 1,
            id: Id([1; 32]),
            tenant: "t".into(),
            chunker: ChunkerConfig::default(),
            pack_size: 1 << 24,
            compression: 1,
            created: "2026-01-01T00:00:00Z".into(),
        }))],
        "lease" => vec![cbor(to_cbor(&Lease {
            kind: "backup".into(),
            host: "fuzz-host".into(),
            pid: 1,
            user: "u".into(),
            started: "2026-01-01T00:00:00Z".into(),
            expires: "2026-01-01T00:30:00Z".into(),
            holder: Id([1; 32]),
            nonce: Id([2; 32]),
            boot_id: Some("00000000-0000-0000-0000-000000000001".into()),
            pid_namespace: Some("pid:[4026531836]".into()),
            pid_start: Some(12345),
        }))],
        "envelope" => vec![
            keys()
                .seal_meta(format::index::AAD, b"\x00\xa0")
                .unwrap_or_default(),
            cbor(format::compress(&[b'x'; 200], 3)),
        ],
        _ => Vec::new(),
    }
}

/// Writes every target's seeds into `dir/<target>/` (the corpus folders of `scripts/fuzz`).
pub fn write_seeds(dir: &std::path::Path) -> std::io::Result<()> {
    for (name, _) in TARGETS {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        for s in seeds(name) {
            std::fs::write(d.join(format!("seed-{}", Id::of_bytes(&s).short())), s)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::Rng;

    /// Writes the seed corpus for `scripts/fuzz` into `$CAIRN_FUZZ_SEEDS` (`scripts/fuzz`
    /// runs it as `CAIRN_FUZZ_SEEDS=DIR cargo test -p cairn-repo --lib -- --ignored --exact
    /// fuzzing::tests::write_fuzz_seeds`).
    #[test]
    #[ignore = "writes files for scripts/fuzz, which runs it (command above); needs CAIRN_FUZZ_SEEDS"]
    fn write_fuzz_seeds() {
        let dir = std::env::var_os("CAIRN_FUZZ_SEEDS").unwrap();
        write_seeds(std::path::Path::new(&dir)).unwrap();
    }

    /// A few thousand inputs per target, deterministic: the seeds, random bytes, and the
    /// seeds with bytes flipped, inserted, removed and truncated. The long runs are
    /// `scripts/fuzz`; this keeps the targets (and the decoders' promises) exercised in the
    /// default suite.
    #[test]
    fn fuzz_targets_survive_mutated_inputs() {
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "{name} has no seeds");
            let mut rng = Rng::new(name.len() as u64);
            for s in &seeds {
                target(s);
            }
            for i in 0..1500u32 {
                let mut input = if i % 5 == 0 {
                    let n = rng.below(300) as usize;
                    rng.bytes(n)
                } else {
                    seeds[rng.below(seeds.len() as u64) as usize].clone()
                };
                for _ in 0..1 + rng.below(4) {
                    if input.is_empty() {
                        input.push(rng.next_u64() as u8);
                    }
                    let at = rng.below(input.len() as u64) as usize;
                    match rng.below(5) {
                        0 => input[at] ^= 1 << rng.below(8),
                        1 => input[at] = rng.next_u64() as u8,
                        2 => input.insert(at, rng.next_u64() as u8),
                        3 => {
                            input.remove(at);
                        }
                        _ => input.truncate(at),
                    }
                }
                target(&input);
            }
        }
    }
}
