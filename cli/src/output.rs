//! Output helpers: standard output that fails instead of panicking, JSON rendering, human
//! sizes and times. Progress is in `progress_bar`.

use std::io::Write;

use cairn_repo::format::tree::{Node, Time};
use serde_json::{json, Value};

/// Writes one line to standard output. Unlike `println!`, a failed write (a closed pipe, a
/// full disk) is an error for the caller to return, never a panic; `main` ends quietly with 0
/// when the error is a closed pipe.
pub fn write_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// `println!` for commands: `outln!("...", ...)` returns from the calling function with the
/// error when standard output cannot be written.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;

pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    // Compact, one document per line: what log shippers and line-based tools expect
    // (`jq .` pretty-prints it for people).
    outln!("{}", serde_json::to_string(v)?);
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// A time for people: local time to the second (`2026-12-01 21:39:22`). JSON keeps RFC 3339
/// in UTC with nanoseconds. An unreadable time is shown as it is.
pub fn human_time(rfc3339: &str) -> String {
    match rfc3339.parse::<jiff::Timestamp>() {
        Ok(ts) => ts
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// [`human_time`] of a node's time.
pub fn human_node_time(t: Time) -> String {
    human_time(&time_string(t))
}

/// A node's time as RFC 3339 in UTC with nanoseconds (for JSON).
pub fn time_string(t: Time) -> String {
    jiff::Timestamp::new(t.0, t.1 as i32)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| format!("{}.{:09}", t.0, t.1))
}

/// A path from raw bytes, shown lossily; JSON also carries the exact bytes when they are
/// not UTF-8.
pub fn path_json(path: &[u8]) -> Value {
    match std::str::from_utf8(path) {
        Ok(s) => json!(s),
        Err(_) => json!(String::from_utf8_lossy(path)),
    }
}

pub fn node_json(path: Option<&[u8]>, n: &Node) -> Value {
    let mut v = json!({
        "name": String::from_utf8_lossy(&n.name),
        "type": n.kind,
        "mode": format!("{:04o}", n.mode),
        "uid": n.uid,
        "gid": n.gid,
        "user": n.user,
        "group": n.group,
        "size": n.size,
        "mtime": time_string(n.mtime),
        "atime": n.atime.map(time_string),
        "ctime": time_string(n.ctime),
        "inode": n.inode,
        "device": n.device,
        "links": n.links,
    });
    if std::str::from_utf8(&n.name).is_err() {
        v["name_hex"] = json!(hex::encode(&n.name));
    }
    if let Some(p) = path {
        v["path"] = path_json(p);
    }
    if let Some(t) = &n.link_target {
        v["link_target"] = json!(String::from_utf8_lossy(t));
    }
    if n.rdev != 0 {
        v["rdev"] = json!(n.rdev);
    }
    if !n.xattrs.is_empty() {
        v["xattrs"] = n.xattrs.iter().map(|x| json!({"name": String::from_utf8_lossy(&x.name), "value_hex": hex::encode(&x.value)})).collect();
    }
    if !n.content.is_empty() {
        v["content"] = json!(n.content);
    }
    if !n.content_lists.is_empty() {
        v["content_lists"] = json!(n.content_lists);
    }
    if let Some(s) = &n.subtree {
        v["subtree"] = json!(s);
    }
    v
}
