//! The conformance suite that every [`Backend`] and every [`Root`] must pass (fs, memory,
//! and later S3 and the REST client). Each backend's tests call [`run`] on an empty
//! namespace and [`run_root`] on an empty root.

use bytes::Bytes;

use super::{Backend, FileType, Root};
use crate::error::ErrorKind;
use crate::id::Id;

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("conformance: {what}"))
    }
}

/// Runs every contract check on an empty namespace; returns the first violation.
pub async fn run(b: &dyn Backend) -> Result<(), String> {
    let e = |x: crate::error::Error| format!("conformance: unexpected error: {x}");
    for ft in FileType::ALL {
        check(
            b.list(ft).await.map_err(e)?.is_empty(),
            "a fresh namespace lists nothing",
        )?;
    }

    let data = Bytes::from(
        (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let name = Id::of_bytes(&data).to_hex();
    b.create(FileType::Pack, &name, data.clone())
        .await
        .map_err(e)?;

    // Create-only.
    match b
        .create(FileType::Pack, &name, Bytes::from_static(b"other"))
        .await
    {
        Err(x) if x.kind() == ErrorKind::AlreadyExists => {}
        other => return Err(format!("conformance: second create gave {other:?}")),
    }
    check(
        b.read(FileType::Pack, &name).await.map_err(e)? == data,
        "read returns what was created and a refused create changes nothing",
    )?;

    check(
        b.read_range(FileType::Pack, &name, 1000, 500)
            .await
            .map_err(e)?
            == data.slice(1000..1500),
        "ranged read",
    )?;
    // A backend that also reads on the calling thread must give the same answers there.
    if let Some(r) = b.read_direct(FileType::Pack, &name) {
        check(r.map_err(e)? == data, "direct read")?;
        let missing = Id::of_bytes(b"missing").to_hex();
        let gone = b.read_direct(FileType::Index, &missing);
        check(
            matches!(gone, Some(Err(ref x)) if x.kind() == ErrorKind::NotFound),
            "direct read of a missing object is NotFound",
        )?;
    }
    if let Some(r) = b.stat_direct(FileType::Pack, &name) {
        check(r.map_err(e)? == 100_000, "direct stat")?;
        let missing = Id::of_bytes(b"missing").to_hex();
        let gone = b.stat_direct(FileType::Pack, &missing);
        check(
            matches!(gone, Some(Err(ref x)) if x.kind() == ErrorKind::NotFound),
            "direct stat of a missing object is NotFound",
        )?;
    }
    if let Some(r) = b.read_range_direct(FileType::Pack, &name, 1000, 500) {
        check(
            r.map_err(e)? == data.slice(1000..1500),
            "direct ranged read",
        )?;
        let to_end = b.read_range_direct(FileType::Pack, &name, 99_990, 10);
        check(
            matches!(to_end, Some(Ok(ref got)) if *got == data.slice(99_990..)),
            "direct ranged read to the end",
        )?;
        let past = b.read_range_direct(FileType::Pack, &name, 99_990, 20);
        check(
            matches!(past, Some(Err(ref x)) if x.kind() == ErrorKind::Corrupt),
            "direct read past the end is Corrupt",
        )?;
        let missing = Id::of_bytes(b"missing").to_hex();
        let gone = b.read_range_direct(FileType::Index, &missing, 0, 1);
        check(
            matches!(gone, Some(Err(ref x)) if x.kind() == ErrorKind::NotFound),
            "direct read of a missing object is NotFound",
        )?;
    }
    check(
        b.read_range(FileType::Pack, &name, 99_990, 10)
            .await
            .map_err(e)?
            == data.slice(99_990..),
        "ranged read to the end",
    )?;
    match b.read_range(FileType::Pack, &name, 99_990, 20).await {
        Err(x) if x.kind() == ErrorKind::Corrupt => {}
        other => {
            return Err(format!(
                "conformance: read past the end gave {:?}",
                other.map(|b| b.len())
            ))
        }
    }
    check(
        b.stat(FileType::Pack, &name).await.map_err(e)? == 100_000,
        "stat gives the size",
    )?;

    let listed = b.list(FileType::Pack).await.map_err(e)?;
    check(
        listed.len() == 1 && listed[0].name == name && listed[0].size == 100_000,
        "list shows the pack with its size",
    )?;
    check(
        b.list(FileType::Index).await.map_err(e)?.is_empty(),
        "types are separate",
    )?;

    // The same name under different types names different objects (the same bytes here:
    // servers refuse an object whose name is not the hash of its bytes); removing one
    // leaves the other, as checked below.
    b.create(FileType::Snapshot, &name, data.clone())
        .await
        .map_err(e)?;
    check(
        b.read(FileType::Snapshot, &name).await.map_err(e)? == data,
        "types do not collide",
    )?;

    let missing = Id::of_bytes(b"missing").to_hex();
    for result in [
        b.read(FileType::Index, &missing).await.map(|_| ()),
        b.stat(FileType::Index, &missing).await.map(|_| ()),
        b.read_range(FileType::Index, &missing, 0, 1)
            .await
            .map(|_| ()),
    ] {
        match result {
            Err(x) if x.kind() == ErrorKind::NotFound => {}
            other => return Err(format!("conformance: missing object gave {other:?}")),
        }
    }
    match b.create(FileType::Pack, "../escape", Bytes::new()).await {
        Err(x) if x.kind() == ErrorKind::InvalidInput => {}
        other => return Err(format!("conformance: invalid name gave {other:?}")),
    }

    // Config has a fixed name.
    b.create(FileType::Config, "config", Bytes::from_static(b"cfg"))
        .await
        .map_err(e)?;
    check(
        b.list(FileType::Config).await.map_err(e)?.len() == 1,
        "config is listed",
    )?;

    // Many objects, listed completely.
    let mut names = Vec::new();
    for i in 0..300u32 {
        let d = Bytes::from(i.to_le_bytes().to_vec());
        let n = Id::of_bytes(&d).to_hex();
        b.create(FileType::Index, &n, d).await.map_err(e)?;
        names.push(n);
    }
    let mut listed: Vec<String> = b
        .list(FileType::Index)
        .await
        .map_err(e)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    listed.sort();
    names.sort();
    check(listed == names, "list returns every object")?;

    // Remove is idempotent.
    b.remove(FileType::Pack, &name).await.map_err(e)?;
    b.remove(FileType::Pack, &name).await.map_err(e)?;
    check(
        b.list(FileType::Pack).await.map_err(e)?.is_empty(),
        "removed objects are not listed",
    )?;
    match b.read(FileType::Pack, &name).await {
        Err(x) if x.kind() == ErrorKind::NotFound => {}
        other => return Err(format!("conformance: read after remove gave {other:?}")),
    }
    check(
        b.read(FileType::Snapshot, &name).await.map_err(e)? == data,
        "removing an object leaves the one of the same name in another type",
    )?;
    // Empty objects are objects.
    let empty = Id::of_bytes(b"").to_hex();
    b.create(FileType::Lock, &empty, Bytes::new())
        .await
        .map_err(e)?;
    check(
        b.read(FileType::Lock, &empty).await.map_err(e)?.is_empty(),
        "empty object",
    )?;
    Ok(())
}

/// Runs every contract check of a [`Root`] on an empty one (no marker, no tenants); returns
/// the first violation. Also runs [`run`] on one of its tenants.
pub async fn run_root(root: &dyn Root) -> Result<(), String> {
    let e = |x: crate::error::Error| format!("conformance: unexpected error: {x}");
    check(
        !root.has_marker().await.map_err(e)?,
        "an empty root has no marker",
    )?;
    check(
        root.tenants().await.map_err(e)?.is_empty(),
        "an empty root has no tenants",
    )?;
    root.write_marker(Bytes::from_static(b"{\"format\":\"cairn\"}"))
        .await
        .map_err(e)?;
    check(root.has_marker().await.map_err(e)?, "the marker is found")?;

    // Names that are not tenant names are refused before any storage is touched: none may
    // reach the marker, the staging folder, the root itself or another tenant.
    for bad in [
        "",
        ".",
        "..",
        "../a",
        "a/b",
        "tmp",
        "cairn-repository",
        "-a",
    ] {
        match root.tenant(bad) {
            Err(x) if x.kind() == ErrorKind::InvalidInput => {}
            Err(x) => return Err(format!("conformance: tenant {bad:?} gave {x}")),
            Ok(_) => return Err(format!("conformance: tenant {bad:?} was accepted")),
        }
    }

    // A tenant is listed once it has a config, and only then.
    let a = root.tenant("alpha").map_err(e)?;
    let b = root.tenant("beta").map_err(e)?;
    let pack = Bytes::from_static(b"pack of alpha");
    let pack_name = Id::of_bytes(&pack).to_hex();
    a.create(FileType::Pack, &pack_name, pack.clone())
        .await
        .map_err(e)?;
    check(
        root.tenants().await.map_err(e)?.is_empty(),
        "a namespace without a config is not a tenant",
    )?;
    a.create(FileType::Config, "config", Bytes::from_static(b"a"))
        .await
        .map_err(e)?;
    b.create(FileType::Config, "config", Bytes::from_static(b"b"))
        .await
        .map_err(e)?;
    check(
        root.tenants().await.map_err(e)? == ["alpha".to_string(), "beta".to_string()],
        "tenants are listed, sorted",
    )?;

    // Namespaces are separate.
    check(
        b.list(FileType::Pack).await.map_err(e)?.is_empty(),
        "one tenant's objects are not listed in another",
    )?;
    match b.read(FileType::Pack, &pack_name).await {
        Err(x) if x.kind() == ErrorKind::NotFound => {}
        other => {
            return Err(format!(
                "conformance: reading another tenant's object gave {:?}",
                other.map(|b| b.len())
            ))
        }
    }
    check(
        b.read(FileType::Config, "config").await.map_err(e)? == Bytes::from_static(b"b"),
        "each tenant reads its own config",
    )?;
    b.remove(FileType::Pack, &pack_name).await.map_err(e)?;
    check(
        a.read(FileType::Pack, &pack_name).await.map_err(e)? == pack,
        "removing in one tenant leaves another's object",
    )?;

    // Every tenant namespace meets the namespace contract.
    run(&*root.tenant("gamma").map_err(e)?).await?;
    check(
        root.has_marker().await.map_err(e)?,
        "tenant writes leave the marker",
    )
}
