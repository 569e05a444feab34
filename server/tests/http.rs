#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The server over HTTP, as the built binary on 127.0.0.1:0: the isolation matrix (every
//! access level x every route x own and foreign tenant), path spelling attacks, create-only
//! uploads, upload checks, ranged reads, listings and the users file.

mod common;

use std::path::Path;

use common::{add_user, blake3_hex, sha256_hex, Server};

const TENANTS: [&str; 2] = ["alpha", "beta"];
const TYPES: [&str; 5] = ["keys", "data", "index", "snapshots", "locks"];
const V1: &str = "application/vnd.x.restic.rest.v1";
const V2: &str = "application/vnd.x.restic.rest.v2";

fn pw(user: &str) -> String {
    format!("pw-{user}")
}

/// The full user of a tenant, used to prepare and check state around each request.
fn admin(t: &str) -> String {
    format!("{t}-full")
}

/// A server with users of every access level on alpha, a full user on beta, and a metrics
/// user; each tenant holds a config and one object of every type.
fn seeded(dir: &Path, extra: &[&str]) -> Server {
    let users = dir.join("users");
    for access in ["read", "append", "full"] {
        let name = format!("alpha-{access}");
        add_user(&users, &name, access, Some("alpha"), &pw(&name));
    }
    add_user(&users, "beta-full", "full", Some("beta"), &pw("beta-full"));
    add_user(&users, "prom", "metrics", None, &pw("prom"));
    let mut args = vec!["--users", users.to_str().unwrap()];
    args.extend_from_slice(extra);
    let s = Server::start(&dir.join("storage"), &args);
    for t in TENANTS {
        let a = admin(t);
        let r = s
            .req("POST", &format!("/{t}/?create=true"))
            .auth(&a, &pw(&a))
            .send();
        assert_eq!(r.status, 200);
        let r = s
            .req("POST", &format!("/{t}/config"))
            .auth(&a, &pw(&a))
            .body(format!("config of {t}").as_bytes())
            .send();
        assert_eq!(r.status, 200);
        for ty in TYPES {
            put(&s, &a, t, ty, &seed(t, ty));
        }
    }
    s
}

fn seed(t: &str, ty: &str) -> Vec<u8> {
    format!("seed object of {t}/{ty}").into_bytes()
}

fn put(s: &Server, user: &str, t: &str, ty: &str, body: &[u8]) -> u16 {
    s.req("POST", &format!("/{t}/{ty}/{}", sha256_hex(body)))
        .auth(user, &pw(user))
        .body(body)
        .send()
        .status
}

fn exists(s: &Server, t: &str, path: &str) -> bool {
    let a = admin(t);
    let r = s.req("HEAD", path).auth(&a, &pw(&a)).send();
    assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
    r.status == 200
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Read,
    Create,
    Delete { lock: bool },
}

