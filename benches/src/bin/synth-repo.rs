//! Fills an existing repository with millions of small random data blobs, stored for real
//! (sealed, packed, indexed) but referenced by no snapshot. It prepares the "backup into a
//! repository that already indexes 10 million blobs" measurement in docs/performance.md
//! without spending the hours a real history of that size takes to build.
//!
//! usage: synth-repo REPOSITORY PASSWORD_FILE BLOBS [CACHE_DIR]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cairn_repo::format::blob::{self, SealedBlob};
use cairn_repo::writer::BlobWriter;
use cairn_repo::{BlobKind, Credentials, Error, Location, OpenOptions, Repository, Result};
use rayon::prelude::*;

/// Blobs sealed in parallel per round before being added in order.
const ROUND: u64 = 1 << 16;
/// Plaintext bytes per blob: a 32-byte hash of the blob's number and the number itself.
const BLOB_LEN: usize = 40;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synth-repo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (repo_path, password_file, count) = match args.as_slice() {
        [r, p, n] | [r, p, n, _] => (r, p, n),
        _ => {
            return Err(Error::invalid(
                "usage: synth-repo REPOSITORY PASSWORD_FILE BLOBS [CACHE_DIR]",
            ))
        }
    };
    let count: u64 = count
        .parse()
        .map_err(|_| Error::invalid(format!("BLOBS: not a number: {count}")))?;
    let password = std::fs::read(password_file)
        .map_err(|e| Error::io(format!("reading {password_file}"), e))?;
    let password = password.strip_suffix(b"\n").unwrap_or(&password).to_vec();
    let open = OpenOptions {
        cache_dir: args.get(3).map(PathBuf::from),
        lease_ttl: None,
    };
    let repo = Repository::open(
        &Location::Local(PathBuf::from(repo_path)),
        "default",
        &Credentials::Password(password),
        &open,
    )?;
    repo.sync_index()?;
    let mut writer = BlobWriter::new(&repo, 0);
    let keys = writer.keys().clone();
    let started = Instant::now();
    let mut next = 0u64;
    while next < count {
        let end = (next + ROUND).min(count);
        let sealed: Vec<SealedBlob> = (next..end)
            .into_par_iter()
            .map(|n| {
                let mut plain = [0u8; BLOB_LEN];
                plain[..32].copy_from_slice(blake3::hash(&n.to_le_bytes()).as_bytes());
                plain[32..].copy_from_slice(&n.to_le_bytes());
                let id = keys.blob_id(&plain);
                blob::seal(&keys, BlobKind::Data, id, &plain, 0)
            })
            .collect::<Result<_>>()?;
        for s in sealed {
            writer.add(s)?;
        }
        next = end;
        if next % (1 << 20) < ROUND {
            eprintln!("{next} blobs, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let stats = writer.finish()?;
    eprintln!(
        "added {} blobs ({} bytes stored) in {:.0} s",
        stats.blobs_added,
        stats.bytes_stored,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
