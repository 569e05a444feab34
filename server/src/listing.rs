//! Listings of a type folder in the two versions of restic's REST protocol.
//!
//! The version is chosen by the request's `Accept` header, and the answer's `Content-Type`
//! names the version used, byte for byte: the restic client parses a v2 listing only when
//! the content type equals the v2 string exactly (no parameters such as a charset), and
//! otherwise falls back to v1 and one HEAD per name.

use cairn_store::backend::ObjectInfo;

pub const V1: &str = "application/vnd.x.restic.rest.v1";
pub const V2: &str = "application/vnd.x.restic.rest.v2";

/// Whether the request asks for v2 (any `Accept` value naming it).
pub fn wants_v2(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.split(',').any(|part| part.trim().starts_with(V2)))
}

/// The body and content type of a listing. Names are sorted so answers are stable. A v2
/// entry also carries `received` (seconds since the Unix epoch) when `received` knows the
/// object: when the storage received it, by the server's clock, which a client cannot set
/// (`cairn forget --by-received-time` judges snapshots by it; restic ignores the field).
pub fn render(
    mut objects: Vec<ObjectInfo>,
    v2: bool,
    received: &std::collections::HashMap<String, u64>,
) -> (String, &'static str) {
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    let body = if v2 {
        serde_json::Value::Array(
            objects
                .into_iter()
                .map(|o| match received.get(&o.name) {
                    Some(at) => {
                        serde_json::json!({ "name": o.name, "size": o.size, "received": at })
                    }
                    None => serde_json::json!({ "name": o.name, "size": o.size }),
                })
                .collect(),
        )
    } else {
        serde_json::Value::Array(
            objects
                .into_iter()
                .map(|o| serde_json::Value::String(o.name))
                .collect(),
        )
    };
    (body.to_string(), if v2 { V2 } else { V1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions() {
        let objects = vec![
            ObjectInfo {
                name: "bb".into(),
                size: 2,
            },
            ObjectInfo {
                name: "aa".into(),
                size: 1,
            },
        ];
        let none = std::collections::HashMap::new();
        assert_eq!(
            render(objects.clone(), true, &none),
            (
                r#"[{"name":"aa","size":1},{"name":"bb","size":2}]"#.to_string(),
                V2
            )
        );
        let received = std::collections::HashMap::from([("bb".to_string(), 1_800_000_000u64)]);
        assert_eq!(
            render(objects.clone(), true, &received).0,
            r#"[{"name":"aa","size":1},{"name":"bb","received":1800000000,"size":2}]"#
        );
        assert_eq!(
            render(objects, false, &none),
            (r#"["aa","bb"]"#.to_string(), V1)
        );
        assert_eq!(render(Vec::new(), true, &none).0, "[]");
        assert!(wants_v2(Some(V2)));
        assert!(wants_v2(Some(
            "text/plain, application/vnd.x.restic.rest.v2"
        )));
        assert!(!wants_v2(Some(V1)));
        assert!(!wants_v2(None));
    }
}