/// Who sends a request in the matrix.
#[derive(Clone, Copy, Debug)]
enum Who {
    User(&'static str),
    WrongPassword(&'static str),
    Nobody,
}

fn expected(who: Who, t: &str, kind: Kind) -> u16 {
    let name = match who {
        Who::Nobody | Who::WrongPassword(_) => return 401,
        Who::User(n) => n,
    };
    if name == "prom" || !name.starts_with(&format!("{t}-")) {
        return 403;
    }
    let allowed = match (name.rsplit('-').next().unwrap(), kind) {
        (_, Kind::Read) => true,
        ("read", _) => false,
        ("append", Kind::Create) => true,
        ("append", Kind::Delete { lock }) => lock,
        ("full", _) => true,
        other => panic!("{other:?}"),
    };
    if allowed {
        200
    } else {
        403
    }
}

#[test]
fn isolation_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(dir.path(), &[]);
    let whos = [
        Who::User("alpha-read"),
        Who::User("alpha-append"),
        Who::User("alpha-full"),
        Who::User("beta-full"),
        Who::User("prom"),
        Who::WrongPassword("alpha-full"),
        Who::Nobody,
    ];
    let mut n = 0u32;
    let mut checked = 0u32;
    for who in whos {
        for t in TENANTS {
            let a = admin(t);
            // (method, path, body, kind); bodies of creates are fresh each time.
            let mut cases: Vec<(String, String, Vec<u8>, Kind)> = vec![
                (
                    "POST".into(),
                    format!("/{t}/?create=true"),
                    vec![],
                    Kind::Create,
                ),
                ("HEAD".into(), format!("/{t}/config"), vec![], Kind::Read),
                ("GET".into(), format!("/{t}/config"), vec![], Kind::Read),
                (
                    "POST".into(),
                    format!("/{t}/config"),
                    b"new config".to_vec(),
                    Kind::Create,
                ),
                (
                    "DELETE".into(),
                    format!("/{t}/config"),
                    vec![],
                    Kind::Delete { lock: false },
                ),
            ];
            for ty in TYPES {
                let name = sha256_hex(&seed(t, ty));
                n += 1;
                let fresh = format!("fresh {n} {who:?} {t} {ty}").into_bytes();
                cases.push(("GET".into(), format!("/{t}/{ty}/"), vec![], Kind::Read));
                cases.push((
                    "HEAD".into(),
                    format!("/{t}/{ty}/{name}"),
                    vec![],
                    Kind::Read,
                ));
                cases.push((
                    "GET".into(),
                    format!("/{t}/{ty}/{name}"),
                    vec![],
                    Kind::Read,
                ));
                cases.push((
                    "POST".into(),
                    format!("/{t}/{ty}/{}", sha256_hex(&fresh)),
                    fresh,
                    Kind::Create,
                ));
                cases.push((
                    "DELETE".into(),
                    format!("/{t}/{ty}/{name}"),
                    vec![],
                    Kind::Delete {
                        lock: ty == "locks",
                    },
                ));
            }
            for (method, path, body, kind) in cases {
                let is_config = path.ends_with("/config");
                // Prepare: a create finds its name free, a delete finds its object present.
                if method == "POST" && is_config {
                    let r = s.req("DELETE", &path).auth(&a, &pw(&a)).send();
                    assert_eq!(r.status, 200);
                }
                if kind != Kind::Create && !is_config {
                    if let Some(ty) = TYPES.iter().find(|ty| path.contains(&format!("/{ty}/"))) {
                        put(&s, &a, t, ty, &seed(t, ty));
                    }
                }
                let mut req = s.req(&method, &path).body(&body);
                req = match who {
                    Who::User(u) => req.auth(u, &pw(u)),
                    Who::WrongPassword(u) => req.auth(u, "not the password"),
                    Who::Nobody => req,
                };
                let r = req.send();
                let want = expected(who, t, kind);
                assert_eq!(r.status, want, "{who:?} {method} {path}");
                if want == 401 {
                    assert!(r.header("www-authenticate").is_some());
                }
                checked += 1;
                // What the request did to storage, seen by the tenant's full user.
                let object_path = !path.ends_with('/') && !path.contains('?');
                if object_path {
                    match kind {
                        Kind::Create => {
                            assert_eq!(exists(&s, t, &path), want == 200, "{who:?} {method} {path}")
                        }
                        Kind::Delete { .. } => {
                            assert_eq!(exists(&s, t, &path), want != 200, "{who:?} {method} {path}")
                        }
                        Kind::Read => assert!(exists(&s, t, &path)),
                    }
                }
                if want == 200 && method == "GET" && !path.ends_with('/') && !is_config {
                    let ty = path.split('/').nth(2).unwrap();
                    assert_eq!(r.body, seed(t, ty));
                }
                // The config stays in place for the next case.
                if is_config && !exists(&s, t, &format!("/{t}/config")) {
                    let r = s
                        .req("POST", &format!("/{t}/config"))
                        .auth(&a, &pw(&a))
                        .body(format!("config of {t}").as_bytes())
                        .send();
                    assert_eq!(r.status, 200);
                }
            }
        }
    }
    // A tenant nobody was given, existing or not, is refused like any other foreign one.
    for path in ["/gamma/config", "/gamma/data/", "/gamma/?create=true"] {
        for u in ["alpha-full", "alpha-read"] {
            let method = if path.contains('?') { "POST" } else { "GET" };
            assert_eq!(
                s.req(method, path).auth(u, &pw(u)).send().status,
                403,
                "{u} {path}"
            );
        }
    }
    // The metrics user reaches only /metrics.
    let r = s.req("GET", "/metrics").auth("prom", &pw("prom")).send();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for line in [
        "cairn_server_objects_write_total{tenant=\"alpha\",type=\"data\"}",
        "cairn_server_objects_read_total{tenant=\"beta\",type=\"keys\"}",
        "cairn_server_requests_refused_total{status=\"401\"}",
        "cairn_server_requests_refused_total{status=\"403\"}",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert_eq!(s.req("GET", "/metrics").send().status, 401);
    assert_eq!(
        s.req("POST", "/metrics")
            .auth("prom", &pw("prom"))
            .send()
            .status,
        405
    );
    assert_eq!(
        s.req("GET", "/metrics")
            .auth("alpha-full", &pw("alpha-full"))
            .send()
            .status,
        403
    );
    assert!(checked > 400, "{checked}");
}

/// Every file below a tenant's folder, with its content.
fn snapshot_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn path_spelling_attacks_reach_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(dir.path(), &[]);
    let beta_before = snapshot_of(&dir.path().join("storage/beta"));
    let key = sha256_hex(&seed("beta", "keys"));
    let body = b"smuggled";
    let smuggled = sha256_hex(body);
    let long = "a".repeat(5000);
    let attacks: Vec<String> = vec![
        "/alpha/../beta/config".into(),
        "/alpha/%2e%2e/beta/config".into(),
        "/alpha/%2E%2E/beta/config".into(),
        "/alpha/.%2e/beta/config".into(),
        "/alpha%2f..%2fbeta/config".into(),
        "/alpha/..%2fbeta%2fconfig".into(),
        "/alpha%2Fconfig".into(),
        "/%61lpha/config".into(),
        "//beta/config".into(),
        "/alpha//config".into(),
        "/alpha/./config".into(),
        "/./alpha/config".into(),
        "/alpha/config/.".into(),
        "/alpha/config/".into(),
        "/alpha/config%00".into(),
        "/alpha/config%00/../../beta/config".into(),
        format!("/alpha/keys/{key}%00"),
        format!("/alpha/keys/../../beta/keys/{key}"),
        format!("/alpha/data/{}/../../../beta/keys/{key}", &key[..2]),
        format!("/alpha/data/{}/{key}", &key[..2]),
        format!("/alpha/keys/{}", key.to_uppercase()),
        format!("/alpha/keys/{key}0"),
        format!("/alpha/keys/{long}"),
        format!("/{long}/config"),
        "/alpha/KEYS/".into(),
        "/alpha\\..\\beta\\config".into(),
        "/alpha/..\\beta/config".into(),
        "/tmp/config".into(),
        "/cairn-repository".into(),
        "/alpha/../cairn-repository".into(),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        "/alpha/%c0%ae%c0%ae/beta/config".into(),
        "/alpha/%e2%80%a5/beta/config".into(),
        "/ａlpha/config".into(),
        "/alpha/ｃonfig".into(),
        "/alpha/config\u{2024}".into(),
        "http://evil/alpha/../beta/config".into(),
        "*".into(),
    ];
    let user = "alpha-full";
    for path in &attacks {
        for method in ["GET", "HEAD", "DELETE"] {
            let r = s.req(method, path).auth(user, &pw(user)).send();
            assert!(
                matches!(r.status, 400 | 403 | 404 | 405),
                "{method} {path}: {}",
                r.status
            );
        }
        let p = path.replace("config", &format!("keys/{smuggled}"));
        let r = s.req("POST", &p).auth(user, &pw(user)).body(body).send();
        assert!(
            matches!(r.status, 400 | 403 | 404 | 405),
            "POST {p}: {}",
            r.status
        );
        // Without credentials the same spellings are 401 (or refused by HTTP parsing).
        let r = s.req("GET", path).send();
        assert!(
            matches!(r.status, 400 | 401 | 404),
            "anonymous GET {path}: {}",
            r.status
        );
    }
    // Raw bytes no client would send: NUL, bare high bytes, a space in the path.
    for raw in [
        &b"/alpha/config\0"[..],
        b"/alpha/\0/../beta/config",
        b"/\xff\xfe/config",
        b"/alpha/\xc0\xae\xc0\xae/beta/config",
    ] {
        let r = common::Req::send_raw_path(&s.addr, "GET", raw, "");
        assert!(matches!(r.status, 400 | 404), "{raw:?}: {}", r.status);
    }
    // Nothing of beta changed, and nothing smuggled was stored anywhere.
    assert_eq!(snapshot_of(&dir.path().join("storage/beta")), beta_before);
    for (path, _) in snapshot_of(&dir.path().join("storage")) {
        assert!(!path.contains(&smuggled), "{path}");
    }
    // The genuine spelling still works.
    let r = s.req("GET", "/alpha/config").auth(user, &pw(user)).send();
    assert_eq!((r.status, r.body), (200, b"config of alpha".to_vec()));
}

#[test]
fn uploads_are_create_only_and_checked_against_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("st"),
        &["--no-auth", "--max-object-size", "4KiB"],
    );
    let body = b"first bytes".to_vec();
    let name = sha256_hex(&body);
    let path = format!("/t/snapshots/{name}");
    assert_eq!(s.req("POST", &path).body(&body).send().status, 200);
    assert_eq!(s.req("POST", &path).body(&body).send().status, 403);
    assert_eq!(s.req("POST", &path).body(b"other bytes").send().status, 403);
    assert_eq!(s.req("GET", &path).send().body, body);

    // The config is named by role: not checked, but never replaced.
    assert_eq!(s.req("POST", "/t/config").body(b"one").send().status, 200);
    assert_eq!(s.req("POST", "/t/config").body(b"two").send().status, 403);
    assert_eq!(s.req("GET", "/t/config").send().body, b"one");

    // A body that does not hash to its name is refused and nothing is stored.
    let wrong = format!("/t/data/{}", sha256_hex(b"something else"));
    let r = s.req("POST", &wrong).body(b"these bytes").send();
    assert_eq!(r.status, 400);
    assert_eq!(s.req("HEAD", &wrong).send().status, 404);
    // BLAKE3 names (Cairn clients) are accepted as well as SHA-256 ones (restic).
    let b3 = format!("/t/data/{}", blake3_hex(b"cairn pack"));
    assert_eq!(s.req("POST", &b3).body(b"cairn pack").send().status, 200);
    assert_eq!(
        s.req("HEAD", &b3).send().header("content-length"),
        Some("10")
    );

    // Lengths: required, and bounded.
    let fresh = b"no length";
    let r = s
        .req("POST", &format!("/t/data/{}", sha256_hex(fresh)))
        .body(fresh)
        .without_content_length()
        .send();
    assert_eq!(r.status, 411);
    let big = vec![7u8; 5000];
    let r = s
        .req("POST", &format!("/t/data/{}", sha256_hex(&big)))
        .body(&big)
        .send();
    assert_eq!(r.status, 413);

    // Deletes are idempotent.
    assert_eq!(s.req("DELETE", &path).send().status, 200);
    assert_eq!(s.req("DELETE", &path).send().status, 200);
    assert_eq!(s.req("HEAD", &path).send().status, 404);
    assert_eq!(s.req("GET", &path).send().status, 404);
    assert_eq!(s.req("DELETE", "/t/config").send().status, 200);
    assert_eq!(s.req("DELETE", "/t/config").send().status, 200);
    assert_eq!(s.req("HEAD", "/t/config").send().status, 404);

    // Methods and queries the protocol does not have.
    let r = s.req("PUT", "/t/config").body(b"x").send();
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some());
    assert_eq!(s.req("DELETE", "/t/").send().status, 405);
    assert_eq!(s.req("POST", "/t/?create=false").send().status, 400);
    assert_eq!(s.req("POST", "/t/data/").send().status, 405);
    assert_eq!(s.req("GET", "/healthz").send().status, 200);

    // A server pinned to SHA-256 names refuses BLAKE3 ones.
    drop(s);
    let s = Server::start(
        &dir.path().join("st"),
        &["--no-auth", "--name-hash", "sha256"],
    );
    let b3 = format!("/t/data/{}", blake3_hex(b"another pack"));
    assert_eq!(s.req("POST", &b3).body(b"another pack").send().status, 400);
}

