//! Named profiles: TOML files in the OS config folder (`SOFTTUNE_CONFIG_DIR` overrides it).

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

/// One of softtune's OS folders: the environment variable `env` when set, else `pick` of the
/// OS project folders (`what` names the contents for the error without a home folder).
pub fn os_dir(
    env: &str,
    pick: fn(&directories::ProjectDirs) -> &std::path::Path,
    what: &str,
) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(env).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("", "", "softtune")
        .map(|p| pick(&p).to_path_buf())
        .ok_or_else(|| anyhow!("no home folder to keep {what} in; set {env}"))
}

/// softtune's configuration folder.
pub fn config_dir() -> Result<PathBuf> {
    os_dir(
        "SOFTTUNE_CONFIG_DIR",
        directories::ProjectDirs::config_dir,
        "profiles",
    )
}

/// Folder of the profiles.
pub fn profiles_dir() -> Result<PathBuf> {
    Ok(config_dir()?.join("profiles"))
}

/// Path of profile `name` (letters, digits, `-`, `_`, `.`).
pub fn profile_path(name: &str) -> Result<PathBuf> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("profile name \"{name}\": use letters, digits, '-', '_' and '.'");
    }
    Ok(profiles_dir()?.join(format!("{name}.toml")))
}

/// Every saved profile: (name, path), sorted.
pub fn list_profiles() -> Result<Vec<(String, PathBuf)>> {
    let dir = profiles_dir()?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| {
            p.file_stem()
                .map(|s| (s.to_string_lossy().into_owned(), p.clone()))
        })
        .collect();
    out.sort();
    Ok(out)
}
