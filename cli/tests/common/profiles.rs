//! Helpers for the tests of configuration files and profiles: repositories opened by key
//! files, configuration files written where `cairn` looks for them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Env;

/// A repository at `env.path(name)` opened by a key file of its own; returns both paths.
pub fn keyed_repo(env: &Env, name: &str) -> (PathBuf, PathBuf) {
    let repo = env.path(name);
    let key = env.path(&format!("{name}.key"));
    env.bare()
        .args(["-r", repo.to_str().unwrap(), "--key-file"])
        .arg(&key)
        .arg("init")
        .assert()
        .success();
    (repo, key)
}

pub fn user_file(env: &Env) -> PathBuf {
    env.path("home/.config/cairn/config.toml")
}

pub fn system_file(env: &Env) -> PathBuf {
    env.path("etc/cairn/config.toml")
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn profile(name: &str, repo: &Path, key: &Path) -> String {
    format!(
        "[profiles.{name}]\nrepo = {:?}\nkey_file = {:?}\n",
        repo.display().to_string(),
        key.display().to_string()
    )
}

/// `cairn ARGS --json` run bare (only the configuration says where the repository is).
pub fn json_lines(env: &Env, args: &[&str]) -> Vec<Value> {
    let out = env.bare().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn backup(env: &Env, args: &[&str]) -> String {
    let out = env
        .bare()
        .arg("--json")
        .arg("backup")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot_id"].as_str().unwrap().to_string()
}