#[test]
fn ranged_reads_and_listings() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("st"), &["--no-auth"]);
    let body: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let name = sha256_hex(&body);
    let path = format!("/t/data/{name}");
    assert_eq!(s.req("POST", &path).body(&body).send().status, 200);

    let r = s.req("GET", &path).send();
    assert_eq!((r.status, &r.body), (200, &body));
    let r = s.req("HEAD", &path).send();
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    let range = |spec: &str| s.req("GET", &path).header("Range", spec).send();
    let r = range("bytes=0-");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 0-999/1000"))
    );
    assert_eq!(r.body, body);
    let r = range("bytes=10-19");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 10-19/1000"))
    );
    assert_eq!(r.body, &body[10..20]);
    let r = range("bytes=990-");
    assert_eq!(r.body, &body[990..]);
    // An end past the object is cut to it; a start past it is unsatisfiable.
    let r = range("bytes=995-5000");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 995-999/1000"))
    );
    assert_eq!(r.body, &body[995..]);
    let r = range("bytes=1000-");
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */1000"))
    );
    let r = range("bytes=18446744073709551615-");
    assert_eq!(r.status, 416);
    let r = range("bytes=-4");
    assert_eq!((r.status, &r.body[..]), (206, &body[996..]));
    let r = range("bytes=0-99999999999999999999999");
    assert_eq!((r.status, &r.body), (200, &body));
    let r = s
        .req("GET", &format!("/t/data/{}", sha256_hex(b"missing")))
        .header("Range", "bytes=0-")
        .send();
    assert_eq!(r.status, 404);

    // Listings: v2 (exact content type, sizes) or v1 (names) by Accept; a type with no
    // objects is an empty list.
    let small = b"lock bytes";
    assert_eq!(
        s.req("POST", &format!("/t/locks/{}", sha256_hex(small)))
            .body(small)
            .send()
            .status,
        200
    );
    let r = s.req("GET", "/t/data/").header("Accept", V2).send();
    assert_eq!((r.status, r.header("content-type")), (200, Some(V2)));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!([{ "name": name, "size": 1000 }]));
    for accept in [Some(V1), None] {
        let mut q = s.req("GET", "/t/data/");
        if let Some(a) = accept {
            q = q.header("Accept", a);
        }
        let r = q.send();
        assert_eq!((r.status, r.header("content-type")), (200, Some(V1)));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v, serde_json::json!([name]));
    }
    let r = s.req("GET", "/t/locks/").header("Accept", V2).send();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{ "name": sha256_hex(small), "size": small.len() }])
    );
    for ty in ["keys", "index", "snapshots"] {
        let r = s
            .req("GET", &format!("/t/{ty}/"))
            .header("Accept", V2)
            .send();
        assert_eq!((r.status, &r.body[..]), (200, &b"[]"[..]), "{ty}");
        let r = s
            .req("GET", &format!("/empty/{ty}/"))
            .header("Accept", V2)
            .send();
        assert_eq!((r.status, &r.body[..]), (200, &b"[]"[..]), "{ty}");
    }
}

