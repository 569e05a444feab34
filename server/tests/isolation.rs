#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Isolation over HTTP, with the built binary on 127.0.0.1:0: every access level x every
//! route x own and foreign tenant, checked by status and by what storage holds afterwards;
//! and path spellings that try to reach another tenant or the root.

mod common;

use std::path::Path;

use common::{add_user, sha256_hex, Server};

const TENANTS: [&str; 2] = ["alpha", "beta"];
const TYPES: [&str; 5] = ["keys", "data", "index", "snapshots", "locks"];

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
