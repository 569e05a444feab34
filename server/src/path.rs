//! Request paths, parsed strictly into what they name.
//!
//! The path is taken exactly as the client sent it, before any decoding. Every valid path is
//! spelled with letters, digits, `-`, `_` and `/` alone, so any other byte (`%` of an encoded
//! slash or dot, `.`, NUL, anything non-ASCII) makes the path name nothing: there is no
//! decoding step that could turn `%2e%2e` into `..`, and no normalisation that could let two
//! spellings reach one object. Empty segments (`//`) name nothing either. Tenant and object
//! names are then checked by cairn-store's layout rules, the same ones its backends apply.

use cairn_store::layout::{self, FileType};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`
    Health,
    /// `/metrics`
    Metrics,
    /// Anything below `/<tenant>/`.
    Tenant { tenant: String, target: Target },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/<tenant>/` (or `/<tenant>`): the namespace itself.
    Namespace,
    /// `/<tenant>/config`
    Config,
    /// `/<tenant>/<type>/`
    List(FileType),
    /// `/<tenant>/<type>/<name>`
    Object(FileType, String),
}

/// The object types reachable by URL, by their folder name (restic's and Cairn's are the same).
fn object_type(dir: &str) -> Option<FileType> {
    FileType::ALL
        .into_iter()
        .find(|ft| *ft != FileType::Config && ft.dir() == dir)
}

/// Parses a raw request path; `None` when it names nothing (the server answers 404).
pub fn parse(path: &str) -> Option<Route> {
    match path {
        "/healthz" => return Some(Route::Health),
        "/metrics" => return Some(Route::Metrics),
        _ => {}
    }
    let rest = path.strip_prefix('/')?;
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
    {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let (tenant, target) = match segments.as_slice() {
        [t] | [t, ""] => (*t, Target::Namespace),
        [t, "config"] => (*t, Target::Config),
        [t, dir, ""] => (*t, Target::List(object_type(dir)?)),
        [t, dir, name] => {
            let ft = object_type(dir)?;
            layout::validate_name(ft, name).ok()?;
            (*t, Target::Object(ft, (*name).to_string()))
        }
        _ => return None,
    };
    layout::validate_tenant(tenant).ok()?;
    Some(Route::Tenant {
        tenant: tenant.to_string(),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_paths() {
        let n = "ab".repeat(32);
        let t = |target| {
            Some(Route::Tenant {
                tenant: "acme".into(),
                target,
            })
        };
        assert_eq!(parse("/healthz"), Some(Route::Health));
        assert_eq!(parse("/acme/"), t(Target::Namespace));
        assert_eq!(parse("/acme"), t(Target::Namespace));
        assert_eq!(parse("/acme/config"), t(Target::Config));
        assert_eq!(parse("/acme/locks/"), t(Target::List(FileType::Lock)));
        assert_eq!(
            parse(&format!("/acme/data/{n}")),
            t(Target::Object(FileType::Pack, n.clone()))
        );
    }

    #[test]
    fn everything_else_names_nothing() {
        let n = "ab".repeat(32);
        for bad in [
            "",
            "/",
            "//acme/config",
            "/acme//config",
            "/acme/./config",
            "/acme/../other/config",
            "/acme/%2e%2e/other/config",
            "/acme%2fconfig",
            "/acme/config/",
            "/acme/config/x",
            "/acme/keys",
            "/acme/config%00",
            "/tmp/config",
            "/cairn-repository/config",
            "/acme/nothing/",
            "/acme/config/",
            "/ａcme/config",
            &format!("/acme/data/{n}0"),
            &format!("/acme/data/{}", n.to_uppercase()),
            &format!("/acme/data/{n}/"),
            &format!("/acme/data/xx/{n}"),
            &format!("/{}/config", "a".repeat(65)),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