#[test]
fn starting_needs_a_private_users_file_unless_auth_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--storage"])
            .arg(&st)
            .args(args)
            .env_remove("CAIRN_SERVER_USERS")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-auth"));
    let users = dir.path().join("users");
    add_user(&users, "u", "full", Some("t"), "pw");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["--users", users.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    let out = run(&["--users", users.to_str().unwrap(), "--no-auth"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--listen"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn users_are_managed_by_the_cli_and_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "ann", "full", Some("t"), "pw-ann");
    let s = Server::start(
        &dir.path().join("st"),
        &["--users", users.to_str().unwrap()],
    );
    assert_eq!(
        s.req("GET", "/t/keys/").auth("ann", "pw-ann").send().status,
        200
    );
    assert_eq!(
        s.req("GET", "/t/keys/").auth("bob", "pw-bob").send().status,
        401
    );

    add_user(&users, "bob", "read", Some("t"), "pw-bob");
    let list = std::process::Command::new(common::BIN)
        .args(["user", "list", "--users"])
        .arg(&users)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "ann\tfull\tt\nbob\tread\tt\n"
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        !text.contains("pw-bob") && text.contains("$argon2id$"),
        "{text}"
    );
    // Not before the reload...
    assert_eq!(
        s.req("GET", "/t/keys/").auth("bob", "pw-bob").send().status,
        401
    );
    s.signal(nix::sys::signal::Signal::SIGHUP);
    let mut status = 0;
    for _ in 0..100 {
        status = s.req("GET", "/t/keys/").auth("bob", "pw-bob").send().status;
        if status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status, 200);

    // A removed user is refused after the reload, even with a verification cached.
    let out = std::process::Command::new(common::BIN)
        .args(["user", "remove", "ann", "--users"])
        .arg(&users)
        .output()
        .unwrap();
    assert!(out.status.success());
    s.signal(nix::sys::signal::Signal::SIGHUP);
    for _ in 0..100 {
        status = s.req("GET", "/t/keys/").auth("ann", "pw-ann").send().status;
        if status == 401 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status, 401);
    // A duplicate add is refused and leaves the file as it was.
    let pwf = dir.path().join("pw");
    std::fs::write(&pwf, "x\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "user", "add", "bob", "--access", "full", "--tenant", "t", "--users",
        ])
        .arg(&users)
        .arg("--password-file")
        .arg(&pwf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::read_to_string(&users)
        .unwrap()
        .contains("bob:read:t:"));

    // SIGTERM stops the server cleanly.
    let mut s = s;
    s.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(s.wait_exit(), Some(0));
}

#[test]
fn quotas_refuse_what_does_not_fit_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let args = ["--no-auth", "--quota", "q=4KiB"];
    let s = Server::start(&st, &args);
    let a = vec![1u8; 3000];
    let b = vec![2u8; 2000];
    let path = |body: &[u8]| format!("/q/data/{}", sha256_hex(body));
    assert_eq!(s.req("POST", &path(&a)).body(&a).send().status, 200);
    assert_eq!(s.req("POST", &path(&b)).body(&b).send().status, 507);
    assert_eq!(s.req("HEAD", &path(&b)).send().status, 404);
    // Other tenants are not limited.
    assert_eq!(s.req("POST", "/free/data/x").body(&b).send().status, 404);
    let free = format!("/free/data/{}", sha256_hex(&b));
    assert_eq!(s.req("POST", &free).body(&b).send().status, 200);
    // A refused create (the name exists) gives its reservation back.
    assert_eq!(s.req("POST", &path(&a)).body(&a).send().status, 403);
    let small = vec![3u8; 1000];
    assert_eq!(s.req("POST", &path(&small)).body(&small).send().status, 200);
    // The figure in use is read from storage at start: still full after a restart.
    drop(s);
    let s = Server::start(&st, &args);
    let c = vec![4u8; 200];
    assert_eq!(s.req("POST", &path(&c)).body(&c).send().status, 507);
    // Deletes give space back, once each.
    assert_eq!(s.req("DELETE", &path(&a)).send().status, 200);
    assert_eq!(s.req("DELETE", &path(&a)).send().status, 200);
    assert_eq!(s.req("POST", &path(&b)).body(&b).send().status, 200);
    assert_eq!(s.req("POST", &path(&c)).body(&c).send().status, 200);
    let d = vec![5u8; 1000];
    assert_eq!(s.req("POST", &path(&d)).body(&d).send().status, 507);
}

#[test]
fn stored_snapshots_get_a_receipt_with_the_server_time() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "ann", "append", Some("t"), "pw-ann");
    let receipts = dir.path().join("receipts");
    let s = Server::start(
        &dir.path().join("st"),
        &[
            "--users",
            users.to_str().unwrap(),
            "--receipts",
            receipts.to_str().unwrap(),
        ],
    );
    let snap = b"sealed snapshot";
    let name = sha256_hex(snap);
    let path = format!("/t/snapshots/{name}");
    assert_eq!(
        s.req("POST", &path)
            .auth("ann", "pw-ann")
            .body(snap)
            .send()
            .status,
        200
    );
    // Refused and non-snapshot uploads leave no receipt.
    assert_eq!(
        s.req("POST", &path)
            .auth("ann", "pw-ann")
            .body(snap)
            .send()
            .status,
        403
    );
    let pack = b"pack";
    let r = s
        .req("POST", &format!("/t/data/{}", sha256_hex(pack)))
        .auth("ann", "pw-ann")
        .body(pack)
        .send();
    assert_eq!(r.status, 200);
    let text = std::fs::read_to_string(&receipts).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["tenant"], "t");
    assert_eq!(lines[0]["snapshot"], name.as_str());
    assert_eq!(lines[0]["size"], snap.len());
    assert_eq!(lines[0]["user"], "ann");
    let received: jiff::Timestamp = lines[0]["received"].as_str().unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(received);
    assert!(age.as_secs() < 60, "{age:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&receipts).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn uploads_beyond_the_memory_budget_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let s = Server::start(
        &st,
        &[
            "--no-auth",
            "--max-object-size",
            "64KiB",
            "--max-upload-memory",
            "100KiB",
        ],
    );
    let handles: Vec<_> = (0..6u8)
        .map(|i| {
            let send = Server::req_to(&s.addr);
            std::thread::spawn(move || {
                let body = vec![i; 60 * 1024];
                send("POST", &format!("/t/data/{}", sha256_hex(&body)), &body)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(200));
    }
    drop(s);
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--storage"])
        .arg(&st)
        .args(["--max-object-size", "2MiB", "--max-upload-memory", "1MiB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
